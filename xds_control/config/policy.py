"""Policy presets: ``xds_control/config/presets/NAME.yaml`` (package data), or any YAML file, plus overrides.

Resolved and validated once, when the config is loaded (:func:`resolve_policy_provenance`; the config keeps
the result as ``pool.autoscale.spec``); errors name the key, the value and the allowed range (they come
from :func:`xds_control.policies.load_policy_spec`). ``xds-control policy show`` prints a resolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from xds_control.core.errors import FieldProblem, SpecError
from xds_control.policies import POLICIES, PolicySpec, load_policy_spec, validate_policy_spec

#: The presets users pick and copy: package data, so a wheel install ships them.
PRESET_DIR = Path(str(resources.files("xds_control.config") / "presets"))


def preset_path(name: str) -> Path | None:
    p = PRESET_DIR / f"{name}.yaml"
    return p if p.is_file() else None


def merge_overrides(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: nested mappings key by key, anything else replaced. Inputs unchanged."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_overrides(out[k], v)
        else:
            out[k] = v
    return out


#: Where a resolved key's value came from.
Origin = Literal["preset", "file", "override", "default"]


@dataclass(frozen=True, slots=True)
class KeyOrigin:
    """One leaf key of a resolved spec (``load_index.alpha``), its value (JSON-compatible) and its origin."""

    key: str
    value: Any
    origin: Origin


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """A validated policy spec and, for every key, where its value came from."""

    spec: PolicySpec
    source: str
    """Path of the preset or YAML file read (``built-in NAME defaults`` for a preset without a file)."""
    kind: Literal["preset", "file"]
    keys: tuple[KeyOrigin, ...]

    def origin(self, key: str) -> Origin:
        """The origin of the dotted ``key`` (KeyError when the spec has no such leaf key)."""
        for k in self.keys:
            if k.key == key:
                return k.origin
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.spec.policy, "source": self.source, "spec": self.spec.model_dump(mode="json"),
                "keys": [{"key": k.key, "value": k.value, "from": k.origin} for k in self.keys]}


def resolve_policy_provenance(policy: str, overrides: Mapping[str, Any] | None = None) -> ResolvedPolicy:
    """The one resolution path: preset name or YAML path, ``overrides`` merged in (:func:`merge_overrides`),
    validated; with the origin of every key.

    Raises :class:`SpecError` (a ValueError) naming every bad key, its value and the allowed range.
    """
    kind: Literal["preset", "file"]
    if policy in POLICIES:
        kind = "preset"
        path = preset_path(policy)
        data: Any = yaml.safe_load(path.read_text()) if path is not None else {"policy": policy}
        origin = str(path) if path is not None else f"built-in {policy} defaults"
    else:
        kind = "file"
        path = Path(policy)
        if not path.is_file():
            raise SpecError(f"policy {policy!r}", [FieldProblem(
                "policy", policy, "neither a preset nor a readable YAML file",
                f"one of {', '.join(POLICIES)}, or a YAML file path")])
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SpecError(f"policy file {path}", [FieldProblem("<file>", str(path), f"not valid YAML: {e}",
                                                                 show_value=False)]) from None
        origin = str(path)
    if not isinstance(data, Mapping):
        raise SpecError(f"policy {origin}", [FieldProblem("<root>", data, "the top level must be a mapping")])
    over = overrides or {}
    merged = merge_overrides(data, over)
    try:
        spec = load_policy_spec(merged)
    except SpecError as e:
        raise SpecError(f"policy {policy!r} ({origin}): {e.title}", list(e.problems)) from None
    keys = tuple(_provenance(spec, (), data, over, kind))
    return ResolvedPolicy(spec=spec, source=origin, kind=kind, keys=keys)


def resolve_policy(policy: str, overrides: Mapping[str, Any] | None = None) -> PolicySpec:
    """The validated spec for a preset name or YAML path, with ``overrides`` merged in.

    Raises ValueError (a :class:`SpecError`) naming every bad key. See :func:`resolve_policy_provenance`.
    """
    return resolve_policy_provenance(policy, overrides).spec


def _given(tree: Any, path: tuple[str, ...]) -> bool:
    """Whether the nested mapping ``tree`` sets the key ``path``."""
    for part in path:
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


def _provenance(model: BaseModel, prefix: tuple[str, ...], data: Any, over: Mapping[str, Any],
                kind: Literal["preset", "file"]) -> list[KeyOrigin]:
    out: list[KeyOrigin] = []
    dumped = model.model_dump(mode="json")
    for name in type(model).model_fields:
        path = (*prefix, name)
        value = getattr(model, name)
        if isinstance(value, BaseModel):  # a section: its leaf keys
            out.extend(_provenance(value, path, data, over, kind))
            continue
        where: Origin = "override" if _given(over, path) else kind if _given(data, path) else "default"
        out.append(KeyOrigin(".".join(path), dumped[name], where))
    return out


def parse_set_options(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as nested overrides: ``load_index.alpha=0.3`` -> ``{load_index: {alpha: 0.3}}``.

    Values are parsed as YAML (``8`` -> 8, ``null`` -> None, ``[a, b]`` -> a list; text that is not YAML
    stays text; an empty value is ``""``). Raises :class:`SpecError` naming the option for a missing ``=``,
    an empty key part, or a key set both as a value and as a section.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or not all(part.strip() for part in parts):
            raise SpecError("invalid --set", [FieldProblem(
                "--set", item, "is not KEY=VALUE", "KEY is a spec key, dotted for sections: load_index.alpha=0.3")])
        try:
            value: Any = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for i, part in enumerate(parts):
            part = part.strip()
            if i == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise SpecError("invalid --set", [FieldProblem(
                        key, value, "is a section already set key by key; set its keys or the section, not both")])
                node[part] = value
            else:
                nxt = node.setdefault(part, {})
                if not isinstance(nxt, dict):
                    raise SpecError("invalid --set", [FieldProblem(
                        ".".join(parts[: i + 1]), nxt, f"is set to a value, so {key!r} cannot be set inside it")])
                node = nxt
    return out


#: Kept for callers of the old private name.
_merge = merge_overrides


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
