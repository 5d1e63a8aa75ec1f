"""Atomic writes and never-overwrite naming, shared by every stage that writes files."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


_VERSION_RE = re.compile(r"^v(\d+)$")


def existing_versions(folder: str) -> list[int]:
    """The version numbers of the ``v1``, ``v2``, ... subfolders of ``folder``, sorted."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        m = _VERSION_RE.match(name)
        if m and os.path.isdir(os.path.join(folder, name)):
            out.append(int(m.group(1)))
    return sorted(out)


@contextmanager
def new_folder(final_path: str) -> Iterator[str]:
    """Build a folder under a temporary name and move it into place only when complete.

    Raises ``FileExistsError`` if ``final_path`` exists (before or after the build): an existing
    folder is never changed. On error the partial folder is removed.
    """
    if os.path.exists(final_path):
        raise FileExistsError(final_path)
    parent = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".partial-" + os.path.basename(final_path) + "-", dir=parent)
    try:
        yield stage
        # os.rename of a directory onto an existing directory fails if it is not empty,
        # and we refuse even an empty one: check, then rename.
        if os.path.exists(final_path):
            raise FileExistsError(final_path)
        try:
            os.rename(stage, final_path)
        except OSError as exc:   # another writer's folder is there now (non-empty): the name is taken
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(final_path) from None
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def new_version_folder(parent: str, build: Callable[[str], None]) -> tuple[int, str]:
    """Create the next ``vN`` folder of ``parent`` atomically, filled by ``build(stage_dir)``.

    Retries with the next number if another writer took the number first.
    """
    for _ in range(100):
        versions = existing_versions(parent)
        n = (versions[-1] + 1) if versions else 1
        final = os.path.join(parent, f"v{n}")
        try:
            with new_folder(final) as stage:
                build(stage)
            return n, final
        except FileExistsError:
            continue
    raise RuntimeError(f"could not allocate a new version folder in {parent}")
