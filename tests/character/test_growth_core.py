"""Layer growth: canvas geometry, style score, filter (core) and the node end to end with tiny models."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from continuity.character import growth
from continuity.errors import ContinuityError


def test_canvas_plan_sizes_and_placement():
    c = growth.plan_canvas(512, 512, 1.5, 768)
    assert (c.width, c.height) == (768, 768) and c.width % 8 == 0
    assert abs(c.inner_w - 512) <= 1 and c.left == c.right
    assert c.top < c.bottom                      # the body grows downwards
    c = growth.plan_canvas(300, 400, 1.8, 1024, aspect=0.6)
    assert c.height == 1024 and c.width % 8 == 0 and c.width == 616
    assert c.inner_w / c.inner_h == pytest.approx(300 / 400, rel=0.02)
    assert c.inner_h <= 1024 / 1.8 + 1 and c.inner_w <= c.width / 1.8 + 1
    for bad in [dict(width=4, height=40, scale=1.5, resolution=512), dict(width=40, height=40, scale=0.5, resolution=512),
                dict(width=40, height=40, scale=1.5, resolution=32)]:
        with pytest.raises(ContinuityError):
            growth.plan_canvas(**bad)
    assert growth.next_layer("closeup") == "closeup_portrait"
    with pytest.raises(ContinuityError, match="last layer"):
        growth.next_layer("full_body")


def test_style_similarity_orders_palettes():
    rng = np.random.default_rng(0)
    warm = np.clip(rng.normal([0.8, 0.5, 0.3], 0.08, (64, 64, 3)), 0, 1).astype(np.float32)
    warm2 = np.clip(rng.normal([0.78, 0.52, 0.3], 0.08, (64, 64, 3)), 0, 1).astype(np.float32)
    cold = np.clip(rng.normal([0.2, 0.4, 0.8], 0.08, (64, 64, 3)), 0, 1).astype(np.float32)
    same = growth.style_similarity(warm2, [warm])
    other = growth.style_similarity(cold, [warm])
    assert 0 <= other < same <= 1 and same > 0.8 and other < 0.3
    assert growth.style_similarity(warm, [warm]) == pytest.approx(1.0, abs=1e-6)


def test_filter_reasons():
    cs = [growth.Candidate("a", 0, 0, (8, 8), face_found=True, identity=0.9),
          growth.Candidate("a", 1, 1, (8, 8), face_found=True, identity=0.5),
          growth.Candidate("b", 2, 2, (8, 8), face_found=False),
          growth.Candidate("b", 3, 3, (8, 8), face_found=True, identity=0.95, style=0.2)]
    growth.apply_filter(cs, threshold=0.8, style_threshold=0.5, need_style=True)
    assert [c.kept for c in cs] == [False, False, False, False]
    assert cs[0].reason.startswith("style") and cs[1].reason == "identity 0.500 < threshold 0.800"
    assert cs[2].reason == "no face found" and "style 0.200" in cs[3].reason
    growth.apply_filter(cs, threshold=0.8, style_threshold=0.5, need_style=False)
    assert [c.kept for c in cs] == [True, False, False, True]


def test_clip_style_cosine_math_and_threshold():
    refs = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [1.2, 0, 1.6]])      # the last one not unit length (0.6, 0, 0.8)
    cands = np.array([[2.0, 0, 0], [0, 3.0, 0], [0.6, 0, 0.8]])
    got = growth.clip_style_scores(cands, refs)
    assert got == pytest.approx([(1 + 0.8 + 0.6) / 3, (0 + 0.6 + 0) / 3, (0.6 + 0.48 + 1) / 3], abs=1e-9)
    rng = np.random.default_rng(0)
    c, r = rng.normal(size=(5, 16)), rng.normal(size=(4, 16))
    brute = [np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in r]) for a in c]
    assert growth.clip_style_scores(c, r) == pytest.approx(brute, abs=1e-9)
    assert growth.clip_style_scores(r[:1] * 7, r[:1]) == pytest.approx([1.0])   # scale does not matter
    # leave-one-out: refs' pairwise cosines 0.8, 0.6, 0.48 -> means 0.7, 0.64, 0.54 -> the lowest
    assert growth.clip_style_baseline(refs) == pytest.approx(0.54)
    assert growth.clip_style_baseline(refs[:1]) is None
    assert growth.clip_style_threshold(0.3, 0.5, refs) == (0.3, "input")
    assert growth.clip_style_threshold(0.0, 0.5, refs) == (0.5, "profile")
    thr, src = growth.clip_style_threshold(0.0, None, refs)
    assert thr == pytest.approx(0.54) and src.startswith("references")
    thr, src = growth.clip_style_threshold(None, None, refs[:1])
    assert thr is None and "colour statistics" in src
    with pytest.raises(ContinuityError, match="dimensions"):
        growth.clip_style_scores(c, r[:, :8])


def test_filter_uses_clip_i_when_given():
    def cands():
        return [growth.Candidate("a", 0, 0, (8, 8), face_found=True, identity=0.9, style=0.1, clip_style=0.95),
                growth.Candidate("a", 1, 1, (8, 8), face_found=True, identity=0.9, style=0.99, clip_style=0.5),
                growth.Candidate("a", 2, 2, (8, 8), face_found=True, identity=0.9, style=0.99)]
    cs = growth.apply_filter(cands(), threshold=0.8, style_threshold=0.75, need_style=True, clip_style_threshold=0.9)
    assert [c.kept for c in cs] == [True, False, False]
    assert cs[1].reason == "CLIP-I style 0.500 < 0.900" and cs[2].reason.startswith("CLIP-I style nan")
    assert all(c.style_metric == "clip_i" and c.clip_style_threshold == 0.9 for c in cs)
    # no CLIP-I threshold: the colour statistics decide, as before
    cs = growth.apply_filter(cands(), threshold=0.8, style_threshold=0.75, need_style=True)
    assert [c.kept for c in cs] == [False, True, True] and cs[0].reason == "style 0.100 < 0.750"
    assert all(c.style_metric == "colour" for c in cs)
    # realistic characters: scores reported, no style filter
    cs = growth.apply_filter(cands(), threshold=0.8, style_threshold=0.75, need_style=False, clip_style_threshold=0.9)
    assert all(c.kept and c.style_metric == "" and c.clip_style_threshold is None for c in cs)


def _square(path, side):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return img.resize((side, side), Image.LANCZOS)


@pytest.mark.comfy
def test_grow_layer_end_to_end_with_tiny_models(comfy, faces_dir, artifacts_dir):
    from continuity import character as charlib
    root = str(comfy.base / "output" / "continuity" / "characters")
    refs = [np.asarray(_square(faces_dir / f, 256), np.float32) / 255 for f in ("img1.jpg", "img2.jpg")]
    charlib.save_profile(root, "ada", trigger_word="4da", class_phrase="woman", references=refs)
    layer_dir = comfy.base / "input" / "ada_closeups"
    layer_dir.mkdir(parents=True, exist_ok=True)
    _square(faces_dir / "img4.jpg", 96).save(layer_dir / "a_same.png")       # same person as the references
    _square(faces_dir / "img13.jpg", 96).save(layer_dir / "b_other.png")     # someone else

    def graph(threshold, inpaint, candidates):
        return {
            "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "ada", "revision": 0}},
            "2": {"class_type": "ContinuityLoadImageFolder",
                  "inputs": {"folder": "ada_closeups", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                             "caption_extension": ".txt"}},
            "3": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": inpaint}},
            "4": {"class_type": "ContinuityGrowCharacterLayer",
                  "inputs": {"character": ["1", 0], "images": ["2", 0], "filenames": ["2", 2], "model": ["3", 0],
                             "clip": ["3", 1], "vae": ["3", 2], "from_layer": "closeup", "resolution": 144,
                             "candidates": candidates, "seed": 5, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                             "scheduler": "normal", "prompt": "studio light", "negative": "", "feather_px": 8,
                             "lora_strength": 0.8, "fix_faces": True, "fix_denoise": 0.5, "fix_size": 64,
                             "threshold": threshold}},
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 2]}},
        }

    res = comfy.run(graph(0.0, True, 2))
    char, kept, every, report, ds_path = (res.outputs["4"][i] for i in range(5))
    char, report, ds_path = char[0], json.loads(report[0]), ds_path[0]
    cands = report["candidates"]
    assert report["layer"] == "closeup_portrait" and len(cands) == 4 and len(every) == 4
    assert all(tuple(t.shape) == (1, 144, 144, 3) for t in every)
    assert all(c["canvas"] == [144, 144] for c in cands)
    # the faces were found, a fix was tried on each, and each has a score
    assert all(c["face_found"] and c["faces"] >= 1 and c["identity"] is not None for c in cands)
    assert all(c["fix_note"] for c in cands)
    # the filter: the same person passes the model's threshold, the other does not
    by_src = {}
    for c in cands:
        by_src.setdefault(c["source"], []).append(c)
    assert all(c["kept"] for c in by_src["a_same.png"]), by_src["a_same.png"]
    assert not any(c["kept"] for c in by_src["b_other.png"])
    assert all("threshold" in c["reason"] for c in by_src["b_other.png"])
    assert len(kept) == 2
    # the new dataset version: kept images with captions and the provenance of every candidate
    assert char.revision == 2 and char.latest_dataset()["path"] == ds_path
    sub = os.path.join(ds_path, "closeup_portrait")
    pngs = sorted(f for f in os.listdir(sub) if f.endswith(".png"))
    assert len(pngs) == 2
    assert open(os.path.join(sub, pngs[0].replace(".png", ".txt"))).read().strip() == growth.LAYER_PROMPT["closeup_portrait"]
    prov = _provenance(ds_path)                                  # in the version's manifest (the one format)
    assert prov["step"] == "growth" and prov["subfolder"] == "closeup_portrait"
    assert len(prov["candidates"]) == 4 and prov["prompt"].startswith("4da woman, close-up portrait")
    Image.fromarray((every[0][0].numpy() * 255).astype(np.uint8)).save(artifacts_dir / "character_growth_candidate.png")

    # a threshold no one reaches: nothing kept, a new version all the same (v1's images and the provenance),
    # v1 untouched
    before = sorted(os.listdir(sub))
    res = comfy.run(graph(0.999, False, 1))
    report2 = json.loads(res.value("4", 3))
    assert report2["kept"] == 0 and report2["dataset_version"] == 2
    assert all(not c["kept"] and "< threshold 0.999" in c["reason"] for c in report2["candidates"])
    assert sorted(os.listdir(sub)) == before
    # version 2 carries version 1's layer forward and adds the new (empty) one beside it
    v2 = res.value("4", 4)
    assert sorted(os.listdir(os.path.join(v2, "closeup_portrait"))) == before
    prov2 = _provenance(v2)
    assert prov2["subfolder"] == "closeup_portrait_2" and prov2["previous_version"].endswith("/v1")
    assert not os.path.exists(os.path.join(v2, "closeup_portrait_2"))        # no image kept: no folder


def _provenance(version_path):
    """The provenance of a dataset version, read back through the store."""
    from continuity.dataset import versions as vs
    name_dir, v = os.path.split(version_path)
    return vs.load_version(os.path.dirname(name_dir), os.path.basename(name_dir), int(v[1:])).provenance


TINY_CLIP_VISION = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32,
                    "image_size": 56, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64,
                    "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
                    "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 48,
                    "torch_dtype": "float32"}


@pytest.mark.comfy
def test_grow_layer_clip_i_style_with_a_tiny_clip_vision_model(comfy, faces_dir, tmp_path):
    """An animated character with a CLIP vision model connected: every candidate gets both style scores,
    the CLIP-I one is the mean cosine of ComfyUI's image embeddings, and the filter uses CLIP-I against
    the style references' own leave-one-out threshold. The CLIP vision model is ComfyUI's
    ClipVisionModel with a small config and seeded random weights (the same in the graph and here)."""
    import importlib

    import torch

    import tiny_models
    clip_vision_mod = importlib.import_module("comfy.clip_vision")
    from continuity import character as charlib
    root = str(comfy.base / "output" / "continuity" / "characters")
    refs = [np.asarray(_square(faces_dir / f, 256), np.float32) / 255 for f in ("img1.jpg", "img2.jpg")]
    style = [np.asarray(_square(faces_dir / f, 128), np.float32) / 255 for f in ("img1.jpg", "img5.jpg", "img13.jpg")]
    charlib.save_profile(root, "bea", trigger_word="b3a", class_phrase="cartoon girl", style="animated",
                         references=refs, style_references=style)
    layer_dir = comfy.base / "input" / "bea_closeups"
    layer_dir.mkdir(parents=True, exist_ok=True)
    _square(faces_dir / "img4.jpg", 96).save(layer_dir / "a.png")
    config = json.dumps(TINY_CLIP_VISION)
    graph = {
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "bea", "revision": 0}},
        "2": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": "bea_closeups", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "3": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": True}},
        "6": {"class_type": "ContinuityTestTinyClipVision", "inputs": {"config": config, "seed": 7}},
        "4": {"class_type": "ContinuityGrowCharacterLayer",
              "inputs": {"character": ["1", 0], "images": ["2", 0], "filenames": ["2", 2], "model": ["3", 0],
                         "clip": ["3", 1], "vae": ["3", 2], "from_layer": "closeup", "resolution": 144,
                         "candidates": 3, "seed": 5, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                         "scheduler": "normal", "prompt": "", "negative": "", "feather_px": 8,
                         "lora_strength": 0.8, "fix_faces": False, "fix_denoise": 0.5, "fix_size": 64,
                         "threshold": -1.0, "clip_vision": ["6", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 2]}},
    }
    res = comfy.run(graph)
    report = json.loads(res.value("4", 3))
    every = res.outputs["4"][2]
    cands = report["candidates"]
    assert len(cands) == 3 and len(every) == 3
    # the same CLIP vision model, built here: the embeddings the node must have used
    p = tmp_path / "clip_vision.json"
    p.write_text(config)
    cv = clip_vision_mod.ClipVisionModel(str(p))
    tiny_models._fill(cv.model, 7, scale=0.05)

    def embed(img):
        with torch.inference_mode():
            e = cv.encode_image(img[None] if img.ndim == 3 else img, crop=True)["image_embeds"].float()
        return torch.nn.functional.normalize(e.reshape(1, -1), dim=-1)[0].numpy()
    char = charlib.load_profile(root, "bea")
    style_arrays = [np.asarray(Image.open(f).convert("RGB"), np.float32) / 255 for f in char.style_reference_images()]
    ref_e = np.stack([embed(torch.from_numpy(a)) for a in style_arrays])
    thr = growth.clip_style_baseline(ref_e)
    assert report["style"]["metric"] == "clip_i" and report["style"]["clip_threshold"] == pytest.approx(thr, abs=1e-5)
    assert report["style"]["clip_threshold_source"].startswith("references")
    for c, t in zip(cands, every):
        e = embed(t[0])
        assert c["clip_style"] == pytest.approx(float(np.mean(ref_e @ e)), abs=1e-4)
        assert c["style"] is not None and 0 <= c["style"] <= 1            # the colour statistics, reported too
        assert c["style_metric"] == "clip_i"
        passes = c["face_found"] and c["clip_style"] >= report["style"]["clip_threshold"]
        assert c["kept"] == passes, c
        if c["face_found"] and not passes:
            assert c["reason"].startswith("CLIP-I style")
    if report["dataset_path"]:      # something kept: the provenance in the version's manifest says the same
        prov = _provenance(report["dataset_path"])
        assert prov["style"]["metric"] == "clip_i" and all("clip_style" in c for c in prov["candidates"])
    else:                           # nothing kept and no previous version: no version written
        assert report["dataset_version"] == 0 and not any(c["kept"] for c in cands)
    # the threshold input wins over the references' own; put it between the candidates' scores (random
    # weights put every image's embedding close together): some kept, some not, on CLIP-I alone (their
    # colour scores are far below the profile's colour threshold, which no longer applies)
    scores = sorted(c["clip_style"] for c in cands)
    assert scores[-1] - scores[0] > 1e-6
    mid = (scores[0] + scores[-1]) / 2
    graph["4"]["inputs"]["clip_style_threshold"] = mid
    report2 = json.loads(comfy.run(graph).value("4", 3))
    assert report2["style"]["clip_threshold"] == pytest.approx(mid) and report2["style"]["clip_threshold_source"] == "input"
    kept = [c["kept"] for c in report2["candidates"]]
    assert kept == [c["face_found"] and c["clip_style"] >= mid for c in cands] and any(kept) and not all(kept)
    assert all(c["style"] < report2["style"]["colour_threshold"] for c in report2["candidates"] if c["kept"])
