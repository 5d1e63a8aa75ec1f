"""Benchmark of a shot through the video face fix without sampling: tracking, assignment to a cast,
steady crops and paste back, on a 120-frame 1920x1080 shot with two faces.

    .testenv/venv/bin/python bench/bench_video.py [--frames 120] [--target 1024] [--backend mediapipe]

The shot is built from two portraits of assets/faces (heads about 320 px high, moving across the
frame toward each other, one growing); the cast is two identities from OTHER photos of the same
people. Stages, each timed on its own (wall and this process's CPU seconds):
  tracking  : detection on every frame, cut detection, linking, pooled identity of <= 8 frames per
              track, and the Hungarian assignment of tracks to the cast
  masks     : the face-region mask (face, ears, hair, beard) of every face-frame
  plan      : one crop side per track, smoothed centres, smoothed masks
  crop+paste: Lanczos crop to --target and paste back (the crop changed everywhere) per face-frame
Prints the cost per face-frame of each stage and of all of them, next to the still pipeline's
crop + paste (bench_fix.py case (a)).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from continuity.arrays import mask_bbox
from continuity.cast import similarity_matrix
from continuity.character.identity import CharacterIdentity
from continuity.faces import load_analyzer
from continuity.faces.masks import region_masks
from continuity.tracks import crop_frame, paste_frame, stable_track_crop, track_faces

FACES = REPO / "assets" / "faces"


def head(name: str, side: int) -> Image.Image:
    return ImageOps.fit(Image.open(FACES / name).convert("RGB"), (side, side), Image.LANCZOS, centering=(0.5, 0.35))


def shot(n: int, h: int = 1080, w: int = 1920) -> np.ndarray:
    a, d = head("img1.jpg", 640), head("img16.jpg", 640)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.clip(np.array([70, 80, 95], np.float32) + 18 * np.sin(xx / 61.0 + yy / 83.0)[..., None], 0, 255)
    bg = bg.astype(np.uint8)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        t = i / max(1, n - 1)
        im = Image.fromarray(bg)
        sa = int(520 + 80 * t)
        im.paste(a.resize((sa, sa), Image.BILINEAR), (int(150 + 450 * t), 260))
        im.paste(d.resize((520, 520), Image.BILINEAR), (int(1250 - 350 * t), 300))
        frames[i] = np.asarray(im)
    return frames


def clock(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--target", type=int, default=1024)
    ap.add_argument("--backend", default="mediapipe")
    args = ap.parse_args()
    frames = shot(args.frames)
    an = load_analyzer(args.backend)
    emb = an.embedder()
    idents = []
    for name, ref in (("a", "img2.jpg"), ("d", "img17.jpg")):
        rgb = np.asarray(Image.open(FACES / ref).convert("RGB"))
        v = emb.embed(rgb, an.detect(rgb)[:1])[0]
        idents.append(CharacterIdentity(name, 1, emb.name, v / np.linalg.norm(v), float(emb.threshold), "bench"))
    ts, tw, tc_ = clock(lambda: track_faces(
        frames, lambda rgb, i: an.detect(rgb, i), embed=emb.embed, score=lambda e: similarity_matrix(e, idents),
        thresholds=[i.threshold for i in idents], members=["a", "d"]))
    face_frames = sum(len(t.observed) for t in ts.tracks)
    print(f"{args.frames} frames {frames.shape[2]}x{frames.shape[1]}, {len(ts.tracks)} tracks "
          f"({', '.join(f'{t.id}:{t.member_name}' for t in ts.tracks)}), {face_frames} face-frames, cuts {ts.cuts}")
    masks = {}

    def all_masks():
        for f in range(args.frames):
            faces = [t.observed[f] for t in ts.tracks if f in t.observed]
            person = an.parser.person(frames[f]) if faces and getattr(an.parser, "use_mediapipe", False) else None
            for t in ts.tracks:
                if f in t.observed:
                    m = region_masks(frames[f], faces, chosen=[t.observed[f]], grow=5.0, grow_unit="percent",
                                     parser=an.parser, person=person).mask
                    bb = mask_bbox(m)          # kept as its bounding box only (a 1080p mask is 8 MB)
                    masks[(t.id, f)] = None if bb is None else (bb, m[bb[1]:bb[3], bb[0]:bb[2]].copy())
    _, mw, mc = clock(all_masks)
    crops, pw, pc = clock(lambda: {t.id: stable_track_crop(t, ts.size, lambda f, t=t: masks[(t.id, f)], target=args.target)
                                   for t in ts.tracks})

    def crop_paste():
        for f in range(args.frames):
            cur = frames[f].astype(np.float32) / 255.0
            for t in ts.tracks:
                tc = crops[t.id]
                k = f - tc.frames[0]
                if 0 <= k < len(tc) and tc.masks[k].any():
                    c, _ = crop_frame(cur, tc, k)
                    cur = paste_frame(cur, tc, k, np.clip(c * 0.9 + 0.05, 0, 1), ref=c)
    _, cw, cc = clock(crop_paste)
    rows = [("tracking + assignment", tw, tc_), ("masks", mw, mc), ("crop plan", pw, pc), ("crop + paste", cw, cc)]
    print(f"{'stage':24s} {'wall s':>8s} {'CPU s':>8s} {'ms/face-frame wall':>20s} {'CPU':>8s}")
    for name, w, c in rows:
        print(f"{name:24s} {w:8.2f} {c:8.2f} {1000 * w / face_frames:20.1f} {1000 * c / face_frames:8.1f}")
    tw_all, tc_all = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all':24s} {tw_all:8.2f} {tc_all:8.2f} {1000 * tw_all / face_frames:20.1f} {1000 * tc_all / face_frames:8.1f}")
    print(f"sides {[crops[t.id].boxes[0].side for t in ts.tracks]} -> {args.target}")


if __name__ == "__main__":
    main()
