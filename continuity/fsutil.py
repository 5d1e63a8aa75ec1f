"""Atomic writes and never-overwrite naming, shared by every stage that writes files."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def _write_temp(path: str, data: bytes) -> str:
    """``data`` in a new temporary file, flushed to disk, in ``path``'s folder (made if missing)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: a reader
    sees the old file or the new one, never half of it."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def exclusive_write_bytes(path: str, data: bytes) -> str:
    """As :func:`atomic_write_bytes`, but only if ``path`` does not exist yet (a hard link, which
    fails with ``FileExistsError`` when another writer got there first)."""
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def unique_path(folder: str, stem: str, ext: str) -> str:
    """``folder/stem.ext`` or, if taken, ``folder/stem_0001.ext`` ... : never an existing file.

    The name is reserved by creating it empty (``O_EXCL``), so two writers cannot get the same one.
    """
    os.makedirs(folder, exist_ok=True)
    ext = ext if not ext or ext.startswith(".") else "." + ext
    n = 0
    while True:
        name = f"{stem}{ext}" if n == 0 else f"{stem}_{n:04d}{ext}"
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return path
        except FileExistsError:
            n += 1
