"""Before/after of the one identity measure on labelled face photos.

Old (Face Fix / Face Region Mask ``which = character`` and Dataset Audit until the measure was made
one): the cosine of a face to the L2-normalised MEAN of the reference embeddings. New (everywhere
now): the MEAN of the face's cosines to each reference. For every identity group with at least
three photos, each photo is scored against the rest of its group (genuine) and every photo of the
other groups is scored against that group (impostor), with dlib (detector + 128-D ResNet) and its
published threshold; prints both numbers, their difference and the verdicts at the threshold.

    python bench/identity_measure.py [/work/shared/data/faces] [--json out.json]
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from continuity.faces import embedders, get_detector
from continuity.scoring.similarity import embed_images, identity_similarity


def groups_from_readme(folder: str) -> list[list[str]]:
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    line = text.split("Identities (same person within a group):", 1)[1].strip().split("\n\n")[0]
    return [g.split() for g in re.split(r"\s*·\s*", line.replace("\n", " ")) if g.strip()]


def main(argv: list[str]) -> int:
    folder = argv[0] if argv and not argv[0].startswith("--") else "/work/shared/data/faces"
    out_json = argv[argv.index("--json") + 1] if "--json" in argv else None
    groups = [[n for n in g] for g in groups_from_readme(folder)]
    names = sorted({n for g in groups for n in g})
    imgs = [np.asarray(Image.open(os.path.join(folder, f"{n}.jpg")).convert("RGB")) for n in names]
    emb = embedders.get_embedder("dlib")
    det = get_detector("dlib")
    found = embed_images(imgs, emb, detector=det, policy="largest")
    vec = {n: r.embedding for n, r in zip(names, found) if r.found}
    thr = float(emb.threshold)
    rows = []
    for g in groups:
        g = [n for n in g if n in vec]
        if len(g) < 3:
            continue
        for cand in names:
            if cand not in vec:
                continue
            refs = [n for n in g if n != cand]
            R = np.stack([vec[n] for n in refs])
            mean = R.mean(0)
            old = float(vec[cand] @ (mean / np.linalg.norm(mean)))
            new = float(identity_similarity(vec[cand][None], R)[0])
            rows.append({"candidate": cand, "group": g[0], "references": len(refs), "genuine": cand in g,
                         "old": old, "new": new})
    res = {"model": "dlib", "threshold": thr, "faces": len(vec), "groups": sum(1 for g in groups if len(g) >= 3)}
    for kind, sel in (("genuine", True), ("impostor", False)):
        r = [x for x in rows if x["genuine"] is sel]
        old = np.array([x["old"] for x in r])
        new = np.array([x["new"] for x in r])
        res[kind] = {"pairs": len(r), "old_mean": float(old.mean()), "new_mean": float(new.mean()),
                     "mean_drop": float((old - new).mean()), "max_drop": float((old - new).max()),
                     "old_pass": int((old >= thr).sum()), "new_pass": int((new >= thr).sum()),
                     "verdict_changed": int(((old >= thr) != (new >= thr)).sum())}
    print(f"dlib, threshold {thr}: {res['faces']} faces, {res['groups']} identity groups of 3 or more")
    print(f"{'':9} {'pairs':>5} {'old mean':>9} {'new mean':>9} {'drop':>7} {'max drop':>8} "
          f"{'old pass':>8} {'new pass':>8} {'changed':>7}")
    for kind in ("genuine", "impostor"):
        k = res[kind]
        print(f"{kind:9} {k['pairs']:5d} {k['old_mean']:9.4f} {k['new_mean']:9.4f} {k['mean_drop']:7.4f} "
              f"{k['max_drop']:8.4f} {k['old_pass']:8d} {k['new_pass']:8d} {k['verdict_changed']:7d}")
    if out_json:
        with open(out_json, "w") as fh:
            json.dump({"summary": res, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
