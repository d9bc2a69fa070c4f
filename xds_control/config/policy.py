"""Policy presets: ``xds_control/config/presets/NAME.yaml`` (package data), or any YAML file, plus overrides.

Resolved and validated once when the config is loaded; errors name the key, the value
and the allowed range (they come from :func:`xds_control.policies.load_policy_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from xds_control.core.errors import FieldProblem, SpecError
from xds_control.policies import POLICIES, PolicySpec, load_policy_spec, validate_policy_spec

#: The presets users pick and copy: package data, so a wheel install ships them.
PRESET_DIR = Path(str(resources.files("xds_control.config") / "presets"))


def preset_path(name: str) -> Path | None:
    p = PRESET_DIR / f"{name}.yaml"
    return p if p.is_file() else None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def resolve_policy(policy: str, overrides: Mapping[str, Any] | None = None) -> PolicySpec:
    """The validated spec for a preset name or YAML path, with ``overrides`` merged in.

    Raises ValueError (a :class:`SpecError`) naming every bad key.
    """
    if policy in POLICIES:
        path = preset_path(policy)
        data: Any = yaml.safe_load(path.read_text()) if path is not None else {"policy": policy}
        origin = str(path) if path is not None else f"built-in {policy} defaults"
    else:
        path = Path(policy)
        if not path.is_file():
            raise ValueError(
                f"policy {policy!r} is neither a preset ({', '.join(POLICIES)}) nor a readable YAML file"
            )
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"policy file {path}: not valid YAML: {e}") from None
        origin = str(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"policy {origin}: the top level must be a mapping")
    merged = _merge(dict(data), overrides or {})
    try:
        return load_policy_spec(merged)
    except SpecError as e:
        raise ValueError(f"policy {policy!r} ({origin}): {e}") from None


def load_policy_file(source: Mapping[str, Any] | str | Path) -> PolicySpec:
    """Validate a policy spec from a YAML file path, YAML text or a mapping.

    Raises :class:`~xds_control.core.errors.SpecError` naming each bad key, its value and the allowed
    range; an unreadable file or bad YAML names the file and the line.
    """
    origin = "policy spec"
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        origin = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read {origin}", [FieldProblem("<file>", str(path), str(exc))]) from None
        data: Any = _yaml(text, origin)
    elif isinstance(source, str):
        data = _yaml(source, origin)
    else:
        data = dict(source)
    return validate_policy_spec(data, origin)


def _yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"invalid YAML in {origin}", [FieldProblem(where, None, problem, show_value=False)]) from None


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
