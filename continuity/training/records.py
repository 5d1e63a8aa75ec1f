"""The training files the pack reads back (job.json, status.json, states.json): keyed and checked.

Anyone who can reach a ComfyUI server can write any bytes under ``output/`` (``/upload/image``
with ``type=output`` and a ``subfolder``), so a job folder is untrusted on the way back in. Every
record the pack writes carries an HMAC-SHA256 over its content with a server-side key kept
outside the folders clients can write (``<ComfyUI>/user/continuity/``, set by the nodes with
:func:`configure`); :func:`read_record` refuses a file without a valid key (not written by this
server), one too big or too deep, and any field outside the record's schema. The messages name
the file by its kind and never hold a server path.

This is the one place training reads its JSON back; it is the switch-over point to the core's
trusted store layer.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from .. import fsutil
from ..errors import ContinuityError

MAX_BYTES = 4 * 1024 * 1024
_lock = threading.Lock()
_private_dir: str | None = None
_key: bytes | None = None


class RecordError(ContinuityError):
    """A training file that is missing, malformed, or not written by this server."""


def configure(private_dir: str) -> None:
    """Keep the key (and per-run private copies) in ``private_dir``, a folder clients cannot write."""
    global _private_dir, _key
    with _lock:
        _private_dir, _key = os.path.realpath(private_dir), None


def private_dir() -> str:
    """The server-private folder (a per-user temporary folder until :func:`configure` is called)."""
    global _private_dir
    if _private_dir is None:
        _private_dir = os.path.join(tempfile.gettempdir(), f"continuity-private-{os.getuid()}")
    os.makedirs(_private_dir, mode=0o700, exist_ok=True)
    return _private_dir


def _secret() -> bytes:
    global _key
    with _lock:
        if _key is None:
            path = os.path.join(private_dir(), "training.key")
            try:
                with open(path, "rb") as fh:
                    _key = fh.read()
            except FileNotFoundError:
                key = secrets.token_bytes(32)
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(key)
                    _key = key
                except FileExistsError:     # another process made it meanwhile
                    with open(path, "rb") as fh:
                        _key = fh.read()
            if len(_key) < 32:
                raise RecordError("the training key file is damaged; delete it (jobs made before cannot be resumed)")
        return _key


def _canonical(kind: str, data: Any) -> bytes:
    return json.dumps([kind, data], sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


def _mac(kind: str, data: Any) -> str:
    return hmac.new(_secret(), _canonical(kind, data), hashlib.sha256).hexdigest()


def write_record(path: str, kind: str, data: dict) -> None:
    fsutil.atomic_write_json(path, {"kind": kind, "data": data, "mac": _mac(kind, data)})


def _no_constants(name):
    raise ValueError(f"{name} is not allowed")


def read_record(path: str, kind: str, schema: Callable[[Any], dict]) -> dict:
    """The checked ``data`` of a record; :class:`RecordError` with a reason otherwise."""
    try:
        if os.path.getsize(path) > MAX_BYTES:
            raise RecordError(f"{kind} is larger than {MAX_BYTES // (1024 * 1024)} MB")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise RecordError(f"{kind} is missing") from None
    except OSError as exc:
        raise RecordError(f"{kind} cannot be read ({exc.strerror})") from None
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RecordError(f"{kind} is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"kind", "data", "mac"} or doc["kind"] != kind \
            or not isinstance(doc["mac"], str) or not isinstance(doc["data"], dict):
        raise RecordError(f"{kind} was not written by Continuity on this server")
    try:
        good = hmac.compare_digest(doc["mac"], _mac(kind, doc["data"]))
    except (TypeError, ValueError, RecursionError):
        good = False
    if not good:
        raise RecordError(f"{kind} was not written by Continuity on this server (or was changed since)")
    try:
        return schema(doc["data"])
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RecordError(f"{kind} has an unexpected shape ({type(exc).__name__})") from None


# ------------------------------------------------------------------ small schema helpers
def fields(data: dict, spec: dict[str, Callable[[Any], bool]], *, kind: str) -> dict:
    """``data`` restricted to ``spec``'s keys, each checked; unknown keys refused."""
    extra = set(data) - set(spec)
    if extra:
        raise RecordError(f"{kind} has unknown fields: {', '.join(sorted(map(str, extra)))[:200]}")
    for key, ok in spec.items():
        if key in data and not ok(data[key]):
            raise RecordError(f"{kind}: field '{key}' has the wrong type or value")
    return data


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**62) < v < 2**62


def is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and v == v and abs(v) < 1e300


def is_str(max_len: int = 4000) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and len(v) <= max_len


def opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def list_of(check: Callable[[Any], bool], max_items: int = 10_000) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) <= max_items and all(check(x) for x in v)


def sha256_file(path: str, copy_to: str | None = None) -> str:
    """The file's SHA-256; with ``copy_to``, the bytes hashed are the bytes copied (no window
    between the check and the use)."""
    h = hashlib.sha256()
    out = open(copy_to, "wb") if copy_to else None
    try:
        with open(path, "rb") as fh:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                h.update(block)
                if out:
                    out.write(block)
    finally:
        if out:
            out.close()
    return h.hexdigest()
