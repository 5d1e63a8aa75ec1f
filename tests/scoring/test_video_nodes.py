"""Video nodes and the CLIP/DINO plumbing inside ComfyUI (in-process), with random-weight encoders."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfy


def _folder_batch(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "batch", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def _write_moving_frames(d, n=5, shift=4, size=(120, 160)):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    import cv2
    tex = cv2.GaussianBlur((rng.random((40, 40, 3)) * 255).astype(np.uint8), (5, 5), 1.0)
    for i in range(n):
        f = np.full(size + (3,), 80, np.uint8)
        f[40:80, 20 + i * shift:60 + i * shift] = tex
        Image.fromarray(f).save(d / f"frame{i:03d}.png")


def test_motion_intensity_graph(comfy, artifacts_dir):
    _write_moving_frames(comfy.base / "input" / "mv_frames")
    prompt = {
        "1": _folder_batch("mv_frames"),
        "2": {"class_type": "ContinuityMotionIntensity",
              "inputs": {"frames": ["1", 0], "method": "dis", "cap": 20.0, "max_side": 0, "weight_scale": "1 to 1.5"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}},
        "4": {"class_type": "ContinuityMotionIntensity",
              "inputs": {"frames": ["1", 0], "method": "farneback", "cap": 2.0, "max_side": 64,
                         "weight_scale": "0 to 1"}},
        "5": {"class_type": "MaskPreview", "inputs": {"mask": ["4", 2]}},
    }
    res = comfy.run(prompt)
    intensity, raw, wmap, mag, text = (res.value("2", i) for i in range(5))
    assert 2.5 < intensity < 5.5 and intensity == raw
    assert tuple(wmap.shape) == (5, 120, 160) and float(wmap.min()) >= 1.0 and float(wmap.max()) <= 1.5
    assert tuple(mag.shape) == (4, 120, 160, 3)
    assert "4 frame pairs" in text
    assert res.value("4", 0) == 2.0 and res.value("4", 1) > 2.0          # capped
    w01 = res.value("4", 2)
    assert float(w01.min()) >= 0.0 and float(w01.max()) <= 1.0 and float(w01.max()) > 0.5
    Image.fromarray((mag[1].numpy() * 255).astype(np.uint8)).save(artifacts_dir / "motion_magnitude.png")


def test_motion_intensity_errors(comfy):
    d = comfy.base / "input" / "mv_one"
    _write_moving_frames(d, n=1)
    prompt = {"1": _folder_batch("mv_one"),
              "2": {"class_type": "ContinuityMotionIntensity",
                    "inputs": {"frames": ["1", 0], "method": "farneback", "cap": 20.0, "max_side": 0,
                               "weight_scale": "1 to 1.5"}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}}}
    res = comfy.run(prompt, expect_success=False)
    assert "Motion Intensity (Continuity), input 'frames': motion needs at least 2 frames" in res.error["exception_message"]
    _write_moving_frames(comfy.base / "input" / "mv_two", n=2)
    prompt["1"] = _folder_batch("mv_two")
    prompt["2"]["inputs"]["method"] = "raft_small"
    res = comfy.run(prompt, expect_success=False)
    msg = res.error["exception_message"]
    assert "input 'method'" in msg and "raft_small_C_T_V2-01064c6d.pth" in msg and "optical_flow" in msg


def test_identity_over_frames_graph(comfy, faces_dir, artifacts_dir):
    fr = comfy.base / "input" / "id_frames"
    rf = comfy.base / "input" / "id_refs"
    fr.mkdir(parents=True, exist_ok=True)
    rf.mkdir(parents=True, exist_ok=True)
    size = (400, 400)
    for i, n in enumerate(["img2.jpg", "img4.jpg", "img3.jpg"]):
        Image.open(faces_dir / n).convert("RGB").resize(size).save(fr / f"f{i}.png")
    Image.fromarray(np.full(size + (3,), 50, np.uint8)).save(fr / "f3.png")
    Image.open(faces_dir / "img1.jpg").convert("RGB").resize(size).save(rf / "ref.png")
    prompt = {"1": _folder_batch("id_frames"), "2": _folder_batch("id_refs"),
              "3": {"class_type": "ContinuityIdentityOverFrames",
                    "inputs": {"frames": ["1", 0], "references": ["2", 0], "model": "dlib", "face_policy": "largest"}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 3]}}}
    res = comfy.run(prompt)
    loss, mean, missing, plot, scores, text = (res.value("3", i) for i in range(6))
    per = scores.models["dlib"].mean
    assert missing == 1 and per[3] is None
    assert mean == pytest.approx(np.mean(per[:3]), abs=1e-5) and loss == pytest.approx(1 - mean, abs=1e-6)
    assert per[0] > 0.93 and per[1] > 0.93 and per[2] < 0.93
    assert "no face in frames [3]" in text
    assert plot.shape[-1] == 3 and float(plot.std()) > 0.05
    Image.fromarray((plot[0].numpy() * 255).astype(np.uint8)).save(artifacts_dir / "identity_over_frames.png")
    assert len(res.ui["3"]["images"]) == 1


def _tiny_vision(tmp_path, kind, proj_dim=64):
    import comfy.clip_vision
    import tiny_models
    if kind == "clip":
        cfg = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32,
               "image_size": 56, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64,
               "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
               "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": proj_dim,
               "torch_dtype": "float32"}
    else:
        cfg = json.loads(open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "image_encoders",
                                           "dino2_large.json")).read())
        cfg.update(hidden_size=32, num_attention_heads=2, num_hidden_layers=2)   # position table fixed at 518 px
    p = tmp_path / f"{kind}.json"
    p.write_text(json.dumps(cfg))
    cv = comfy.clip_vision.ClipVisionModel(str(p))
    tiny_models._fill(cv.model, 7, scale=0.05)
    return cv


def test_clip_i_clip_t_and_dino_plumbing_with_random_weights(comfy, tmp_path):
    import tiny_models
    scoring = __import__(comfy.pack_module.__name__ + ".nodes.scoring", fromlist=["x"])
    cls = comfy.node_class("ContinuityClipSimilarity")
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((1, 64, 80, 3)).astype(np.float32))
    b = torch.from_numpy(rng.random((1, 96, 64, 3)).astype(np.float32))
    cv = _tiny_vision(tmp_path, "clip")
    clip = tiny_models.tiny_clip(0)
    img, txt = scoring.clip_similarity(cv, [a[0]], [a[0], b[0]], clip, "a portrait of a woman")
    assert img.shape == (2,) and txt.shape == (2,)
    assert float(img[0]) == pytest.approx(1.0, abs=1e-5)           # an image is identical to itself
    assert float(img[1]) < 0.9999
    assert torch.all(txt.abs() <= 1.0 + 1e-5)
    out = cls.execute([cv], [a], [a, b], ["a portrait of a woman"], clip=[clip])
    assert out.args[0] == pytest.approx(float(img.mean()), abs=1e-5)
    assert out.args[1] == pytest.approx(float(txt.mean()), abs=1e-5)
    # a text encoder that does not match the vision model is refused with a clear message
    cv_other = _tiny_vision(tmp_path, "clip", proj_dim=48)
    with pytest.raises(ValueError, match="CLIP / DINO Similarity.*'clip'.*dimensions"):
        cls.execute([cv_other], [a], [b], ["x"], clip=[clip])
    # DINOv2 through the same path (DINO similarity to real images); no prompt: no CLIP-T
    dino = _tiny_vision(tmp_path, "dino")
    out = cls.execute([dino], [a, b], [a], [""], clip=None)
    d_img, d_txt = scoring.clip_similarity(dino, [a[0], b[0]], [a[0]])
    assert d_txt is None and out.args[1] == 0.0
    assert out.args[0] == pytest.approx(float(d_img.mean()), abs=1e-5)
