"""Face fix graphs in the in-process ComfyUI with the tiny random-weight models."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfy


def _save_input(comfy, name, arr):
    path = comfy.base / "input" / name
    Image.fromarray(arr).save(path)
    return name


def _frame(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([0.5 + 0.3 * np.sin(xx / 17.0 + c) * np.cos(yy / 23.0 - c) for c in range(3)], -1)
    noise = rng.normal(0, 0.05, (h, w, 3))
    return (np.clip(base + noise, 0, 1) * 255).astype(np.uint8)


def _mask_png(comfy, name, h, w, box):
    """A mask image for LoadImageMask (channel 'red'): 255 inside box (x0, y0, x1, y1)."""
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 255
    Image.fromarray(m).save(comfy.base / "input" / name)
    return name


def _graph(img_name, mask_name, *, seed=1, inpaint=False, target=64, d1=1.0, d2=0.4, steps=3, model_2=False):
    g = {
        "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": inpaint}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "photo of a face"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": ""}},
        "i": {"class_type": "LoadImage", "inputs": {"image": img_name}},
        "k": {"class_type": "LoadImageMask", "inputs": {"image": mask_name, "channel": "red"}},
        "c": {"class_type": "ContinuityCropForInpaint",
              "inputs": {"image": ["i", 0], "mask": ["k", 0], "context": 1.5, "min_size": 16,
                         "target_size": target, "padding": "edge"}},
        "t": {"class_type": "ContinuityTwoPassInpaint",
              "inputs": {"model": ["m", 0], "positive": ["p", 0], "negative": ["n", 0], "vae": ["m", 2],
                         "image": ["c", 0], "mask": ["c", 1], "seed": seed, "steps": steps, "cfg": 4.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise_1": d1, "denoise_2": d2}},
        "s": {"class_type": "ContinuityPasteBack",
              "inputs": {"stitch": ["c", 2], "image": ["t", 0], "feather": 4.5, "colour_match": False}},
        "o": {"class_type": "PreviewImage", "inputs": {"images": ["s", 0]}},
    }
    if model_2:
        g["m2"] = {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 5, "inpaint_model": False}}
        g["t"]["inputs"]["model_2"] = ["m2", 0]
    return g


@pytest.mark.parametrize("inpaint", [False, True])
def test_two_pass_graph_end_to_end(comfy, inpaint, artifacts_dir):
    h, w = 120, 96
    img = _frame(h, w)
    _save_input(comfy, "fix_frame.png", img)
    box = (60, 30, 96, 70)   # touches the right border
    _mask_png(comfy, "fix_mask.png", h, w, box)
    prompt = _graph("fix_frame.png", "fix_mask.png", inpaint=inpaint)
    res = comfy.run(prompt)
    out = res.value("s")
    crop = res.value("c", 0)
    assert tuple(crop.shape) == (1, 64, 64, 3)
    assert tuple(out.shape) == (1, h, w, 3)
    src = torch.from_numpy(img.astype(np.float32) / 255.0)
    outside = np.ones((h, w), bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert torch.equal(out[0][torch.from_numpy(outside)], src[torch.from_numpy(outside)]), "outside the mask is untouched"
    inside = ~outside
    assert float((out[0] - src).abs()[torch.from_numpy(inside)].max()) > 0.01, "the masked area was re-drawn"
    lat = res.value("t", 1)
    assert tuple(lat["samples"].shape) == (1, 4, 8, 8) and "noise_mask" not in lat
    again = comfy.run(prompt).value("s")
    assert torch.equal(out, again), "deterministic for a seed"
    other = comfy.run(_graph("fix_frame.png", "fix_mask.png", inpaint=inpaint, seed=2)).value("s")
    assert not torch.equal(out, other)
    Image.fromarray((out[0].numpy() * 255).round().astype(np.uint8)).save(
        artifacts_dir / f"fix_two_pass_{'inpaint' if inpaint else 'plain'}.png")


def test_two_pass_with_second_model_and_skipped_passes(comfy):
    h, w = 64, 64
    _save_input(comfy, "fix_sq.png", _frame(h, w, 3))
    _mask_png(comfy, "fix_sq_mask.png", h, w, (20, 20, 40, 44))
    a = comfy.run(_graph("fix_sq.png", "fix_sq_mask.png", model_2=True)).value("s")
    b = comfy.run(_graph("fix_sq.png", "fix_sq_mask.png", model_2=False)).value("s")
    assert not torch.equal(a, b), "pass 2 used the second model"
    # both passes off: nothing changes, bit for bit
    src = torch.from_numpy(_frame(h, w, 3).astype(np.float32) / 255.0)
    none = comfy.run(_graph("fix_sq.png", "fix_sq_mask.png", d1=0.0, d2=0.0)).value("s")
    assert float((none[0] - src).abs().max()) < 1e-5


def test_two_pass_rejects_odd_sizes(comfy):
    _save_input(comfy, "fix_odd.png", _frame(30, 44))
    prompt = {
        "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "x"}},
        "i": {"class_type": "LoadImage", "inputs": {"image": "fix_odd.png"}},
        "t": {"class_type": "ContinuityTwoPassInpaint",
              "inputs": {"model": ["m", 0], "positive": ["p", 0], "negative": ["p", 0], "vae": ["m", 2],
                         "image": ["i", 0], "mask": ["i", 1], "seed": 0, "steps": 2, "cfg": 4.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise_1": 1.0, "denoise_2": 0.4}},
        "o": {"class_type": "PreviewImage", "inputs": {"images": ["t", 0]}},
    }
    res = comfy.run(prompt, expect_success=False)
    msg = res.error["exception_message"]
    assert "Two-Pass Inpaint (Continuity)" in msg and "input 'image'" in msg and "44x30" in msg


def test_crop_rejects_mismatched_mask(comfy):
    _save_input(comfy, "fix_a.png", _frame(40, 48))
    _mask_png(comfy, "fix_b.png", 32, 32, (4, 4, 10, 10))
    prompt = {
        "i": {"class_type": "LoadImage", "inputs": {"image": "fix_a.png"}},
        "k": {"class_type": "LoadImageMask", "inputs": {"image": "fix_b.png", "channel": "red"}},
        "c": {"class_type": "ContinuityCropForInpaint",
              "inputs": {"image": ["i", 0], "mask": ["k", 0], "context": 1.5, "min_size": 16,
                         "target_size": 64, "padding": "reflect"}},
        "o": {"class_type": "PreviewImage", "inputs": {"images": ["c", 0]}},
    }
    res = comfy.run(prompt, expect_success=False)
    msg = res.error["exception_message"]
    assert "Crop For Inpaint (Continuity)" in msg and "input 'mask'" in msg and "32x32" in msg


def test_interrupt_is_honoured(comfy):
    import comfy.model_management as mm
    h, w = 64, 64
    _save_input(comfy, "fix_int.png", _frame(h, w, 4))
    _mask_png(comfy, "fix_int_mask.png", h, w, (16, 16, 48, 48))
    prompt = _graph("fix_int.png", "fix_int_mask.png", steps=200, target=128)
    timer = threading.Timer(1.0, mm.interrupt_current_processing, args=(True,))
    timer.start()
    try:
        res = comfy.run(prompt, expect_success=False)
    finally:
        timer.cancel()
        mm.interrupt_current_processing(False)
    assert not res.success
    events = [e for e, _ in res.messages]
    assert "execution_interrupted" in events
    # the next run is fine
    assert comfy.run(_graph("fix_int.png", "fix_int_mask.png", steps=2)).success


def _face_fix_graph(img_name, *, seed=7, which="all", backend="mediapipe"):
    return {
        "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "photo of a face"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": ""}},
        "i": {"class_type": "LoadImage", "inputs": {"image": img_name}},
        "f": {"class_type": "ContinuityFaceModelLoader",
              "inputs": {"backend": backend, "parser": "auto", "embedder": "auto", "device": "cpu"}},
        "x": {"class_type": "ContinuityFaceFix",
              "inputs": {"face_model": ["f", 0], "image": ["i", 0], "model": ["m", 0], "positive": ["p", 0],
                         "negative": ["n", 0], "vae": ["m", 2], "which": which, "index": 0,
                         "regions": "face, hair", "grow": 5.0, "min_face": 16, "context": 1.5, "min_size": 32,
                         "target_size": 64, "padding": "edge", "seed": seed, "steps": 2, "cfg": 4.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise_1": 1.0, "denoise_2": 0.4,
                         "feather": 4.5, "colour_match": True}},
        "o": {"class_type": "PreviewImage", "inputs": {"images": ["x", 0]}},
    }


def test_face_fix_all_faces_end_to_end(comfy, faces_dir, artifacts_dir):
    img = Image.open(faces_dir / "couple.jpg").convert("RGB")
    img = img.resize((img.width // 4, img.height // 4), Image.LANCZOS)
    img.save(comfy.base / "input" / "fix_couple.png")
    src = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)
    res = comfy.run(_face_fix_graph("fix_couple.png"))
    out, mask, count = res.value("x", 0), res.value("x", 1), res.value("x", 2)
    assert tuple(out.shape) == (1, img.height, img.width, 3)
    assert tuple(mask.shape) == (1, img.height, img.width)
    assert count >= 1
    outside = mask[0] == 0
    assert bool(outside.any()) and torch.equal(out[0][outside], src[outside]), "outside the face masks: untouched"
    assert float((out[0] - src).abs()[~outside].max()) > 0.01, "the faces were re-drawn"
    again = comfy.run(_face_fix_graph("fix_couple.png")).value("x", 0)
    assert torch.equal(out, again), "deterministic for a seed"
    one = comfy.run(_face_fix_graph("fix_couple.png", which="largest"))
    assert one.value("x", 2) == 1 and one.value("x", 2) <= count
    Image.fromarray((out[0].numpy() * 255).round().astype(np.uint8)).save(artifacts_dir / "fix_face_fix_couple.png")


def test_face_fix_passes_faceless_images_through(comfy):
    arr = _frame(96, 128, 9)
    _save_input(comfy, "fix_noface.png", arr)
    res = comfy.run(_face_fix_graph("fix_noface.png", backend="dlib"))
    assert res.value("x", 2) == 0
    assert torch.equal(res.value("x", 0)[0], torch.from_numpy(arr.astype(np.float32) / 255.0))
    assert float(res.value("x", 1).max()) == 0.0


def test_batches_through_crop_two_pass_and_paste(comfy):
    h, w = 72, 104
    img = _frame(h, w, 5)
    _save_input(comfy, "fix_batch.png", img)
    _mask_png(comfy, "fix_batch_mask.png", h, w, (0, 0, 30, 24))      # top-left corner
    prompt = _graph("fix_batch.png", "fix_batch_mask.png", steps=2)
    prompt["r"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["i", 0], "amount": 3}}
    prompt["c"]["inputs"]["image"] = ["r", 0]
    res = comfy.run(prompt)
    assert tuple(res.value("c", 0).shape) == (3, 64, 64, 3)
    assert len(res.value("c", 2)) == 3
    out = res.value("s")
    assert tuple(out.shape) == (3, h, w, 3)
    src = torch.from_numpy(img.astype(np.float32) / 255.0)
    assert torch.equal(out[:, 24:, :], src[None, 24:, :].expand(3, -1, -1, -1))
    # each image of the batch got its own noise (batch index), so the fixes differ
    assert not torch.equal(out[0], out[1])


def test_bad_widget_values_are_refused_before_running(comfy):
    g = _face_fix_graph("fix_noface.png")
    g["x"]["inputs"]["regions"] = "face, tail"
    ok, _, _, node_errors = comfy.validate(g)
    assert not ok and "input 'regions'" in str(node_errors) and "tail" in str(node_errors)
    g2 = _graph("fix_sq.png", "fix_sq_mask.png")
    g2["c"]["inputs"]["target_size"] = 100
    ok, _, _, node_errors = comfy.validate(g2)
    assert not ok and "input 'target_size'" in str(node_errors)


def test_face_fix_batch_uses_a_seed_per_face(comfy, faces_dir):
    img = Image.open(faces_dir / "img2.jpg").convert("RGB")
    img = img.resize((img.width // 6, img.height // 6), Image.LANCZOS)
    img.save(comfy.base / "input" / "fix_batch_face.png")
    g = _face_fix_graph("fix_batch_face.png", which="largest")
    g["r"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["i", 0], "amount": 2}}
    g["x"]["inputs"]["image"] = ["r", 0]
    res = comfy.run(g)
    out, mask, count = res.value("x", 0), res.value("x", 1), res.value("x", 2)
    assert tuple(out.shape) == (2, img.height, img.width, 3) and count == 2
    assert torch.equal(mask[0], mask[1]), "same image, same face mask"
    inside = mask[0] > 0
    assert not torch.equal(out[0][inside], out[1][inside]), "face 0 used seed, face 1 seed + 1"
    src = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)
    assert torch.equal(out[1][~inside], src[~inside])


def test_face_fix_equals_the_chain_of_nodes_with_the_same_settings(comfy, faces_dir):
    """Face Fix = Face Region Mask -> Crop For Inpaint -> Two-Pass Inpaint -> Paste Back, with the same
    settings (one face: the chain's mask covers the faces it chose together)."""
    img = Image.open(faces_dir / "img2.jpg").convert("RGB")
    img = img.resize((img.width // 6, img.height // 6), Image.LANCZOS)
    img.save(comfy.base / "input" / "fix_equiv.png")
    g = _face_fix_graph("fix_equiv.png", which="largest")
    regions = {r: r in ("skin", "brows", "eyes", "nose", "mouth", "hair")
               for r in ("skin", "brows", "eyes", "nose", "mouth", "ears", "hair", "beard", "neck", "glasses", "hat")}
    g["rm"] = {"class_type": "ContinuityFaceRegionMask",
               "inputs": {"face_model": ["f", 0], "images": ["i", 0], "which": "largest", "index": 0, **regions,
                          "grow": 5.0, "grow_unit": "percent", "feather_px": 0.0, "fill_holes": True, "min_face": 16,
                          "if_no_face": "empty mask"}}
    g["c"] = {"class_type": "ContinuityCropForInpaint",
              "inputs": {"image": ["i", 0], "mask": ["rm", 0], "context": 1.5, "min_size": 32, "target_size": 64,
                         "padding": "edge"}}
    g["t"] = {"class_type": "ContinuityTwoPassInpaint",
              "inputs": {"model": ["m", 0], "positive": ["p", 0], "negative": ["n", 0], "vae": ["m", 2],
                         "image": ["c", 0], "mask": ["c", 1], "seed": 7, "steps": 2, "cfg": 4.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise_1": 1.0, "denoise_2": 0.4}}
    g["s"] = {"class_type": "ContinuityPasteBack",
              "inputs": {"stitch": ["c", 2], "image": ["t", 0], "feather": 4.5, "colour_match": True}}
    g["o2"] = {"class_type": "PreviewImage", "inputs": {"images": ["s", 0]}}
    res = comfy.run(g)
    assert res.value("x", 2) == 1
    assert torch.equal(res.value("x", 1), res.value("rm", 0)), "the same face mask"
    fixed, chained = res.value("x", 0), res.value("s", 0)
    assert float((fixed - torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)).abs().max()) > 0.01
    assert torch.equal(fixed, chained), float((fixed - chained).abs().max())
