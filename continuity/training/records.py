"""The training files the pack reads back (job.json, status.json, states.json): signed and checked.

Anyone who can reach a ComfyUI server can write any bytes under ``output/`` (``/upload/image``
with ``type=output`` and a ``subfolder``), so a job folder is untrusted on the way back in. Every
record goes through the core's trusted store layer (:mod:`continuity.store`): signed with the
server's key for its kind and its job (a record cannot be moved to another job), bounded in size
and depth, and refused when unsigned or changed; then checked field by field here. Messages name
the file by its kind and never hold a server path.

Per-run private copies (the dataset TOML and a resumed state) live in :func:`private_dir`, beside
the store's key, where clients cannot write.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from typing import Any

from .. import store

RecordError = store.StoreError
_private_dir: str | None = None


def configure(private_dir: str | None) -> None:
    """Put the per-run private copies in ``private_dir`` (default: beside the store's key)."""
    global _private_dir
    _private_dir = os.path.realpath(private_dir) if private_dir else None


def private_dir() -> str:
    """A folder clients cannot write: beside the store's key, else a per-user temporary folder."""
    where = _private_dir
    if where is None:
        try:
            where = os.path.join(store.keys.key_dir(), "training")
        except store.StoreError:
            where = os.path.join(tempfile.gettempdir(), f"continuity-private-{os.getuid()}")
    os.makedirs(where, mode=0o700, exist_ok=True)
    return where


def _context(job_id: str) -> str:
    return "training-job:" + job_id


def write_signed(path: str, kind: str, data: dict, *, job_id: str) -> None:
    store.write_json(path, data, kind=f"training/{kind}", context=_context(job_id))


def read_signed(path: str, kind: str, schema: Callable[[Any], dict], *, job_id: str,
                input: str = "job_name") -> dict:
    """The checked content of a record; :class:`RecordError` with a reason otherwise."""
    if not os.path.lexists(path):
        raise RecordError(f"{kind} is missing", input=input)
    body = store.read_json_file(path, None, kind=f"training/{kind}", context=_context(job_id), input=input, what=kind)
    try:
        return schema(body)
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise RecordError(f"{kind} has an unexpected shape ({type(exc).__name__})", input=input) from None


# ------------------------------------------------------------------ small schema helpers
def fields(data: dict, spec: dict[str, Callable[[Any], bool]], *, kind: str) -> dict:
    """``data`` restricted to ``spec``'s keys, each checked; unknown keys refused."""
    extra = set(data) - set(spec)
    if extra:
        raise RecordError(f"{kind} has unknown fields: {store.shown(sorted(map(str, extra)))}", input="job_name")
    for key, ok in spec.items():
        if key in data and not ok(data[key]):
            raise RecordError(f"{kind}: field '{key}' has the wrong type or value", input="job_name")
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
    with open(path, "rb") as fh, (open(copy_to, "wb") if copy_to else contextlib.nullcontext()) as out:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            h.update(block)
            if out is not None:
                out.write(block)
    return h.hexdigest()
