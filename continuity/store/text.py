"""Checks for text that comes from widgets, links or files, and safe forms of it for messages.

Text is refused up front, with a message that names the input, when it holds lone surrogates
(valid in JSON, not encodable as UTF-8: they break logging and file writes further on), control
characters, or more characters than the input allows. Messages never carry the raw value: they
show :func:`shown`, an ASCII-safe, shortened form.
"""
from __future__ import annotations

import unicodedata

from ..errors import ContinuityError

#: longest value any text input takes unless it says otherwise (a prompt, a note, a caption)
MAX_TEXT = 20_000
#: longest one-line value (names, file names, extensions)
MAX_LINE = 200

_ALLOWED_CONTROLS_MULTILINE = {"\n", "\t", "\r"}


def shown(value: object, limit: int = 60) -> str:
    """An ASCII-only, quoted, shortened form of ``value`` for messages and logs (never raises)."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:limit] + "..."
    return ascii(text)


def text_problem(value: object, *, max_len: int = MAX_TEXT, multiline: bool = True) -> str | None:
    """Why ``value`` is not acceptable text, or None when it is."""
    if not isinstance(value, str):
        return f"expected text, got {type(value).__name__}"
    if len(value) > max_len:
        return f"the text is {len(value)} characters long; at most {max_len} are allowed"
    for i, ch in enumerate(value):
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return f"the text holds an invalid character (a lone surrogate, U+{code:04X}) at position {i}"
        if multiline and ch in _ALLOWED_CONTROLS_MULTILINE:
            continue
        cat = unicodedata.category(ch)
        if cat == "Cc" or ch in ("\u2028", "\u2029"):
            return f"the text holds a control character (U+{code:04X}) at position {i}"
    return None


def check_text(value: object, *, input: str, max_len: int = MAX_TEXT, multiline: bool = True) -> str:
    """``value`` if it is acceptable text (see the module doc), else :class:`ContinuityError` naming ``input``."""
    problem = text_problem(value, max_len=max_len, multiline=multiline)
    if problem:
        raise ContinuityError(problem, input=input)
    return value  # type: ignore[return-value]


def check_line(value: object, *, input: str, max_len: int = MAX_LINE) -> str:
    """A one-line text value (no line breaks or tabs)."""
    return check_text(value, input=input, max_len=max_len, multiline=False)


def printable(text: str) -> str:
    """``text`` with anything that cannot be written as UTF-8 escaped: safe for any log or file."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
