"""Where operator state (pins, drains, pauses, policies set through the admin API) is kept across restarts.

A store has two methods: ``load() -> data | None`` (None: nothing stored yet; raises ``ValueError`` or
``OSError`` with the reason when what is stored cannot be read) and ``save(data)``. The data is the JSON-ready
dict of :func:`xds_control.control.operator.dump_state`.

:class:`FileStateStore` keeps it in a local file, by default beside the config
(``<config>.operator-state.json``), replaced atomically on every change: written to a temporary file in the
same directory, fsynced, renamed over the old one, and the directory fsynced, so a crash at any moment leaves
either the old or the new state, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def default_state_path(config_path: Path) -> Path:
    return config_path.with_name(config_path.name + ".operator-state.json")


class FileStateStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def load(self) -> Any | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None

    def save(self, data: Any) -> None:
        body = json.dumps(data, indent=1, sort_keys=True).encode()
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


__all__ = ["FileStateStore", "default_state_path"]
