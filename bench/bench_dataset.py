"""Benchmark: auditing a 135-image dataset at 1024 px with the built-in models (not a test).

    .testenv/venv/bin/python bench/bench_dataset.py [--count 135] [--side 1024]

Builds 1024x1024 squares from the example photos (crops at several scales, mirrored), then times
the stages: sheet cutting, square-and-resize, and the audit (face detection + landmarks, person
mask, dlib identity embedding, duplicates), cold and then warm (content-hash cache).
"""
import argparse
import os
import sys
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(REPO)

from continuity import faces
from continuity.dataset import audit as au
from continuity.dataset import sheet as sh
from continuity.dataset import square as sq
from continuity.faces import embedders


def faces_dir():
    for p in (os.path.join(REPO, "..", "shared", "data", "faces"), os.path.join(REPO, "assets", "faces")):
        if os.path.isdir(p):
            return p
    raise SystemExit("no face photos found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=135)
    ap.add_argument("--side", type=int, default=1024)
    a = ap.parse_args()
    fd = faces_dir()
    photos = [np.asarray(Image.open(os.path.join(fd, f"img{n}.jpg")).convert("RGB")) for n in range(1, 26)]
    det = faces.get_detector("mediapipe" if faces.mediapipe_available() else "dlib")
    pm = faces.person_mask if faces.mediapipe_available() else None
    emb = embedders.get_embedder("dlib")

    t = time.perf_counter()
    squares = []
    k = 0
    while len(squares) < a.count:
        img = photos[k % len(photos)]
        if (k // len(photos)) % 2:
            img = img[:, ::-1]
        zoom = 1.0 - 0.15 * ((k // (2 * len(photos))) % 3)       # crops at several scales
        h, w = img.shape[:2]
        ch, cw = int(h * zoom), int(w * zoom)
        img = np.ascontiguousarray(img[:ch, (w - cw) // 2:(w - cw) // 2 + cw])
        fs = det.detect(img)
        plan = sq.plan_square(img.shape[1], img.shape[0], face_box=fs[0].box if fs else None, target=a.side)
        rgb, _ = sq.apply_square(img, plan)
        squares.append((rgb * 255).astype(np.uint8))
        k += 1
    t_square = time.perf_counter() - t
    print(f"square-and-resize: {len(squares)} images to {a.side}px in {t_square:.1f}s "
          f"({1000 * t_square / len(squares):.0f} ms/image, includes detection)")

    sheet = np.full((2 * 512 + 30, 3 * 400 + 40, 3), 128, np.uint8)
    for i in range(6):
        r, c = divmod(i, 3)
        sheet[10 + r * 522:10 + r * 522 + 512, 10 + c * 410:10 + c * 410 + 400] = \
            np.asarray(Image.fromarray(squares[i]).resize((400, 512)))
    t = time.perf_counter()
    panels = sh.find_panels(sheet, det.detect(sheet))
    print(f"cut composite sheet {sheet.shape[1]}x{sheet.shape[0]}: {len(panels)} panels in {time.perf_counter() - t:.2f}s")

    names = [f"img{i:03d}" for i in range(len(squares))]
    au._cache.clear()
    t = time.perf_counter()
    res = au.audit(squares, names, detector=det, embedder=emb, person_mask_fn=pm)
    t_audit = time.perf_counter() - t
    t = time.perf_counter()
    au.table_text(res)
    au.coverage_image(res)
    au.contact_sheet(squares, res)
    t_rep = time.perf_counter() - t
    t = time.perf_counter()
    au.audit(squares, names, detector=det, embedder=emb, person_mask_fn=pm)
    t_warm = time.perf_counter() - t
    s = res.summary
    print(f"audit {len(squares)} images at {a.side}px ({det.name} detector, dlib embedding, person mask): "
          f"{t_audit:.1f}s cold ({1000 * t_audit / len(squares):.0f} ms/image), reports {t_rep:.1f}s, "
          f"{t_warm:.2f}s warm (cache)")
    print(f"  no face {s['no_face']}, duplicates {s['duplicates']}, identity outliers {s['identity_outliers']}, "
          f"scales {s['scales']}")
    print(f"  target: under 60 s -> {'OK' if t_audit + t_rep < 60 else 'MISSED'}")


if __name__ == "__main__":
    main()
