"""Chapter parameters: frozen dataclasses that reject unknown names and ill-typed values.

Each chapter's parameters cell assigns plain variables (papermill injects over them); the chapter then builds its
subject's params with ``XParams.from_namespace(globals())``. A test checks that the cell declares exactly the
dataclass's fields, and ``possae build``/``possae run`` refuse names a chapter does not declare.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

P = TypeVar("P", bound="ChapterParams")


class ParameterError(ValueError):
    """A chapter parameter is unknown or has a value of the wrong type; the message lists the valid ones."""


def _check(name: str, value: Any, hint: Any) -> Any:
    """Return `value` converted to `hint` (int -> float, list -> tuple), or raise ParameterError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for arm in args:
            try:
                return _check(name, value, arm)
            except ParameterError:
                pass
        raise ParameterError(f"parameter {name!r} must be {_describe(hint)}; got {value!r}.")
    if hint is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in args:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            return tuple(_check(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    raise ParameterError(f"parameter {name!r} must be {_describe(hint)}; got {value!r} ({type(value).__name__}).")


def _describe(hint: Any) -> str:
    """Return a reader's description of a type hint, e.g. 'str or None'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


@dataclasses.dataclass(frozen=True)
class ChapterParams:
    """Base of every chapter's parameters: frozen, typed, built only from known names."""

    @classmethod
    def names(cls) -> list[str]:
        """Return the parameter names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls: type[P], values: Mapping[str, Any]) -> P:
        """Return params from {name: value}; raise ParameterError on an unknown name or an ill-typed value."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ParameterError(f"{cls.__name__} has no parameter {', '.join(map(repr, unknown))}; "
                                 f"valid parameters: {', '.join(cls.names())}.")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _check(k, v, hints[k]) for k, v in values.items()})

    @classmethod
    def from_namespace(cls: type[P], namespace: Mapping[str, Any]) -> P:
        """Return params from the fields found in a namespace (a chapter's globals()), checked as from_mapping."""
        return cls.from_mapping({k: namespace[k] for k in cls.names() if k in namespace})

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name), hints[f.name]))
        if getattr(self, "device", None) is not None:  # a device this machine lacks fails here, not in a kernel cell
            from possae.devices import DeviceUnavailableError, check_device

            try:
                check_device(self.device)
            except DeviceUnavailableError as e:
                raise ParameterError(f"parameter 'device': {e}") from None
        self.validate()

    def validate(self) -> None:
        """Raise ParameterError when values are individually well-typed but meaningless together (subclasses)."""

    def replace(self: P, **changes: Any) -> P:
        """Return a copy with some parameters changed (checked)."""
        return type(self).from_mapping({**dataclasses.asdict(self), **changes})


@dataclasses.dataclass(frozen=True)
class SubjectParams(ChapterParams):
    """Parameters of a chapter that studies one SAE and its model: where to load them from and on which device."""

    model_name: str = "organism"  # 'organism' (offline default), a transformer_lens name, or a local folder
    sae_release: str = "organism"  # 'organism', a sae_lens release, or a local sae_lens folder
    sae_id: str | None = "relu-short"  # the SAE's id in its release; None when sae_release is one SAE's folder
    device: str | None = None  # None picks CUDA when present


@dataclasses.dataclass(frozen=True)
class Layer0Params(SubjectParams):
    """Parameters of a layer-0 chapter: by default the organism that carries GPT-2 small's own W_pos (n_ctx 1,024)."""

    model_name: str = "organism-gpt2pos"  # 'organism-gpt2pos' (offline default), 'organism', a transformer_lens name, or a folder
    sae_release: str = "organism-gpt2pos"  # an organism's name, a sae_lens release, or a local sae_lens folder
