"""Modular captions: trigger word, class, appearance, framing, background, each part separable.

A caption is written as comma-separated parts in a fixed order::

    photo of ohwx man, short brown hair, green eyes, close-up portrait, studio background

and the matching regularization caption (for class images of the prior) keeps everything that
describes the shot but replaces the character with its class phrase::

    photo of a man, close-up portrait, studio background
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

from ..fsutil import atomic_write_text

FRAMING_WORDS = ("close-up portrait", "close-up", "portrait", "3/4 shot", "full body",
                 "close shot", "medium shot", "long shot")
BACKGROUND_HINTS = ("background", "studio", "indoor", "outdoor", "indoors", "outdoors", "backdrop")
PARTS = ("trigger", "class", "appearance", "framing", "background", "extra")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def class_phrase(class_word: str) -> str:
    """'man' -> 'a man'; an existing article is kept."""
    cw = class_word.strip()
    if not cw:
        return ""
    if re.match(r"^(a|an|the)\s", cw, re.I):
        return cw
    return f"{_article(cw)} {cw}"


@dataclass
class Caption:
    trigger: str = ""
    class_word: str = ""
    appearance: list[str] = field(default_factory=list)
    framing: str = ""
    background: str = ""
    extra: list[str] = field(default_factory=list)
    prefix: str = "photo of"

    def subject(self) -> str:
        words = " ".join(w for w in (self.trigger.strip(), self.class_word.strip()) if w)
        return words

    def compose(self, include: set[str] | None = None) -> str:
        inc = set(PARTS) if include is None else set(include)
        subject_words = []
        if "trigger" in inc and self.trigger.strip():
            subject_words.append(self.trigger.strip())
        if "class" in inc and self.class_word.strip():
            subject_words.append(self.class_word.strip())
        parts = []
        if subject_words:
            parts.append(f"{self.prefix} {' '.join(subject_words)}".strip() if self.prefix else " ".join(subject_words))
        if "appearance" in inc:
            parts.extend(a.strip() for a in self.appearance if a.strip())
        if "framing" in inc and self.framing.strip():
            parts.append(self.framing.strip())
        if "background" in inc and self.background.strip():
            parts.append(self.background.strip())
        if "extra" in inc:
            parts.extend(e.strip() for e in self.extra if e.strip())
        return ", ".join(parts)

    def regularization(self, keep_appearance: bool = False) -> str:
        """The class-image caption: the character replaced by its class phrase ('photo of a man')."""
        parts = []
        cp = class_phrase(self.class_word)
        if cp:
            parts.append(f"{self.prefix} {cp}".strip() if self.prefix else cp)
        if keep_appearance:
            parts.extend(a.strip() for a in self.appearance if a.strip())
        if self.framing.strip():
            parts.append(self.framing.strip())
        if self.background.strip():
            parts.append(self.background.strip())
        parts.extend(e.strip() for e in self.extra if e.strip())
        return ", ".join(parts)

    def with_parts(self, **changes) -> Caption:
        """A copy with some parts replaced (empty values leave a part as it is)."""
        clean = {k: v for k, v in changes.items() if v not in (None, "", [])}
        return replace(self, **clean)


def split_list(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"[,\n]", text or "") if p.strip()]


def parse(text: str, *, trigger: str = "", class_word: str = "", prefix: str = "photo of") -> Caption:
    """Read a caption written by :meth:`Caption.compose` (or by hand) back into its parts.

    The part holding the trigger (or the class word) is the subject; parts that name a framing or
    a background go there; the rest between the subject and the framing is appearance, and any
    part after the framing/background that is neither is kept as extra.
    """
    cap = Caption(trigger=trigger, class_word=class_word, prefix=prefix)
    parts = split_list(text)
    seen_subject = False
    seen_shot = False
    for part in parts:
        low = part.lower()
        if not seen_subject and ((trigger and trigger.lower() in low.split()) or
                                 (class_word and class_word.lower() in low.split())):
            seen_subject = True
            words = part.split()
            if trigger and not cap.trigger:
                cap.trigger = trigger
            # keep any prefix the caption used ("photo of", "a portrait of")
            idx = next((i for i, w in enumerate(words) if w.lower() in (trigger.lower(), class_word.lower()) and w), None)
            if idx is not None:
                cap.prefix = " ".join(words[:idx])
                rest = [w for w in words[idx:] if w.lower() != trigger.lower()]
                if rest and not class_word:
                    cap.class_word = " ".join(rest)
            continue
        if not cap.framing and low in FRAMING_WORDS:
            cap.framing = part
            seen_shot = True
            continue
        if not cap.background and any(h in low.split() or low.endswith(h) for h in BACKGROUND_HINTS):
            cap.background = part
            seen_shot = True
            continue
        if seen_shot:
            cap.extra.append(part)
        else:
            cap.appearance.append(part)
    return cap


def caption_path(image_path: str, extension: str = ".txt") -> str:
    ext = extension if extension.startswith(".") else "." + extension
    return os.path.splitext(image_path)[0] + ext


def write_caption(image_path: str, text: str, extension: str = ".txt") -> str:
    """Write the caption beside the image (atomically)."""
    return atomic_write_text(caption_path(image_path, extension), text.strip() + "\n")
