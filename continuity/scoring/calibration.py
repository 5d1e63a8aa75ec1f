"""Separating same from different people: ROC AUC, accuracy at a threshold, pair scoring."""
from __future__ import annotations

import csv
import os

import numpy as np
from scipy.stats import rankdata

from ..errors import ContinuityError
from ..limits import MAX_TEXT_FILE_BYTES

#: distinct images one pairs file may name (each is decoded once and kept for the scoring)
MAX_PAIR_IMAGES = 2000


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ContinuityError("ROC AUC needs both same-person and different-person pairs", input="pairs")
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def accuracy_at(scores, labels, threshold: float) -> float:
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    return float(((s >= threshold) == y).mean())


def read_pairs(csv_path: str) -> list[tuple[str, str, bool]]:
    """``file_x,file_y,Decision`` rows (Decision Yes/No, as DeepFace's test set has it)."""
    if os.path.getsize(csv_path) > MAX_TEXT_FILE_BYTES:
        raise ContinuityError(f"the pairs file is larger than {MAX_TEXT_FILE_BYTES} bytes", input="pairs_file")
    out = []
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            out.append((row["file_x"], row["file_y"], row["Decision"].strip().lower() in ("yes", "1", "true")))
    names = {p[0] for p in out} | {p[1] for p in out}
    if len(names) > MAX_PAIR_IMAGES:
        raise ContinuityError(f"the pairs name {len(names)} images; at most {MAX_PAIR_IMAGES} are read",
                              input="pairs_file")
    return out


def score_pairs(pairs, images: dict[str, np.ndarray], embedder, *, detector=None, cache=None):
    """Cosine similarity per pair (each distinct image embedded once); None where no face."""
    from .similarity import embed_images
    names = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
    embs = dict(zip(names, embed_images([images[n] for n in names], embedder, detector=detector, cache=cache)))
    sims = []
    for a, b, _ in pairs:
        ea, eb = embs[a], embs[b]
        sims.append(None if not (ea.found and eb.found) else float(ea.embedding @ eb.embedding))
    return sims, embs


def evaluate_pairs(csv_path: str, embedder, *, detector=None, cache=None, loader=None) -> dict:
    """ROC AUC and accuracy at the embedder's own threshold on a labelled pair file."""
    from ..imageio import load_image
    pairs = read_pairs(csv_path)
    folder = os.path.dirname(os.path.abspath(csv_path))
    names = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
    load = loader or (lambda n: load_image(os.path.join(folder, n))[0])
    images = {n: load(n) for n in names}
    sims, embs = score_pairs(pairs, images, embedder, detector=detector, cache=cache)
    keep = [i for i, s in enumerate(sims) if s is not None]
    s = np.array([sims[i] for i in keep])
    y = np.array([pairs[i][2] for i in keep], bool)
    if not len(y) or y.all() or not y.any():
        from ..errors import ContinuityError
        raise ContinuityError("after leaving out the images without a face, the pairs no longer hold both "
                              "same-person and different-person pairs", input="pairs_file")
    return {
        "model": embedder.name, "pairs": len(pairs), "scored": len(keep),
        "no_face": [n for n, e in embs.items() if not e.found],
        "roc_auc": roc_auc(s, y), "threshold": float(embedder.threshold),
        "accuracy": accuracy_at(s, y, embedder.threshold),
        "same_mean": float(s[y].mean()), "different_mean": float(s[~y].mean()),
        "sims": sims, "labels": [p[2] for p in pairs],
    }
