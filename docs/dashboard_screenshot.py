"""Regenerate docs/dashboard.png: a short ``xds-control demo`` run, its dashboard shot in headless Chromium.

    .venv/bin/python docs/dashboard_screenshot.py [--at 50] [--duration 70]

Needs Debian's ``chromium`` (``apt-get install -y --no-install-recommends chromium``) and Playwright (dev extra).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--at", type=float, default=50.0, help="seconds after the dashboard is up to take the shot")
    ap.add_argument("--duration", type=float, default=70.0, help="demo --duration")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="xds-demo-") as tmp:
        demo = subprocess.Popen([sys.executable, "-m", "xds_control.cli", "demo", "--duration", str(args.duration),
                                 "--settle", "5", "--no-live", "--json", "--out", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert demo.stderr is not None
            url = None
            for line in demo.stderr:
                m = re.search(r"live dashboard at (http://\S+)", line)
                if m:
                    url = m.group(1)
                    break
            if url is None:
                raise SystemExit("the demo printed no dashboard URL")
            time.sleep(args.at)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
                page.goto(url)
                page.wait_for_selector("#plot-pools figure.chart", timeout=15_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
            print(f"wrote {args.out} from {url}")
        finally:
            demo.terminate()
            demo.wait(60)
            if demo.stderr is not None:
                demo.stderr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
