"""Parse sd-scripts' console output into progress events.

stderr carries a tqdm bar rewritten with carriage returns::

    steps:  12%|█▏        | 120/1000 [01:23<10:10, 1.44it/s, avr_loss=0.0834]

stdout carries ``epoch k/M`` and ``saving checkpoint: <file>`` log lines. Output is split on
both ``\\r`` and ``\\n``. A tqdm render is complete when it arrives (it ends with its closing
``]``): it is released at once, not when the next render starts. sd-scripts renders each step
twice, first with the previous step's ``avr_loss`` and then with its own, so the loss of a step
is the one of its LAST render.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

_STEPS = re.compile(  # the training bar only: "validation steps:" and caching bars are other bars
    r"^\s*steps:\s*(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:]+|\?)(?P<rest>[^\]]*)\]")
_LOSS = re.compile(r"avr_loss=(?P<loss>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf))")
_RATE = re.compile(r"(?P<rate>[\d.]+|\?)(?P<unit>it/s|s/it)")
_EPOCH = re.compile(r"(?:^|\s)epoch (?P<k>\d+)/(?P<m>\d+)\b")
_TOTAL = re.compile(r"total optimization steps[^:]*:\s*(?P<n>\d+)")
_SAVE = re.compile(r"saving checkpoint: (?P<file>.+?)\s*$")
_SAVE_STATE = re.compile(r"saving state at (?:epoch|step) \d+|save(?:d)? (?:train )?state to (?P<dir>.+?)\s*$",
                         re.IGNORECASE)


def parse_duration(text: str) -> float | None:
    if not text or text == "?":
        return None
    parts = [int(p) for p in text.split(":")]
    secs = 0
    for p in parts:
        secs = secs * 60 + p
    return float(secs)


@dataclass
class Progress:
    kind: str                       # "step", "epoch", "checkpoint", "total" (the run's max_train_steps)
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    rate: str | None = None          # e.g. "1.44it/s"
    epoch: int | None = None
    epochs: int | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["loss"] is not None and not math.isfinite(d["loss"]):
            d["loss"] = None  # JSON has no NaN
        return d


def parse_line(line: str) -> Progress | None:
    m = _STEPS.search(line)
    if m:
        rest = m.group("rest")
        loss = None
        lm = _LOSS.search(rest)
        if lm:
            try:
                loss = float(lm.group("loss"))
            except ValueError:
                loss = None
        rm = _RATE.search(rest)
        return Progress("step", step=int(m.group("n")), total=int(m.group("total")), loss=loss,
                        elapsed_s=parse_duration(m.group("elapsed")), eta_s=parse_duration(m.group("eta")),
                        rate=(rm.group(0) if rm else None))
    m = _TOTAL.search(line)
    if m:
        return Progress("total", total=int(m.group("n")))
    m = _EPOCH.search(line)
    if m:
        return Progress("epoch", epoch=int(m.group("k")), epochs=int(m.group("m")))
    m = _SAVE.search(line)
    if m:
        return Progress("checkpoint", checkpoint=m.group("file").strip())
    return None


class LineSplitter:
    """Feed raw text chunks; get lines split on ``\\r`` and ``\\n``, and complete tqdm renders
    as soon as they arrive (whichever side of the render its carriage return is on)."""

    def __init__(self):
        self._buf = ""
        self._sent = False   # the pending text was already released as a complete render

    def feed(self, chunk: str) -> list[str]:
        self._buf += chunk
        parts = re.split(r"\r\n|\r|\n", self._buf)
        self._buf = parts.pop()
        if self._sent and parts:
            parts.pop(0)          # the render released earlier, now terminated
            self._sent = False
        out = [p for p in parts if p.strip()]
        if self._buf and not self._sent and self._buf.rstrip().endswith("]") and _STEPS.search(self._buf):
            out.append(self._buf)
            self._sent = True
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, ""
        sent, self._sent = self._sent, False
        return [rest] if rest.strip() and not sent else []
