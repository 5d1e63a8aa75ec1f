"""Paths read back from disk, confined to their folder with realpath (symlinks included).

A path stored in a manifest, a profile or a job file is only a request: it must be relative, and
its real path (every symlink resolved) must stay inside the folder it belongs to. Files of a
folder that are symlinks leading out of the allowed root are refused the same way. Messages show
paths relative to their folder, never the server's absolute paths.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Sequence

from .schema import StoreError
from .text import shown


def inside(path: str, root: str) -> bool:
    """Whether the real path of ``path`` is ``root`` or lies under it (``root`` is resolved too)."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([real, real_root]) == real_root
    except ValueError:  # different drives
        return False


def _relative_problem(rel: str) -> str | None:
    if not isinstance(rel, str) or not rel:
        return "the path is empty"
    if "\x00" in rel:
        return "the path contains a NUL character"
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return "an absolute path is not allowed; only paths inside the folder are"
    parts = rel.replace("\\", "/").split("/")
    if ".." in parts:
        return f"{shown(rel)} leads out of its folder ('..')"
    return None


def resolve(root: str, rel: str, *, input: str | None, what: str = "the file", kind: str | None = "file") -> str:
    """The real path of ``root/rel`` if it stays inside ``root``.

    ``kind`` "file" or "dir" requires that kind of entry to exist; None allows a missing entry.
    Refusals are :class:`StoreError` naming ``input``; the message shows ``rel``, never ``root``.
    """
    problem = _relative_problem(rel)
    if problem:
        raise StoreError(f"{what}: {problem}", input=input)
    real_root = os.path.realpath(root)
    resolved = os.path.realpath(os.path.join(real_root, rel))
    try:
        ok = os.path.commonpath([resolved, real_root]) == real_root
    except ValueError:
        ok = False
    if not ok:
        raise StoreError(f"{what} {shown(rel)} leads outside its folder (through a link); refused", input=input)
    if kind == "file" and not os.path.isfile(resolved):
        raise StoreError(f"{what} {shown(rel)} is missing", input=input)
    if kind == "dir" and not os.path.isdir(resolved):
        raise StoreError(f"{what} {shown(rel)} is not a folder", input=input)
    return resolved


def read_bytes(root: str, rel: str, *, input: str | None, what: str = "the file", max_bytes: int) -> bytes:
    """The bytes of ``root/rel`` (confined as :func:`resolve`), at most ``max_bytes`` of them."""
    path = resolve(root, rel, input=input, what=what, kind="file")
    return read_confined_file(path, input=input, what=f"{what} {shown(rel)}", max_bytes=max_bytes)


def read_confined_file(path: str, *, input: str | None, what: str, max_bytes: int) -> bytes:
    """Read an already resolved file without following a link swapped in since, bounded in size."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        why = "is a link" if exc.errno == errno.ELOOP else "cannot be opened"
        raise StoreError(f"{what} {why}", input=input) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{what} is not a regular file", input=input)
        if st.st_size > max_bytes:
            raise StoreError(f"{what} is {st.st_size} bytes; at most {max_bytes} are read", input=input)
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise StoreError(f"{what} is larger than {max_bytes} bytes", input=input)
    return data


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def checked_file(root: str, rel: str, sha256: str | None, *, input: str | None, what: str = "the file") -> str:
    """The real path of ``root/rel`` (confined), after checking its content hash when one is given."""
    path = resolve(root, rel, input=input, what=what, kind="file")
    if sha256 is not None and sha256_file(path) != sha256:
        raise StoreError(f"{what} {shown(rel)} was changed after it was written (content hash differs); refused",
                         input=input)
    return path


def list_files(folder: str, roots: Sequence[str], *, input: str | None, recursive: bool = False,
               extensions: Iterable[str] | None = None, skip_hidden: bool = True) -> list[str]:
    """Files of ``folder`` (relative paths, POSIX separators), every one confined to ``roots``.

    A file (or, when recursive, a sub-folder) that is a link leading outside every root is refused
    with :class:`StoreError` naming ``input``; links to sub-folders are not followed.
    """
    exts = tuple(e.lower() for e in extensions) if extensions is not None else None
    real_roots = [os.path.realpath(r) for r in roots]

    def allowed(path: str) -> bool:
        real = os.path.realpath(path)
        for r in real_roots:
            try:
                if os.path.commonpath([real, r]) == r:
                    return True
            except ValueError:
                continue
        return False

    out: list[str] = []
    for base, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if recursive and not (skip_hidden and d.startswith("."))]
        for d in dirs:
            if os.path.islink(os.path.join(base, d)) and not allowed(os.path.join(base, d)):
                rel = os.path.relpath(os.path.join(base, d), folder).replace(os.sep, "/")
                raise StoreError(f"{shown(rel)} is a link to a folder outside the allowed folders; refused", input=input)
        for f in files:
            if skip_hidden and f.startswith("."):
                continue
            if exts is not None and not f.lower().endswith(exts):
                continue
            full = os.path.join(base, f)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if not allowed(full):
                raise StoreError(f"{shown(rel)} is a link to a file outside the allowed folders; refused", input=input)
            if os.path.isfile(full):
                out.append(rel)
        if not recursive:
            break
    return out
