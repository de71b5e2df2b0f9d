"""Dataclasses as JSON records: one ``to_dict`` / ``from_dict`` for every result, card and setting.

:class:`JsonRecord` gives a dataclass

- ``to_dict()``: its fields in declaration order as plain JSON values (nested records,
  dataclasses, numpy arrays and scalars, tuples and paths converted), without the fields
  marked ``field(metadata={"json": False})`` (a fitted object, a volume), after the class's
  ``json_header`` (e.g. ``{"kind": ..., "version": 1}``);
- ``from_dict(data)``: the record back, nested records and tuples rebuilt from the type hints;
  a missing required field is an :class:`~TACEResponseLib.core.errors.InputError` naming the
  record and the source; **unknown keys are ignored with a logged warning** (files written by
  a newer version still load), except the derived keys the class lists in ``json_derived``;
- ``save_json(path)`` / ``load_json(path)``: the same through an atomic file.

Subclasses override ``to_dict`` / ``from_dict`` only to add derived values or checks, calling
``super()``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import json_default, write_json_atomic

logger = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: records and dataclasses → dicts, arrays/tuples → lists, paths → str."""
    if isinstance(value, JsonRecord):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.metadata.get("json", True)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, Path)):
        return json_default(value)
    return value


class JsonRecord:
    """Mixin for dataclasses that are written to and read from JSON (see the module docstring)."""

    #: keys written first and checked on reading (e.g. ``{"kind": "…", "version": 1}``)
    json_header: ClassVar[dict[str, Any]] = {}
    #: keys that ``to_dict`` adds from other fields; skipped silently by ``from_dict``
    json_derived: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.metadata.get("json", True)}
        return {**self.json_header, **body}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None):
        """The record from ``data``; ``source`` (a file, "card") names it in messages."""
        where = source or cls.__name__
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        for key, expected in cls.json_header.items():
            if key in data and key != "version" and data[key] != expected:
                raise InputError(f"{where}: not a {cls.__name__} ({key} {data[key]!r}, expected {expected!r})")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields) - set(cls.json_header) - set(cls.json_derived))
        if unknown:
            logger.warning("%s: ignoring unknown field(s) %s of %s (written by a newer version?)", where, unknown,
                           cls.__name__)
        missing = [name for name, f in fields.items() if name not in data and f.metadata.get("json", True)
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise InputError(f"{where}: {cls.__name__} lacks field(s) {missing}")
        hints = _type_hints(cls)
        values = {name: _build(hints.get(name, Any), data[name], f"{where}.{name}")
                  for name in fields if name in data}
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{where}: unusable {cls.__name__} ({exc})") from None

    def save_json(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load_json(cls, path: str | Path):
        """Read a record written by :meth:`save_json`; an unreadable file is an InputError naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot be read as a {cls.__name__} JSON file ({exc})") from None
        return cls.from_dict(data, source=str(path))


def _build(hint: Any, value: Any, where: str) -> Any:
    """``value`` (plain JSON) as the type ``hint`` asks: records, dataclasses, tuples, arrays, paths."""
    if value is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _build(options[0], value, where)
        for option in options:  # the first structured option whose shape fits
            if isinstance(value, Mapping) and _is_record(option):
                return _build(option, value, where)
        return value
    if _is_record(hint):
        if isinstance(hint, type) and issubclass(hint, JsonRecord):
            return hint.from_dict(value, source=where)
        known = {f.name for f in dataclasses.fields(hint)}
        return hint(**{k: v for k, v in value.items() if k in known})
    if origin in (list, typing.List) and args and isinstance(value, list):
        return [_build(args[0], v, where) for v in value]
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, where) for v in value)
        return tuple(_build(a, v, where) for a, v in zip(args, value)) if args else tuple(value)
    if origin in (dict, typing.Dict) and len(args) == 2 and isinstance(value, Mapping):
        return {k: _build(args[1], v, where) for k, v in value.items()}
    if hint is np.ndarray:
        return np.asarray(value, dtype=np.float64)
    if hint is Path:
        return Path(value)
    return value


def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved field types; a hint naming something imported only for type checking counts as Any."""
    try:
        return typing.get_type_hints(cls)
    except NameError:
        hints = {}
        module = __import__(cls.__module__, fromlist=["_"])
        for klass in reversed(cls.__mro__):
            for name, hint in getattr(klass, "__annotations__", {}).items():
                try:
                    hints[name] = eval(hint, vars(module)) if isinstance(hint, str) else hint  # noqa: S307
                except NameError:
                    hints[name] = Any
        return hints


def _is_record(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)
