"""Errors typed by what the caller should do next."""

from __future__ import annotations


class XdsControlError(Exception):
    """Base of every error xds-control raises on purpose."""


class ConfigError(XdsControlError, ValueError):
    """Invalid configuration: the message names the key, the value and what is allowed.

    Fix the input and try again; nothing was changed.
    """


class InconsistentSnapshot(XdsControlError, ValueError):
    """A snapshot references a resource it does not contain (a dangling reference).

    The message names the referring resource and the missing one. The snapshot was
    refused; the previous one stays in force.
    """


# --- Spec validation errors for the decision core (policies, load index, planning). ---

from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402


@dataclass(frozen=True, slots=True)
class FieldProblem:
    key: str
    value: Any
    message: str
    allowed: str | None = None
    #: False for problems without a value (file or YAML syntax errors).
    show_value: bool = True

    def __str__(self) -> str:
        if not self.show_value or isinstance(self.value, (dict, list, tuple)):  # section rule: message names values
            s = f"{self.key}: {self.message}"
        else:
            s = f"{self.key} = {self.value!r}: {self.message}"
        if self.allowed:
            s += f" (allowed: {self.allowed})"
        return s


class SpecError(ConfigError):
    """A policy/load-index spec value is missing, unknown, of the wrong type or out of range.

    The message lists one line per problem: ``key = value: why (allowed: range)``.
    """

    def __init__(self, title: str, problems: list[FieldProblem]):
        self.title = title
        self.problems = tuple(problems)
        super().__init__(title + ":\n" + "\n".join(f"  {p}" for p in problems))


_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _field_range(model_cls: Any, loc: tuple[Any, ...]) -> str | None:
    """Describe the allowed range of the pydantic field at ``loc`` from its constraints."""
    cls = model_cls
    info = None
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if not fields or not isinstance(part, str) or part not in fields:
            if isinstance(part, int):
                continue
            return None
        info = fields[part]
        ann = info.annotation
        # descend into nested models (also list[Model] / Model | None)
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if hasattr(cand, "model_fields"):
                nxt = cand
                break
            for inner in getattr(cand, "__args__", ()):
                if hasattr(inner, "model_fields"):
                    nxt = inner
        cls = nxt
    if info is None:
        return None
    lo = hi = None
    for m in info.metadata:
        for attr in ("ge", "gt"):
            if getattr(m, attr, None) is not None:
                lo = f"{getattr(m, attr)} {_BOUND_WORDS[attr].replace('>', '<')}"
        for attr in ("le", "lt"):
            if getattr(m, attr, None) is not None:
                hi = f"{_BOUND_WORDS[attr]} {getattr(m, attr)}"
    name = str(loc[-1])
    if lo or hi:
        return " ".join(x for x in (lo, name, hi) if x)
    ann = info.annotation
    literal_args = getattr(ann, "__args__", None)
    if getattr(ann, "__origin__", None) is not None and str(ann).startswith("typing.Literal"):
        return "one of " + ", ".join(repr(a) for a in literal_args or ())
    return None


def spec_error_from_pydantic(title: str, exc: Any, model_cls: Any) -> SpecError:
    """Turn a ``pydantic.ValidationError`` into a :class:`SpecError` naming key, value and range."""
    problems = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "<root>"
        value = err.get("input")
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            value = None
        if err.get("type") == "extra_forbidden":
            fields = getattr(_model_at(model_cls, loc[:-1]), "model_fields", {})
            problems.append(
                FieldProblem(key, value, "unknown key", "one of " + ", ".join(sorted(fields)) if fields else None)
            )
            continue
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        problems.append(FieldProblem(key, value, msg, _field_range(model_cls, loc)))
    return SpecError(title, problems)


def _model_at(model_cls: Any, loc: tuple[Any, ...]) -> Any:
    cls = model_cls
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            if isinstance(part, int):
                continue
            return None
        ann = fields[part].annotation
        nxt = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if hasattr(cand, "model_fields"):
                nxt = cand
        cls = nxt
    return cls
