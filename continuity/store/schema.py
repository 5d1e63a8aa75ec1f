"""A small schema language for the JSON the pack reads back from disk.

Every file the pack wrote and reads again (dataset manifests, character profiles, training jobs
and status) is untrusted on the way back in: anyone who can reach a ComfyUI server can write any
bytes into ``output/``. :func:`parse_json` bounds the size and nesting depth, refuses NaN/Infinity
and duplicate keys, and :class:`Obj` and friends refuse unknown or ill-typed fields, so the code
after the parse only ever sees the shapes it expects.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContinuityError
from .text import shown, text_problem

MAX_JSON_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 24


class StoreError(ContinuityError):
    """A file read back from disk that is missing, malformed, not written by the pack, or points
    outside its folder. The message never holds an absolute path or a raw value."""


class Schema:
    """Base class: ``parse(value, where)`` returns the checked value or raises :class:`_Bad`."""

    def parse(self, value: Any, where: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class _Bad(Exception):
    def __init__(self, where: str, why: str):
        super().__init__(f"{where}: {why}")


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "an integer",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


@dataclass
class Str(Schema):
    max_len: int = 2000
    multiline: bool = False
    pattern: str | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, value, where):
        if not isinstance(value, str):
            raise _Bad(where, f"expected text, found {_type_name(value)}")
        problem = text_problem(value, max_len=self.max_len, multiline=self.multiline)
        if problem:
            raise _Bad(where, problem)
        if self.choices is not None and value not in self.choices:
            raise _Bad(where, f"{shown(value)} is not one of {', '.join(self.choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Bad(where, f"{shown(value)} is not of the expected form")
        return value


@dataclass
class Int(Schema):
    min: int | None = None
    max: int | None = None

    def parse(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(where, f"expected an integer, found {_type_name(value)}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise _Bad(where, f"{value} is outside {self.min}..{self.max}")
        return value


@dataclass
class Float(Schema):
    min: float | None = None
    max: float | None = None

    def parse(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(where, f"expected a number, found {_type_name(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise _Bad(where, "the number is not finite")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise _Bad(where, f"{value} is outside {self.min}..{self.max}")
        return value


class Bool(Schema):
    def parse(self, value, where):
        if not isinstance(value, bool):
            raise _Bad(where, f"expected true/false, found {_type_name(value)}")
        return value


@dataclass
class Opt(Schema):
    """``inner`` or null."""
    inner: Schema

    def parse(self, value, where):
        return None if value is None else self.inner.parse(value, where)


@dataclass
class Either(Schema):
    """The first of ``options`` that accepts the value."""
    options: tuple[Schema, ...]

    def parse(self, value, where):
        reasons = []
        for opt in self.options:
            try:
                return opt.parse(value, where)
            except _Bad as exc:
                reasons.append(str(exc).split(": ", 1)[-1])
        raise _Bad(where, " / ".join(reasons))


@dataclass
class List(Schema):
    item: Schema
    max_items: int = 10_000

    def parse(self, value, where):
        if not isinstance(value, list):
            raise _Bad(where, f"expected a list, found {_type_name(value)}")
        if len(value) > self.max_items:
            raise _Bad(where, f"{len(value)} entries; at most {self.max_items} are allowed")
        return [self.item.parse(v, f"{where}[{i}]") for i, v in enumerate(value)]


@dataclass
class Map(Schema):
    """An object with free keys (checked by ``key``) and values of one schema."""
    value: Schema
    key: Schema = field(default_factory=lambda: Str(max_len=200))
    max_items: int = 1000

    def parse(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, f"expected an object, found {_type_name(value)}")
        if len(value) > self.max_items:
            raise _Bad(where, f"{len(value)} entries; at most {self.max_items} are allowed")
        out = {}
        for k, v in value.items():
            k = self.key.parse(k, f"{where} key")
            out[k] = self.value.parse(v, f"{where}.{k}")
        return out


class JsonValue(Schema):
    """Any JSON value of bounded size (free-form data such as scores): strings checked as text."""

    def __init__(self, max_text: int = 2000):
        self.max_text = max_text

    def parse(self, value, where):
        if isinstance(value, str):
            return Str(max_len=self.max_text, multiline=True).parse(value, where)
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad(where, "the number is not finite")
        if isinstance(value, list):
            return [self.parse(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {Str(max_len=200).parse(k, f"{where} key"): self.parse(v, f"{where}.{k}") for k, v in value.items()}
        return value


_REL_PART = re.compile(r"^[^/\\:*?\"<>|\x00-\x1f]+$")


@dataclass
class RelPath(Schema):
    """A relative POSIX path inside a folder: no absolute path, drive, backslash, ``.`` or ``..``
    component, hidden component, or control character. Where the path leads is checked again
    with realpath when it is opened (:mod:`continuity.store.confine`)."""
    max_len: int = 300
    max_parts: int = 8

    def parse(self, value, where):
        value = Str(max_len=self.max_len).parse(value, where)
        parts = value.split("/")
        if not value or value.startswith("/") or len(parts) > self.max_parts:
            raise _Bad(where, "expected a path relative to its folder")
        for part in parts:
            if not part or part in (".", "..") or part.startswith(".") or not _REL_PART.match(part):
                raise _Bad(where, f"{shown(value)} is not a plain relative path inside its folder")
        return value


@dataclass
class Field:
    schema: Schema
    required: bool = True
    default: Any = None


@dataclass
class Obj(Schema):
    """An object with known fields only: unknown fields, missing required ones or wrong types are refused."""
    fields: dict[str, Field | Schema]
    check: Callable[[dict], str | None] | None = None

    def parse(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, f"expected an object, found {_type_name(value)}")
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            raise _Bad(where, f"unknown field {shown(unknown[0])}")
        out = {}
        for name, spec in self.fields.items():
            f = spec if isinstance(spec, Field) else Field(spec)
            if name not in value:
                if f.required:
                    raise _Bad(where, f"the field '{name}' is missing")
                out[name] = f.default() if callable(f.default) else f.default
                continue
            out[name] = f.schema.parse(value[name], f"{where}.{name}")
        if self.check is not None:
            why = self.check(out)
            if why:
                raise _Bad(where, why)
        return out


# --------------------------------------------------------------------------- parsing


def _no_constants(name: str):
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):   # 1e999 reads as infinity
        raise ValueError("a number is too large")
    return value


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {shown(k)} appears twice")
        out[k] = v
    return out


def depth_ok(value: Any, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > max_depth:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def load_json(data: bytes | str, *, what: str, input: str | None, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text with bounded size and depth; :class:`StoreError` naming ``what`` and ``input``."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise StoreError(f"{what} is {len(data)} bytes; at most {max_bytes} are read", input=input)
    try:
        text = data.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float,
                           object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise StoreError(f"{what} is nested too deeply", input=input) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{what} is not valid JSON ({type(exc).__name__}: {shown(str(exc), 120)})",
                         input=input) from None
    if not depth_ok(value, max_depth):
        raise StoreError(f"{what} is nested more than {max_depth} levels deep", input=input)
    return value


def check(value: Any, schema: Schema, *, what: str, input: str | None) -> Any:
    """``value`` checked against ``schema``; :class:`StoreError` naming ``what`` and ``input``."""
    try:
        return schema.parse(value, what)
    except _Bad as exc:
        raise StoreError(f"{exc} (refused)", input=input) from None
    except RecursionError:
        raise StoreError(f"{what} is nested too deeply", input=input) from None


def parse_json(data: bytes | str, schema: Schema, *, what: str, input: str | None,
               max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """:func:`load_json` then :func:`check`."""
    return check(load_json(data, what=what, input=input, max_bytes=max_bytes, max_depth=max_depth),
                 schema, what=what, input=input)
