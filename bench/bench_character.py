"""Benchmark of the character stage: profile store, embeddings, layer growth, training plans.

    .testenv/venv/bin/python bench/bench_character.py [--repeats 20] [--no-comfy]

Prints per-stage figures:
  profile   save (create with 4 references of 512 px, then updates), load latest, record a LoRA,
            history of N revisions
  embedding dlib mean embedding of 4 references (first and repeated: the content cache)
  growth    canvas planning, colour-statistics style score per candidate (512 px)
  growth    the Grow Character Layer node end to end in-process with the tiny random-weight models
            (2 images x 2 candidates at 256 px, 4 steps), with the node's own per-stage timings
  plan      a three-stage plan on the fake sd-scripts (per-stage seconds, overhead of job creation)
Numbers are wall-clock on this machine; the tiny models make sampling cheap, so the growth figures
measure the pack's own work around the sampler (padding, encoding, scoring, fix, writing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))
sys.path.insert(0, str(REPO / "tests" / "support"))

# the store signs what the pack writes: a throwaway key for this run, never the user's
os.environ.setdefault("CONTINUITY_KEY_DIR", tempfile.mkdtemp(prefix="continuity-bench-keys-"))

from continuity import character as charlib
from continuity.character import growth, plan as planlib

FACES = REPO / "assets" / "faces"


def timed(fn, repeats=1):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), min(times)


def face(name, side):
    img = Image.open(FACES / name).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((side, side), Image.LANCZOS)
    return np.asarray(img, np.float32) / 255


def bench_profile(tmp, repeats):
    refs = [face(f, 512) for f in ("img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg")]
    root = os.path.join(tmp, "chars")
    _, t_create, _ = timed(lambda: charlib.save_profile(root, "bench", trigger_word="b3n", class_phrase="woman",
                                                        references=refs))
    _, t_update, m_update = timed(lambda: charlib.save_profile(root, "bench", notes=str(time.time())), repeats)
    _, t_load, m_load = timed(lambda: charlib.load_profile(root, "bench"), repeats)
    _, t_rec, m_rec = timed(lambda: charlib.record_lora(root, "bench", lora_name="x.safetensors", stage=1), repeats)
    folder = charlib.load_profile(root, "bench").folder
    n = len(charlib.revisions(folder))
    _, t_hist, _ = timed(lambda: charlib.history(folder))
    print(f"profile   create with 4 refs (512 px)      {t_create * 1000:8.1f} ms")
    print(f"profile   update (a field)                 {t_update * 1000:8.2f} ms median ({m_update * 1000:.2f} min)")
    print(f"profile   load latest                      {t_load * 1000:8.2f} ms median ({m_load * 1000:.2f} min)")
    print(f"profile   record a LoRA                    {t_rec * 1000:8.2f} ms median ({m_rec * 1000:.2f} min)")
    print(f"profile   history of {n} revisions          {t_hist * 1000:8.2f} ms")
    return refs


def bench_embedding(refs):
    from continuity.faces import embedders
    from continuity.scoring import similarity
    det = similarity.get_face_detector("dlib")
    emb = embedders.get_embedder("dlib")

    def run():
        return similarity.embed_images(refs, emb, detector=det)
    _, t_first, _ = timed(run)
    _, t_again, _ = timed(run, 5)
    print(f"embedding dlib, 4 refs (512 px), first       {t_first * 1000:8.1f} ms")
    print(f"embedding same refs again (content cache)    {t_again * 1000:8.2f} ms")


def bench_growth_core(refs, repeats):
    _, t_plan, _ = timed(lambda: growth.plan_canvas(512, 512, 1.5, 1024), repeats)
    cache: dict = {}
    growth.style_similarity(refs[0], refs[1:], cache=cache)
    _, t_style, _ = timed(lambda: growth.style_similarity(refs[0], refs[1:], cache=cache), repeats)
    print(f"growth    plan_canvas                      {t_plan * 1e6:8.1f} us")
    print(f"growth    style score, 512 px vs 3 refs    {t_style * 1000:8.2f} ms (reference stats cached)")


def bench_growth_node(tmp):
    import harness
    base = harness.make_base_dir(Path(tmp) / "comfy")
    comfy = harness.InProcessComfy(base).start()
    root = str(base / "output" / "continuity" / "characters")
    charlib.save_profile(root, "grow", trigger_word="gr0", class_phrase="woman",
                         references=[face("img1.jpg", 256), face("img2.jpg", 256)])
    d = base / "input" / "grow_layer"
    d.mkdir(parents=True)
    for f in ("img4.jpg", "img5.jpg"):
        Image.fromarray((face(f, 160) * 255).astype(np.uint8)).save(d / f.replace(".jpg", ".png"))
    g = {
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "grow", "revision": 0}},
        "2": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": "grow_layer", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "3": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": True}},
        "4": {"class_type": "ContinuityGrowCharacterLayer",
              "inputs": {"character": ["1", 0], "images": ["2", 0], "filenames": ["2", 2], "model": ["3", 0],
                         "clip": ["3", 1], "vae": ["3", 2], "from_layer": "closeup", "resolution": 256,
                         "candidates": 2, "seed": 1, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
                         "scheduler": "normal", "prompt": "", "negative": "", "feather_px": 16,
                         "lora_strength": 0.8, "fix_faces": True, "fix_denoise": 0.5, "fix_size": 128,
                         "threshold": 0.0}},
    }
    for label in ("first run", "second run"):
        t0 = time.perf_counter()
        res = comfy.run(g)
        wall = time.perf_counter() - t0
        rep = json.loads(res.value("4", 3))
        tm = rep["timings"]
        print(f"growth    node, 2 images x 2 candidates @256 ({label}): {wall:6.2f} s wall; "
              + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in tm.items()) + f"; kept {rep['kept']}/4")


def bench_plan(tmp):
    from fake_sdscripts import _fake_trainer

    from continuity import training
    sd_root = _fake_trainer.install(os.path.join(tmp, "sd-scripts"), control={"step_delay": 0.0})
    ds = os.path.join(tmp, "ds")
    rng = np.random.default_rng(0)
    for sub, n in (("closeup", 8), ("portrait", 8), ("expressions", 4), ("poses", 4)):
        os.makedirs(os.path.join(ds, sub))
        for i in range(n):
            Image.fromarray((rng.random((512, 512, 3)) * 255).astype(np.uint8)).save(os.path.join(ds, sub, f"{i}.png"))
    root = os.path.join(tmp, "plan_chars")
    char = charlib.save_profile(root, "plan", trigger_word="pl4n", class_phrase="man", references=[face("img1.jpg", 64)])
    models = os.path.join(tmp, "models", "checkpoints")
    os.makedirs(models)
    Path(models, "base.safetensors").write_bytes(b"x")
    make_job, launch = planlib.launcher_steps(
        character=char, preset=training.load_preset("sdxl_realistic"), sd_python=sys.executable, sd_root=sd_root,
        jobs_root=os.path.join(tmp, "jobs"), loras_root=os.path.join(tmp, "loras"),
        models={"pretrained_model_name_or_path": os.path.join(models, "base.safetensors")},
        model_roots=[os.path.join(tmp, "models")], base_overrides={"max_train_epochs": 1})
    make_t = []

    def make(*a):
        t0 = time.perf_counter()
        job = make_job(*a)
        make_t.append(time.perf_counter() - t0)
        return job
    t0 = time.perf_counter()
    results = planlib.run_plan(planlib.parse_plan("three_stage"), dataset_dir=ds, make_job=make, launch=launch,
                               on_stage_done=lambda r: charlib.record_lora(root, "plan", lora_name=os.path.basename(r.lora_path),
                                                                           stage=r.index).revision)
    total = time.perf_counter() - t0
    for r, mt in zip(results, make_t):
        print(f"plan      stage {r.index} {r.name:<12} {r.images:3d} images: {r.seconds:6.2f} s "
              f"(job folder + dataset {mt:.2f} s, the rest is the fake trainer process)")
    print(f"plan      three stages total               {total:6.2f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-comfy", action="store_true", help="skip the in-process ComfyUI growth run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        refs = bench_profile(tmp, args.repeats)
        bench_embedding(refs)
        bench_growth_core(refs, args.repeats)
        bench_plan(tmp)
        if not args.no_comfy:
            bench_growth_node(tmp)


if __name__ == "__main__":
    main()
