"""Benchmark: writing a 135-image training job at 1024 px with masks (RGBA PNG), the paper's size.

Prints per-stage figures. Target: the whole job written in under 30 s on a 2-core CPU.
Usage: python bench/bench_training.py [--images 135] [--size 1024] [--reg 0]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from continuity.training import build_command, create_job, load_preset

# the store signs what the pack writes: a throwaway key for this run, never the user's
os.environ.setdefault("CONTINUITY_KEY_DIR", tempfile.mkdtemp(prefix="continuity-bench-keys-"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=135)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reg", type=int, default=0, help="regularization images (also written as PNG)")
    a = ap.parse_args()
    t = time.perf_counter()
    # real photos (assets/faces, upscaled to the size) as float32 arrays, the way IMAGE tensors arrive
    from PIL import Image
    faces = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "faces")
    photos = [np.asarray(Image.open(os.path.join(faces, f"img{k}.jpg")).convert("RGB").resize((a.size, a.size)),
                         dtype=np.float32) / 255.0 for k in range(1, 26)]
    images = [photos[i % len(photos)] for i in range(a.images)]
    yy, xx = np.mgrid[0:a.size, 0:a.size].astype(np.float32) / a.size
    masks = []
    for i in range(a.images):
        m = np.zeros((a.size, a.size), np.float32)
        r = a.size // 3
        cy, cx = a.size // 2, a.size // 2 + (i % 7 - 3) * 8
        m[((yy * a.size - cy) ** 2 + (xx * a.size - cx) ** 2) < r * r] = 1.0
        masks.append(m)
    regs = [images[i % a.images] for i in range(a.reg)]
    t_gen = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "models", "checkpoints")
        os.makedirs(ck)
        open(os.path.join(ck, "base.safetensors"), "wb").close()
        preset = load_preset("sdxl_realistic")
        t = time.perf_counter()
        for _ in range(100):
            build_command(preset, {"learning_rate": 2e-6}, python="py", sd_scripts_root="/sd", dataset_config="/d.toml",
                          output_dir="/o", output_name="j", models={"pretrained_model_name_or_path": os.path.join(ck, "base.safetensors")},
                          model_roots=[os.path.join(tmp, "models")])
        t_cmd = (time.perf_counter() - t) / 100
        t = time.perf_counter()
        c0 = time.process_time()
        job = create_job(jobs_root=os.path.join(tmp, "jobs"), loras_root=os.path.join(tmp, "loras"), job_name="bench",
                         preset=preset, overrides=None, python="py", sd_scripts_root="/sd",
                         models={"pretrained_model_name_or_path": os.path.join(ck, "base.safetensors")},
                         model_roots=[os.path.join(tmp, "models")], images=images, masks=masks,
                         captions=[f"pose {i}" for i in range(a.images)], reg_images=regs or None,
                         token="ohwx", class_phrase="woman")
        t_write = time.perf_counter() - t
        cpu_write = time.process_time() - c0
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(job.job_dir) for f in fs)
    print(f"cpu cores: {os.cpu_count()}, load average now: {os.getloadavg()[0]:.1f}")
    print(f"generate {a.images} test images {a.size}px:   {t_gen:7.2f} s (not part of the job)")
    print(f"build_command (incl. contract check): {t_cmd * 1000:7.2f} ms")
    print(f"write job ({a.images} RGBA PNG + {a.reg} reg + captions + TOML): {t_write:7.2f} s "
          f"({t_write / max(1, a.images + a.reg) * 1000:.0f} ms/image, {size / 2**20:.0f} MiB)")
    print(f"  CPU time of the write: {cpu_write:.2f} s (on {os.cpu_count()} idle cores: about {cpu_write / os.cpu_count():.1f} s wall)")
    print(f"target < 30 s: {'OK' if t_write < 30 else 'MISSED'}")


if __name__ == "__main__":
    main()
