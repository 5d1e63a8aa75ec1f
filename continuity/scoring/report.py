"""Consistency reports: several candidate sets x several models -> table, JSON and CSV files.

Files are written atomically under a never-overwrite name (``<prefix>.json``, ``<prefix>_0001.json``
...), so an earlier report is never replaced.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os

import numpy as np

from .. import fsutil
from .similarity import ScoreSet

TABLE_COLUMNS = ("set", "model", "count", "scored", "faces_missing", "mean", "std", "threshold",
                 "reference_baseline", "calibrated_mean", "passing")


def table(sets: list[ScoreSet]) -> list[dict]:
    return [row for s in sets for row in s.summary()]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


def table_text(rows: list[dict]) -> str:
    """A fixed-width text table (what the STRING output and the log show)."""
    cols = TABLE_COLUMNS
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


def embeddings_by_set(sets: list[ScoreSet], model: str) -> dict[str, np.ndarray]:
    out = {}
    for s in sets:
        ms = s.models.get(model)
        if ms is None:
            continue
        if "references" not in out:
            out["references"] = np.stack([r.embedding for r in ms.references if r.embedding is not None])
        vecs = [c.embedding for c in ms.candidates if c.found and c.embedding is not None]
        out[s.name] = np.stack(vecs) if vecs else np.zeros((0, out["references"].shape[1]), np.float32)
    return out


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(text) -> str:
    """A text cell as a spreadsheet shows it, never runs it: set names, file names and notes come from
    users (and uploads), and a cell starting with = + - @ is a formula to Excel, LibreOffice and
    Google Sheets (``=HYPERLINK(...)``, ``=cmd|...``); such a cell is kept as text with a leading quote."""
    text = "" if text is None else str(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_text(sets: list[ScoreSet]) -> str:
    """One row per set, model and candidate (empty cells where there is no face)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    n_ref = max((s.models[m].sims.shape[1] for s in sets for m in s.models), default=0)
    w.writerow(["set", "model", "index", "file", "face_found", "faces", "mean", "max", "threshold",
                "same_person", "calibrated", "note"] + [f"ref_{j}" for j in range(n_ref)])
    for s in sets:
        for m, ms in s.models.items():
            for r in ms.rows():
                f = s.filenames[r["index"]] if r["index"] < len(s.filenames) else ""
                per = r["per_reference"] or []
                w.writerow([csv_cell(s.name), csv_cell(m), r["index"], csv_cell(f), r["face_found"], r["faces"],
                            _num(r["mean"]), _num(r["max"]), r["threshold"],
                            "" if r["same_person"] is None else r["same_person"],
                            _num(r["calibrated"]), csv_cell(r["note"])]
                           + [f"{v:.4f}" for v in per] + [""] * (n_ref - len(per)))
    return buf.getvalue()


def write_report(sets: list[ScoreSet], folder: str, prefix: str = "consistency",
                 extra: dict | None = None) -> tuple[str, str]:
    """Write ``<prefix>.json`` and ``<prefix>.csv`` (next free names) into ``folder``."""
    doc = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "table": table(sets),
        "sets": [s.to_dict() for s in sets],
    }
    if extra:
        doc.update(extra)
    json_path = fsutil.unique_path(folder, prefix, ".json")
    stem = os.path.splitext(os.path.basename(json_path))[0]
    csv_path = fsutil.unique_path(folder, stem, ".csv")
    fsutil.atomic_write_json(json_path, doc)
    fsutil.atomic_write_text(csv_path, csv_text(sets))
    return json_path, csv_path
