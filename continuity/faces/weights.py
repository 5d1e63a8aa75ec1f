"""Weight files of the pro backends: found in a ComfyUI model folder, downloaded on first use when
online, or a clear message naming the file, where to get it and the folder to put it in.

Set the environment variable ``CONTINUITY_OFFLINE=1`` to never download.
"""
from __future__ import annotations

import os
import tempfile
import urllib.request

from ..errors import MissingModelError


def offline() -> bool:
    return os.environ.get("CONTINUITY_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def ensure_file(folder: str | None, filename: str, url: str, *, licence: str = "", input: str = "backend",
                timeout: float = 30.0) -> str:
    """Path of ``folder/filename``; downloads it from ``url`` (atomically) when it is missing."""
    if not folder:
        raise MissingModelError(f"no model folder is configured for '{filename}'", input=input)
    path = os.path.join(folder, filename)
    if os.path.isfile(path):
        return path
    note = f" Licence: {licence}." if licence else ""
    how = f"Download '{filename}' from {url} and put it in {folder}.{note}"
    if offline():
        raise MissingModelError(f"the model file '{filename}' is missing and downloads are off. {how}", input=input)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        os.replace(tmp, path)          # never a half-written model file under the real name
    except Exception as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise MissingModelError(f"the model file '{filename}' is missing and could not be downloaded "
                                f"({type(exc).__name__}: {exc}). {how}", input=input) from exc
    return path
