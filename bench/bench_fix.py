"""Benchmark of the face-fix geometry: crop (Lanczos upscale to 1024) and paste back.

    .testenv/venv/bin/python bench/bench_fix.py [--repeats 7] [--target 1024]

Cases (float32 RGB, as ComfyUI passes IMAGE tensors):
  (a) 1024x1024, a face-sized elliptical mask in the centre
  (b) 2048x1536, the mask cut by the right border (the crop is padded, not shifted)
  (c) a batch of 8 at 1024x1024, masks at different places
Prints the median (and min) seconds of crop, paste (of crops changed everywhere), and crop + paste
for each (the "both" figure includes changing the crops, a multiply-add), plus the
stages inside them on case (a).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from continuity.fix import geometry as g

def ellipse(h, w, cx, cy, rx, ry):
    yy, xx = np.mgrid[0:h, 0:w]
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.float32)


def case(name):
    rng = np.random.default_rng(0)
    if name == "a":
        img = rng.random((1, 1024, 1024, 3), dtype=np.float32)
        mask = ellipse(1024, 1024, 512, 500, 150, 190)[None]
    elif name == "b":
        img = rng.random((1, 1536, 2048, 3), dtype=np.float32)
        mask = ellipse(1536, 2048, 1980, 700, 170, 210)[None]
    else:
        img = rng.random((8, 1024, 1024, 3), dtype=np.float32)
        mask = np.stack([ellipse(1024, 1024, 200 + 90 * i, 300 + 60 * i, 110 + 10 * i, 140 + 10 * i)
                         for i in range(8)])
    return torch.from_numpy(img), torch.from_numpy(mask)


CPU = []


def timeit(fn, repeats):
    """Median and min wall-clock seconds; the median CPU seconds of this process go to CPU[-1]
    (the figure to trust when other jobs load the machine: the work here is single-threaded)."""
    times, cpu = [], []
    out = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU.append(statistics.median(cpu))
    return statistics.median(times), min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--target", type=int, default=1024)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, target {args.target}")
    for name in "abc":
        img, mask = case(name)
        g.crop_for_inpaint(img, mask, target=args.target)  # warm the weight caches once
        crop_med, crop_min, (crops, cmasks, rec) = timeit(
            lambda img=img, mask=mask: g.crop_for_inpaint(img, mask, target=args.target), args.repeats)
        # paste crops that were changed everywhere (an unchanged crop is skipped, which would flatter us)
        edited = torch.from_numpy(crops * np.float32(0.9) + np.float32(0.05))
        paste_med, paste_min, _ = timeit(lambda rec=rec, edited=edited: torch.from_numpy(g.paste_back(rec, edited)),
                                     args.repeats)

        def both(img=img, mask=mask):
            c, m, r = g.crop_for_inpaint(img, mask, target=args.target)
            return torch.from_numpy(g.paste_back(r, c * np.float32(0.9) + np.float32(0.05)))

        both_med, both_min, _ = timeit(both, args.repeats)
        crop_cpu, paste_cpu, both_cpu = CPU[-3:]
        sides = [b.side for b in rec.boxes]
        print(f"({name}) {tuple(img.shape)} crop sides {sides}\n"
              f"    wall median: crop {crop_med:.3f} s (min {crop_min:.3f}), paste {paste_med:.3f} s "
              f"(min {paste_min:.3f}), both {both_med:.3f} s (min {both_min:.3f})\n"
              f"    cpu  median: crop {crop_cpu:.3f} s, paste {paste_cpu:.3f} s, both {both_cpu:.3f} s")

    # stages on case (a)
    img, mask = case("a")
    x = img.numpy()[0]
    m = mask.numpy()[0]
    box = g.square_box(g.mask_bbox(m), 1024, 1024, target=args.target)
    stages = {
        "bbox + box": lambda: g.square_box(g.mask_bbox(m), 1024, 1024, target=args.target),
        "lanczos crop (image)": lambda: g.crop_resized(x, box, "lanczos"),
        "triangle crop (mask)": lambda: g.crop_resized(m, box, "triangle"),
    }
    crop = g.crop_resized(x, box, "lanczos")
    rx0, ry0, rx1, ry1 = box.region
    stages["exact inverse (uncrop)"] = lambda: g.uncrop(crop, box)
    stages["blend alpha"] = lambda: g.blend_alpha(m[ry0:ry1, rx0:rx1], box, g.feather_width(box.side, 4.5))
    for label, fn in stages.items():
        med, mn, _ = timeit(fn, args.repeats)
        print(f"  (a) stage {label:24s} {med * 1000:7.1f} ms (min {mn * 1000:.1f})")


if __name__ == "__main__":
    main()
