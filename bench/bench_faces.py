"""Per-stage times of the built-in face backends on a 1 MP photo (median of N runs).

    .testenv/venv/bin/python bench/bench_faces.py [--runs 15] [--image assets/faces/img13.jpg]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))

from continuity.faces import get_detector, get_parser, load_analyzer
from continuity.faces import mediapipe_backend as mpb
from continuity.faces.masks import region_masks


def timed(fn, runs):
    fn()  # warm-up (model loading)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts), min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--image", default=str(REPO / "assets/faces/img13.jpg"))
    args = ap.parse_args()
    img = Image.open(args.image).convert("RGB")
    s = (1_000_000 / (img.width * img.height)) ** 0.5
    img = img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
    rgb = np.asarray(img)
    print(f"image {Path(args.image).name} resized to {rgb.shape[1]}x{rgb.shape[0]} ({rgb.shape[0] * rgb.shape[1] / 1e6:.2f} MP), "
          f"median / min of {args.runs} runs, ms")
    rows = []
    dl = get_detector("dlib")
    rows.append(("dlib HOG detect + 68 landmarks", timed(lambda: dl.detect(rgb), args.runs)))
    rows.append(("dlib HOG detect only", timed(lambda: dl.detect_boxes(rgb), args.runs)))
    face = dl.detect(rgb)[0]
    rows.append(("dlib 68 landmarks (1 face)", timed(lambda: dl.landmarks_for(rgb, face.box), args.runs)))
    if mpb.available():
        rows.append(("mediapipe detect short-range", timed(lambda: mpb.detect_raw(rgb, 0), args.runs)))
        rows.append(("mediapipe detect full-range", timed(lambda: mpb.detect_raw(rgb, 1), args.runs)))
        md = get_detector("mediapipe", mesh=False)
        rows.append(("mediapipe detect auto", timed(lambda: md.detect(rgb), args.runs)))
        mf = md.detect(rgb)[0]
        rows.append(("mediapipe 478-pt mesh (face crop)", timed(lambda: mpb.face_mesh(rgb, mf.box), args.runs)))
        rows.append(("mediapipe person segmentation", timed(lambda: mpb.person_mask_small(rgb), args.runs)))
        par = get_parser("mediapipe")
        mfull = get_detector("mediapipe").detect(rgb)[0]
        person = par.person(rgb)
        rows.append(("head parse (masks, given mesh+person)",
                     timed(lambda: par.parse(rgb, mfull, faces=[mfull], person=person), args.runs)))
        an = load_analyzer("mediapipe")
        rows.append(("FULL head mask mediapipe (detect..mask)",
                     timed(lambda: region_masks(rgb, an, regions="face,ears,hair,beard"), args.runs)))
        an2 = load_analyzer("dlib", parser="mediapipe")
        rows.append(("FULL head mask dlib detect + mediapipe parse",
                     timed(lambda: region_masks(rgb, an2, regions="face,ears,hair,beard"), args.runs)))
    else:
        print("mediapipe is not installed: its stages are skipped")
    an3 = load_analyzer("dlib", parser="landmarks")
    rows.append(("FULL face mask dlib + landmarks parser",
                 timed(lambda: region_masks(rgb, an3, regions="face"), args.runs)))
    for name, (med, mn) in rows:
        print(f"{name:48s} {med:8.1f} {mn:8.1f}")


if __name__ == "__main__":
    main()
