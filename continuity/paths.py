"""Confine user-given paths to the folders they are allowed in.

A ComfyUI server takes graphs from anyone who can reach it, so every path that comes from a
widget is resolved (symlinks included) and must land inside one of the allowed roots: ComfyUI's
input, output or models folders, as the caller decides.
"""
from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence

from .errors import PathError
from .store.text import shown, text_problem


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives on Windows
        return False


def confine(user_path: str, roots: Sequence[str], *, input: str = "path", must_exist: bool = False,
            kind: str | None = None) -> str:
    """Return the real absolute path of ``user_path`` if it lies inside one of ``roots``.

    A relative path is taken relative to the first root. ``kind`` may be ``"dir"`` or ``"file"``
    to require that kind of entry (which implies ``must_exist``). Raises :class:`PathError` naming
    ``input`` otherwise.
    """
    if not isinstance(user_path, str):
        raise PathError(f"expected a path as text, got {type(user_path).__name__}", input=input)
    if "\x00" in user_path:
        raise PathError("the path contains a NUL character", input=input)
    if not roots:
        raise PathError("no allowed folder is configured for this path", input=input)
    real_roots = [os.path.realpath(r) for r in roots]
    raw = user_path.strip()
    candidate = raw if os.path.isabs(raw) else os.path.join(real_roots[0], raw)
    resolved = os.path.realpath(candidate)
    if not any(_inside(resolved, r) for r in real_roots):
        allowed = ", ".join(real_roots)
        raise PathError(f"{shown(user_path)} is outside the allowed folders ({allowed})", input=input)
    if kind is not None:
        must_exist = True
    if must_exist and not os.path.exists(resolved):
        raise PathError(f"{shown(user_path)} does not exist", input=input)
    if kind == "dir" and not os.path.isdir(resolved):
        raise PathError(f"{shown(user_path)} is not a folder", input=input)
    if kind == "file" and not os.path.isfile(resolved):
        raise PathError(f"{shown(user_path)} is not a file", input=input)
    return resolved


def safe_name(name: str, *, input: str = "name", max_len: int = 100) -> str:
    """Validate a single file or folder name (no separators, no dot-dot, printable)."""
    if not isinstance(name, str) or not name.strip():
        raise PathError("the name is empty", input=input)
    if len(name) > max_len:
        raise PathError(f"the name is longer than {max_len} characters", input=input)
    problem = text_problem(name, max_len=max_len, multiline=False)
    if problem:
        raise PathError(problem, input=input)
    name = name.strip()
    # one name, one look: invisible and direction-changing characters (zero-width spaces and joiners, the
    # right-to-left override that shows 'evil<U+202E>gnp.txt' as 'eviltxt.png') and a second Unicode spelling
    # of the same letters (e + combining accent beside the precomposed letter) would give names that
    # collide on screen but not on disk: a user picks the attacker's profile or dataset for their own
    for ch in name:
        if unicodedata.category(ch) in ("Cf", "Co", "Cn", "Zl", "Zp"):
            raise PathError(f"{shown(name)} holds an invisible or unassigned character (U+{ord(ch):04X}); "
                            "use letters, digits, '-', '_' and '.'", input=input)
    if unicodedata.normalize("NFC", name) != name:
        raise PathError(f"{shown(name)} is not in Unicode's composed form (NFC); retype it", input=input)
    bad = set('/\\:*?"<>|\x00')
    if any(c in bad for c in name) or name in (".", "..") or name.startswith("."):
        raise PathError(f"{shown(name)} is not a valid name: use letters, digits, '-', '_' and '.'", input=input)
    return name
