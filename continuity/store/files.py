"""Signed JSON files and version folders: the only way the pack writes and reads back its state.

* :func:`write_json` / :func:`write_json_exclusive` sign a document and write it atomically
  (temporary file + rename, or + hard link when the name must not exist yet).
* :func:`read_json` reads a file confined to its root, bounded in size and depth, checks the
  signature (kind and context included) and then the schema. Refusals are :class:`StoreError`
  naming the input, with paths shown relative to their root.
* :func:`new_version_folder` builds ``vN`` aside and renames it into place; a number another
  prompt or server took meanwhile (the rename meets a non-empty folder: ENOTEMPTY/EEXIST) is
  "taken", and the next number is tried.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from .. import fsutil
from . import keys
from .confine import read_bytes, read_confined_file, resolve
from .schema import MAX_DEPTH, MAX_JSON_BYTES, Schema, StoreError, depth_ok, check, load_json


def _normalised(obj: Any) -> Any:
    """``obj`` as it will read back from JSON (tuples as lists, numpy scalars as numbers...)."""
    def default(o):
        if hasattr(o, "item") and callable(o.item):
            return o.item()
        if hasattr(o, "tolist") and callable(o.tolist):
            return o.tolist()
        return str(o)
    return json.loads(json.dumps(obj, default=default, allow_nan=False))


def encode(obj: dict, *, kind: str, context: str = "", max_bytes: int = MAX_JSON_BYTES,
           max_depth: int = MAX_DEPTH) -> bytes:
    """The bytes of the signed document (pretty, UTF-8; surrogates refused).

    Only what the reader takes back is written: a document larger than ``max_bytes`` or nested
    deeper than ``max_depth`` (the bounds :func:`read_json` applies) is refused here, so nothing the
    pack saves (a user's dataset version, profile revision or job) becomes unreadable."""
    try:
        body = _normalised(obj)
    except RecursionError:
        raise StoreError(f"the data is nested more than {max_depth} levels deep; nothing was written") from None
    if not depth_ok(body, max_depth):
        raise StoreError(f"the data is nested more than {max_depth} levels deep; nothing was written")
    doc = keys.sign(body, kind=kind, context=context)
    try:
        data = (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError("the data holds an invalid character (a lone surrogate); nothing was written") from None
    if len(data) > max_bytes:
        raise StoreError(f"the data would be {len(data)} bytes, more than the {max_bytes} the pack reads back; "
                         "nothing was written")
    return data


def write_json(path: str, obj: dict, *, kind: str, context: str = "", max_bytes: int = MAX_JSON_BYTES) -> dict:
    """Sign ``obj`` and write it to ``path`` atomically (replacing the file). Returns what was signed.
    ``max_bytes``: the bound the file's reader applies (refused when larger, nothing written)."""
    data = encode(obj, kind=kind, context=context, max_bytes=max_bytes)
    fsutil.atomic_write_bytes(path, data)
    return json.loads(data)


def write_json_exclusive(path: str, obj: dict, *, kind: str, context: str = "", max_bytes: int = MAX_JSON_BYTES) -> dict:
    """As :func:`write_json`, but only if ``path`` does not exist: ``FileExistsError`` otherwise."""
    data = encode(obj, kind=kind, context=context, max_bytes=max_bytes)
    fsutil.exclusive_write_bytes(path, data)
    return json.loads(data)


def read_json(root: str, rel: str, schema: Schema | None, *, kind: str, context: str = "", input: str | None,
              what: str | None = None, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The document ``root/rel`` if the pack signed it (for ``kind``/``context``) and it fits ``schema``.

    The signature field is removed from the result. ``schema`` None skips the schema (only for
    callers that check the shape themselves).
    """
    what = what or rel
    data = read_bytes(root, rel, input=input, what=what, max_bytes=max_bytes)
    doc = load_json(data, what=what, input=input, max_bytes=max_bytes, max_depth=max_depth)
    body = keys.verify(doc, kind=kind, context=context, what=what, input=input)
    return body if schema is None else check(body, schema, what=what, input=input)


def read_json_file(path: str, schema: Schema | None, *, kind: str, context: str = "", input: str | None,
                   what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """:func:`read_json` for a path already confined by the caller (e.g. by :func:`resolve`)."""
    data = read_confined_file(path, input=input, what=what, max_bytes=max_bytes)
    doc = load_json(data, what=what, input=input, max_bytes=max_bytes, max_depth=max_depth)
    body = keys.verify(doc, kind=kind, context=context, what=what, input=input)
    return body if schema is None else check(body, schema, what=what, input=input)


# --------------------------------------------------------------------------- versions

_VERSION_RE = re.compile(r"^v(\d{1,9})$")
_TAKEN = (errno.ENOTEMPTY, errno.EEXIST)


def existing_versions(folder: str) -> list[int]:
    """The numbers of the ``v1``, ``v2``, ... sub-folders of ``folder`` (real folders, no links), sorted."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        m = _VERSION_RE.match(name)
        full = os.path.join(folder, name)
        if m and os.path.isdir(full) and not os.path.islink(full):
            out.append(int(m.group(1)))
    return sorted(out)


def version_path(parent: str, number: int, *, input: str | None) -> str:
    """The real path of ``parent/vN``, confined to ``parent``."""
    return resolve(parent, f"v{int(number)}", input=input, what=f"version v{int(number)}", kind="dir")


def new_version_folder(parent: str, build: Callable[[str, int], None], *, max_tries: int = 1000) -> tuple[int, str]:
    """Create the next ``parent/vN``: ``build(stage_dir, n)`` fills a temporary folder that is then
    renamed into place whole. A number taken by another writer meanwhile is skipped. Returns (n, path).
    """
    os.makedirs(parent, exist_ok=True)
    n = (existing_versions(parent) or [0])[-1] + 1
    for _ in range(max_tries):
        final = os.path.join(parent, f"v{n}")
        if os.path.lexists(final):
            n = max(n + 1, (existing_versions(parent) or [0])[-1] + 1)
            continue
        stage = tempfile.mkdtemp(prefix=f".partial-v{n}-", dir=parent)
        try:
            build(stage, n)
            if os.path.lexists(final):
                raise FileExistsError(final)
            os.rename(stage, final)   # onto a non-empty folder: ENOTEMPTY/EEXIST, i.e. taken
            return n, final
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, FileExistsError) or exc.errno in _TAKEN:
                n += 1
                continue
            raise
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    raise StoreError("could not make a new version: too many concurrent writers")
