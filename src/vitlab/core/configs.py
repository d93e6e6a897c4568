"""Config dataclasses: one strict way to save, load and check them.

Every config in vitlab (:class:`~vitlab.model.ViTConfig`, :class:`~vitlab.cnn.CNNConfig`,
:class:`~vitlab.train.TrainConfig`, and each new model family's) inherits :class:`Config`:

* ``to_dict()`` gives the plain values written to ``config.json``;
* ``from_dict(values)`` is strict: an unknown key is an error naming it and the known fields,
  so a typo or a file from another version never loads silently with a field dropped;
* fields typed ``Literal[...]`` are checked on construction, with one message for all of them,
  so the allowed values are written once, in the type.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, TypeVar

__all__ = ["Config", "ConfigError", "literal_choices"]

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config has an unknown field or a value outside the allowed ones."""


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` type (also inside ``X | None``), else ``None``."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):  # Optional[Literal[...]] / Literal[...] | None
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg) + ((None,) if type(None) in typing.get_args(annotation) else ())
    return None


class Config:
    """Mixin for config dataclasses: strict ``from_dict``, ``to_dict``, ``Literal`` checks.

    Subclasses are ``@dataclass`` classes; their own ``__post_init__`` should call
    ``super().__post_init__()`` first and then check what types cannot express
    (e.g. ``dim % heads == 0``).
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            choices = literal_choices(hints.get(field.name))
            value = getattr(self, field.name)
            if choices is not None and value not in choices:
                allowed = ", ".join(repr(c) for c in choices)
                raise ConfigError(f"{type(self).__name__}.{field.name} = {value!r} is not allowed; choose {allowed}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as ``config.json`` stores them: tuples become lists, so a config read back from its
        file compares equal to a fresh one (a resumed run checks exactly that)."""
        def as_json(value: Any) -> Any:
            return [as_json(v) for v in value] if isinstance(value, (tuple, list)) else value
        return {k: as_json(v) for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from ``config.json`` values; an unknown key is an error that names it."""
        if not isinstance(values, dict):
            raise ConfigError(f"{cls.__name__} needs a dict of fields, got {type(values).__name__}")
        known = cls.field_names()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known fields are {known}")
        return cls(**values)
