"""Keying what the pack writes: an HMAC-SHA256 with a secret that never leaves the server.

The secret is 32 random bytes kept in a file created with mode 0600 on first use, in a folder the
nodes configure (ComfyUI's system user folder ``user/__continuity``, which ComfyUI never serves
over HTTP). Two servers on one base directory share it; the first to create it wins, atomically.
A JSON document the pack writes carries ``"signature"``: the HMAC of its canonical form, its kind
(a dataset manifest cannot stand in for a job file) and an optional context (e.g. the dataset's
name). A document without a valid signature was not written by the pack on this server: refused.
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

from .schema import StoreError

SECRET_FILE = "store.key"
KEY_BYTES = 32
SIGNATURE_FIELD = "signature"
_PREFIX = "hmac-sha256:"
ENV_KEY_DIR = "CONTINUITY_KEY_DIR"

_key_dir: Callable[[], str] | str | None = None
_cache: dict[str, bytes] = {}
_lock = threading.Lock()


def configure(key_dir: Callable[[], str] | str | None) -> None:
    """Where the secret lives: a folder, or a callable giving it (read when the key is first needed)."""
    global _key_dir
    _key_dir = key_dir


def key_dir() -> str:
    """The key folder: ``$CONTINUITY_KEY_DIR`` when the server's operator sets it (tests do, so that
    every copy of the package in one process signs alike), else the configured folder."""
    where = os.environ.get(ENV_KEY_DIR) or (_key_dir() if callable(_key_dir) else _key_dir)
    if not where:
        raise StoreError("the pack's key folder is not configured (the store cannot sign or check files)")
    return where


def _read_secret(path: str) -> bytes:
    st = os.stat(path)
    if st.st_mode & 0o077:
        os.chmod(path, 0o600)  # a secret others can read is no secret: tighten it (we own it)
    with open(path, "rb") as fh:
        key = fh.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise ValueError("not a key")
    return key


def secret() -> bytes:
    """The server's secret, created (0600, atomically) on first use."""
    folder = key_dir()
    path = os.path.join(folder, SECRET_FILE)
    with _lock:
        if path in _cache:
            return _cache[path]
        if not os.path.exists(path):
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-key-", dir=folder)  # mkstemp creates 0600
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(secrets.token_bytes(KEY_BYTES))
                    fh.flush()
                    os.fsync(fh.fileno())
                try:
                    os.link(tmp, path)   # exclusive: another server may have made it meanwhile
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
        try:
            key = _read_secret(path)
        except (OSError, ValueError):
            raise StoreError("the pack's key file is unreadable or damaged; remove it to make a new one "
                             "(files signed with the old key will then be refused)") from None
        _cache[path] = key
        return key


def canonical(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, ASCII only, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def mac(obj: Any, *, kind: str, context: str = "") -> str:
    msg = kind.encode("utf-8") + b"\n" + context.encode("utf-8", "backslashreplace") + b"\n" + canonical(obj)
    return _PREFIX + hmac.new(secret(), msg, hashlib.sha256).hexdigest()


def sign(doc: dict, *, kind: str, context: str = "") -> dict:
    """``doc`` with its ``signature`` field (set last, over everything else)."""
    body = {k: v for k, v in doc.items() if k != SIGNATURE_FIELD}
    return {**body, SIGNATURE_FIELD: mac(body, kind=kind, context=context)}


def verify(doc: Any, *, kind: str, context: str = "", what: str, input: str | None) -> dict:
    """``doc`` without its signature if the signature is the pack's, else :class:`StoreError`."""
    if not isinstance(doc, dict):
        raise StoreError(f"{what} is not a JSON object; refused", input=input)
    sig = doc.get(SIGNATURE_FIELD)
    body = {k: v for k, v in doc.items() if k != SIGNATURE_FIELD}
    if not isinstance(sig, str) or not sig.startswith(_PREFIX):
        raise StoreError(f"{what} was not written by Continuity on this server (it has no signature); refused",
                         input=input)
    try:
        expected = mac(body, kind=kind, context=context)
    except ValueError:  # NaN and the like cannot be in a signed document
        expected = ""
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii", "replace")):
        raise StoreError(f"{what} was changed or not written by Continuity on this server (its signature does "
                         "not match); refused", input=input)
    return body
