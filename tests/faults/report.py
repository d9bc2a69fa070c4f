"""Turn the fault suite's results (one JSON per scenario) into the figures table of RELIABILITY.md.

    python tests/faults/report.py out/faults RELIABILITY.md

Replaces the lines between ``<!-- faults:begin -->`` and ``<!-- faults:end -->``; prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
MAIN = ("requests", "failed", "loss_pct", "recovery_s")
SKIP = {"scenario", "form", "at", *MAIN}


def table(rows: list[dict[str, object]]) -> str:
    out = ["| scenario | form | requests | failed | loss % | recovery s | other figures |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        other = ", ".join(f"{k} {v}" for k, v in r.items() if k not in SKIP and not k.startswith("_"))
        out.append(f"| {r['scenario']} | {r['form']} | {r.get('requests', '')} | {r.get('failed', '')} | "
                   f"{r.get('loss_pct', '')} | {r.get('recovery_s', '—')} | {other} |")
    stamps = sorted(str(r["at"]) for r in rows)
    out.append("")
    out.append(f"Measured {stamps[0]} – {stamps[-1]} by `make faults`." if stamps else "")
    return "\n".join(out)


def main(results_dir: str, doc: str) -> int:
    rows = [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*.json"))]
    if not rows:
        print(f"no results in {results_dir}", file=sys.stderr)
        return 1
    text = table(rows)
    print(text)
    path = Path(doc)
    body = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in body or END not in body:
        body += f"\n{BEGIN}\n{END}\n"
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
