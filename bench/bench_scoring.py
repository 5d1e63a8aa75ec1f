"""Benchmark of identity scoring: 50 candidate photos of about 1 MP against 3 references (dlib).

Prints per-stage figures and compares the scorer with
- the floor: one detection and one embedding per image, nothing else (no hashing, no cache), and
- scoring pair by pair (each pair detects and embeds both images again), measured on a sample of
  pairs and scaled to all 150 pairs.

Everything here runs on one thread, so the comparison uses CPU time (``time.process_time``), which
other processes on a shared machine disturb much less than wall time; wall times are printed too.

Run:  .testenv/venv/bin/python bench/bench_scoring.py [--rounds 3] [--pairs 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(REPO)

from continuity.faces.embedders import get_embedder
from continuity.scoring.cache import EmbeddingCache, content_hash
from continuity.scoring.similarity import get_face_detector, score_set

FACES = next((p for p in (os.path.join(REPO, "assets", "faces"),
                          os.path.join(os.path.dirname(REPO), "shared", "data", "faces"))
              if os.path.isfile(os.path.join(p, "img1.jpg"))), os.path.join(REPO, "assets", "faces"))


def to_mp(img: Image.Image, mp: float) -> np.ndarray:
    w, h = img.size
    s = (mp * 1e6 / (w * h)) ** 0.5
    return np.asarray(img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC))


def make_images():
    portraits = [Image.open(os.path.join(FACES, f"img{i}.jpg")).convert("RGB") for i in range(1, 26)]
    cands = []
    for im in portraits:                       # 50 distinct images of about 1 MP: each photo and its mirror
        cands.append(to_mp(im, 1.0))
        cands.append(np.ascontiguousarray(to_mp(im, 1.0)[:, ::-1]))
    refs = [to_mp(portraits[i], 0.9) for i in (0, 1, 3)]   # img1, img2, img4 (not identical to a candidate)
    return refs, cands


def floor(images, det, emb):
    """CPU seconds: total, detection, embedding (one detection + one embedding per image)."""
    t_det = t_emb = 0.0
    for im in images:
        t0 = time.process_time()
        faces = det.detect(im)
        t1 = time.process_time()
        if faces:
            emb.embed(im, faces[:1])
        t_det += t1 - t0
        t_emb += time.process_time() - t1
    return t_det + t_emb, t_det, t_emb


def pairwise(refs, cands, det, emb, n_pairs):
    pairs = [(c, r) for c in cands for r in refs]
    rng = np.random.default_rng(0)
    sample = [pairs[i] for i in rng.choice(len(pairs), n_pairs, replace=False)]
    t0 = time.process_time()
    for c, r in sample:
        vecs = []
        for im in (c, r):
            f = det.detect(im)
            if f:
                vecs.append(emb.embed(im, f[:1])[0])
        if len(vecs) == 2:
            float(vecs[0] @ vecs[1])
    dt = time.process_time() - t0
    return dt / n_pairs * len(pairs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=8, help="pairs timed for the pair-by-pair estimate")
    args = ap.parse_args()
    t0 = time.perf_counter()
    refs, cands = make_images()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    det, emb = get_face_detector("dlib"), get_embedder("dlib")
    det.detect(refs[0][:300, :300])
    t_models = time.perf_counter() - t0
    images = refs + cands
    print(f"images: {len(refs)} references + {len(cands)} candidates, "
          f"{np.mean([im.shape[0] * im.shape[1] for im in cands]) / 1e6:.2f} MP on average (prepared in {t_load:.1f} s)")
    print(f"models loaded in {t_models:.2f} s (detector {getattr(det, 'name', '?')}, embedder {emb.name})")
    t0 = time.perf_counter()
    for im in images:
        content_hash(im)
    print(f"content hashing of {len(images)} images: {time.perf_counter() - t0:.3f} s")

    ratios, floors, scores = [], [], []
    for r in range(args.rounds):
        w0 = time.perf_counter()
        fl, fd, fe = floor(images, det, emb)
        w_fl = time.perf_counter() - w0
        cache = EmbeddingCache()
        w0, c0 = time.perf_counter(), time.process_time()
        s = score_set(refs, cands, [emb], cache=cache)
        sc, w_sc = time.process_time() - c0, time.perf_counter() - w0
        c0 = time.process_time()
        score_set(refs, cands, [emb], cache=cache)
        warm = time.process_time() - c0
        print(f"round {r + 1}: floor {fl:.2f} s CPU (detect {fd:.2f}, embed {fe:.2f}; wall {w_fl:.2f}) | "
              f"scorer {sc:.2f} s CPU (wall {w_sc:.2f}) ratio {sc / fl:.3f} | again, cached {warm * 1000:.0f} ms")
        ratios.append(sc / fl)
        floors.append(fl)
        scores.append(sc)
    best_floor, best_score = float(np.median(floors)), float(np.median(scores))
    ms = s.models["dlib"]
    found = sum(c.found for c in ms.candidates)
    print(f"faces found in {found}/{len(cands)} candidates; mean similarity {np.nanmean(ms.sims):.3f}")
    pw = pairwise(refs, cands, det, emb, args.pairs)
    print(f"\nfloor (1 detection + 1 embedding per image, {len(images)} images): {best_floor:.2f} s CPU "
          f"= {best_floor / len(images) * 1000:.0f} ms/image (median of {args.rounds} rounds)")
    print(f"scorer (score_set, cold cache):                          {best_score:.2f} s CPU; "
          f"ratio to the floor per round: {', '.join(f'{r:.3f}' for r in ratios)}; median {np.median(ratios):.3f} "
          f"(target <= 1.2)")
    print(f"pair by pair (150 pairs, estimated from {args.pairs}):           {pw:.2f} s CPU "
          f"= {pw / best_score:.1f} x the scorer")


if __name__ == "__main__":
    main()
