"""The character's words in a prompt: trigger word and class phrase first, never twice."""
from __future__ import annotations

import re


def contains_word(text: str, word: str) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word (case-insensitive)."""
    word = word.strip()
    if not word:
        return False
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def with_character(char, text: str) -> tuple[str, bool]:
    """(prompt, whether the character's words were added): ``"<trigger> <class>, <text>"`` unless
    ``text`` already names the character (contains its trigger word, or, for a profile without a
    trigger word, its class phrase)."""
    text = (text or "").strip()
    key = char.trigger_word.strip() or char.class_phrase.strip()
    if not key or contains_word(text, key):
        return text, False
    return char.prompt(text), True
