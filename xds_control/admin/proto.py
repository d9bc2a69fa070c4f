"""Generate ``gen/admin_pb2.py`` and ``gen/admin_pb2_grpc.py`` from ``admin.proto`` with grpcio-tools.

``make venv`` runs ``python -m xds_control.admin.proto``; importing :func:`load` generates again when the
files are missing or older than the .proto (a fresh clone plus ``pip install -e .`` just works). Generation
writes to a temporary directory and renames the files into place, so concurrent processes never see a
half-written module. If the package directory is read-only (an installed wheel), the modules are generated
into a per-user cache directory that is added to ``xds_control.admin.gen.__path__``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PROTO = HERE / "admin.proto"
GEN = HERE / "gen"
#: The package path the generated code imports itself as (``from xds_control.admin.gen import admin_pb2``).
_PKG_PATH = Path("xds_control", "admin", "gen")
_OUTPUTS = ("admin_pb2.py", "admin_pb2_grpc.py")


def _digest() -> str:
    return hashlib.sha256(PROTO.read_bytes()).hexdigest()


def _fresh(directory: Path, digest: str) -> bool:
    stamp = directory / "admin.proto.sha256"
    try:
        return stamp.read_text().strip() == digest and all((directory / f).is_file() for f in _OUTPUTS)
    except OSError:
        return False


def generate(out_dir: Path = GEN) -> Path:
    """Run grpcio-tools' protoc; returns ``out_dir``. Raises RuntimeError with protoc's complaint."""
    from grpc_tools import protoc

    try:
        from importlib.resources import files

        include = str(files("grpc_tools") / "_proto")
    except Exception:  # noqa: BLE001 - older layouts
        import grpc_tools

        include = str(Path(grpc_tools.__file__).parent / "_proto")
    digest = _digest()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xds-admin-proto-") as tmp:
        src_root = Path(tmp, "src")
        (src_root / _PKG_PATH).mkdir(parents=True)
        shutil.copyfile(PROTO, src_root / _PKG_PATH / "admin.proto")
        out_root = Path(tmp, "out")
        out_root.mkdir()
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{src_root}", f"-I{include}",
            f"--python_out={out_root}", f"--grpc_python_out={out_root}",
            str(_PKG_PATH / "admin.proto"),
        ])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {rc})")
        for name in _OUTPUTS:
            staged = out_dir / f".{name}.{os.getpid()}.tmp"
            try:
                shutil.copyfile(out_root / _PKG_PATH / name, staged)
                os.replace(staged, out_dir / name)
            finally:
                staged.unlink(missing_ok=True)
        stamp = out_dir / f".stamp.{os.getpid()}.tmp"
        stamp.write_text(digest + "\n")
        os.replace(stamp, out_dir / "admin.proto.sha256")
    return out_dir


def _cache_dir(digest: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "xds-control" / f"admin-gen-{digest[:16]}"


_loaded: tuple[ModuleType, ModuleType] | None = None


def load() -> tuple[ModuleType, ModuleType]:
    """``(admin_pb2, admin_pb2_grpc)``, generating them first when missing or stale."""
    global _loaded
    if _loaded is not None:
        return _loaded
    digest = _digest()
    if not _fresh(GEN, digest):
        try:
            generate(GEN)
        except OSError:
            cache = _cache_dir(digest)
            if not _fresh(cache, digest):
                generate(cache)
            import xds_control.admin.gen as gen_pkg

            gen_pkg.__path__.insert(0, str(cache))
    pb2 = importlib.import_module("xds_control.admin.gen.admin_pb2")
    grpc_mod = importlib.import_module("xds_control.admin.gen.admin_pb2_grpc")
    _loaded = (pb2, grpc_mod)
    return _loaded


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else GEN))
