"""Benchmark of what a CHARACTER input costs the scoring and dataset nodes (core functions, no ComfyUI).

    .testenv/venv/bin/python bench/bench_character_inputs.py [--refs 4] [--side 512]

Prints per-stage figures:
  load      the character's reference portraits from its profile (PNG decode), per call
  scoring   Face Similarity's work with the character's portraits: first (detect + embed) and again
            (content cache), for 2 candidates
  audit     the Dataset Audit reference: stored mean embedding vs. embedding the portraits (first / cached)
Numbers are wall-clock on this machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# the store signs what the pack writes: a throwaway key for this run, never the user's
os.environ.setdefault("CONTINUITY_KEY_DIR", tempfile.mkdtemp(prefix="continuity-bench-keys-"))
FACES = REPO / "assets" / "faces"


def _img(name: str, side: int) -> np.ndarray:
    im = Image.open(FACES / name).convert("RGB")
    im.thumbnail((side, side))
    return np.asarray(im, np.float32) / 255


def _t(fn, n=1):
    out, times = None, []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--refs", type=int, default=4)
    ap.add_argument("--side", type=int, default=512)
    a = ap.parse_args()
    from continuity import character as charlib
    from continuity.faces import embedders
    from continuity.faces.base import as_uint8_rgb
    from continuity.scoring.similarity import EmbeddingCache, embed_images, get_face_detector, score_set

    names = ["img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg", "img6.jpg", "img7.jpg"][: a.refs]
    with tempfile.TemporaryDirectory() as root:
        refs = [_img(n, a.side) for n in names]
        det, emb = get_face_detector("dlib"), embedders.get_embedder("dlib")
        char = charlib.save_profile(root, "bench", trigger_word="b3n", class_phrase="woman", references=refs)
        loaded, t_load = _t(lambda: [as_uint8_rgb(x) for x in char.load_reference_images()], 5)
        print(f"load      {len(loaded)} reference portraits ({a.side} px) from the profile: {t_load * 1000:.1f} ms")

        cands = [as_uint8_rgb(_img(n, a.side)) for n in ("img10.jpg", "img13.jpg")]
        cache = EmbeddingCache()
        _, t_first = _t(lambda: score_set(loaded, cands, [emb], detector=det, cache=cache))
        _, t_again = _t(lambda: score_set(loaded, cands, [emb], detector=det, cache=cache), 5)
        print(f"scoring   {len(loaded)} refs x {len(cands)} candidates: first {t_first:.2f} s, "
              f"again {t_again * 1000:.1f} ms (content cache)")

        found = [r.embedding for r in embed_images(loaded, emb, detector=det, policy="largest", cache=cache) if r.found]
        with_mean = charlib.save_profile(root, "bench", embeddings={"dlib": np.stack(found)})
        _, t_mean = _t(lambda: with_mean.mean_embedding("dlib"), 20)
        cache2 = EmbeddingCache()
        _, t_emb_first = _t(lambda: embed_images(loaded, emb, detector=det, policy="largest", cache=cache2))
        _, t_emb_again = _t(lambda: embed_images(loaded, emb, detector=det, policy="largest", cache=cache2), 5)
        print(f"audit     reference: stored mean {t_mean * 1000:.2f} ms; embedding the portraits "
              f"first {t_emb_first:.2f} s, again {t_emb_again * 1000:.1f} ms")


if __name__ == "__main__":
    main()
