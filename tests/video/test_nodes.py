"""Cast and shot nodes as whole graphs in the in-process ComfyUI, with the tiny random-weight
models: Load/Make Cast, Face Tracks, Video Face Fix, Track Crop Sequence + Paste Track Sequence,
Flicker Report, on a short synthetic shot of two real faces (tests/support/synthetic.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from support.synthetic import PEOPLE, SAME_AS, Actor, head_tile, load, render

pytestmark = pytest.mark.comfy
N, H, W = 5, 200, 300


def _shot(faces_dir):
    a = Actor("a", head_tile(faces_dir, PEOPLE["a"], 120), [(80 + 3 * i, 100, 110) for i in range(N)])
    d = Actor("d", head_tile(faces_dir, PEOPLE["d"], 120), [(220 - 2 * i, 95, 110) for i in range(N)])
    return render([a, d], N, (H, W))


@pytest.fixture(scope="module")
def shot_folder(comfy, faces_dir):
    shot = _shot(faces_dir)
    d = comfy.base / "input" / "vid_shot"
    d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(shot.frames):
        Image.fromarray(f).save(d / f"frame{i:03d}.png")
    import importlib
    # through the pack as ComfyUI loaded it, so the profile is signed with that server's key
    charlib = importlib.import_module(comfy.pack_module.__name__ + ".continuity.character")
    root = str(comfy.base / "output" / "continuity" / "characters")
    for name, person in (("vid_a", "a"), ("vid_d", "d")):
        refs = [load(faces_dir, SAME_AS[person], 300).astype(np.float32) / 255,
                load(faces_dir, PEOPLE[person], 300).astype(np.float32) / 255]
        charlib.save_profile(root, name, references=refs, trigger_word=f"{name}_tw", class_phrase="person")
    return "vid_shot", shot


def _base(folder):
    return {
        "fr": {"class_type": "ContinuityLoadImageFolder",
               "inputs": {"folder": folder, "mode": "batch", "recursive": False, "start": 0, "limit": 0,
                          "caption_extension": ".txt"}},
        "fm": {"class_type": "ContinuityFaceModelLoader",
               "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
        "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": ""}},
    }


TRACKING = {"min_face": 16, "max_gap": 3, "samples": 4, "cut_threshold": 0.35}
CROP = {"regions": "face, hair", "grow": 5.0, "context": 1.5, "min_size": 32, "target_size": 64, "smoothing": 2.0,
        "padding": "edge"}


def _fix(cast_node, which="cast", blend=0.0, seed=3):
    return {"class_type": "ContinuityVideoFaceFix",
            "inputs": {"face_model": ["fm", 0], "frames": ["fr", 0], "model": ["m", 0], "negative": ["n", 0],
                       "vae": ["m", 2], "clip": ["m", 1], "prompt": "portrait photo", "lora_strength": 0.8,
                       "which": which, **TRACKING, **CROP, "seed": seed, "steps": 1, "cfg": 4.0,
                       "sampler_name": "euler", "scheduler": "normal", "denoise_1": 1.0, "denoise_2": 0.4,
                       "temporal_blend": blend, "feather": 4.5, "colour_match": False,
                       **({"cast": [cast_node, 0]} if cast_node else {})}}


def _frames(shot):
    return torch.from_numpy(shot.frames.astype(np.float32) / 255.0)


def _side(mask, x):
    """Columns left or right of the seam between the two actors at x."""
    m = torch.zeros_like(mask, dtype=torch.bool)
    m[..., :x] = True
    return m


def test_cast_tracks_and_video_face_fix_graph(comfy, shot_folder, artifacts_dir):
    folder, shot = shot_folder
    g = _base(folder)
    g["cast"] = {"class_type": "ContinuityLoadCast", "inputs": {"names": "vid_a, vid_d"}}
    g["tr"] = {"class_type": "ContinuityFaceTracks",
               "inputs": {"frames": ["fr", 0], "face_model": ["fm", 0], "cast": ["cast", 0], **TRACKING}}
    g["fx"] = _fix("cast")
    g["tp"] = {"class_type": "PreviewImage", "inputs": {"images": ["tr", 1]}}
    g["fl"] = {"class_type": "ContinuityFlickerReport",
               "inputs": {"before": ["fr", 0], "after": ["fx", 0], "tracks": ["fx", 2], "face_model": ["fm", 0],
                          "cast": ["cast", 0], "method": "farneback", "identity_stride": 1}}
    g["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["fx", 0]}}
    g["op"] = {"class_type": "PreviewImage", "inputs": {"images": ["fl", 1]}}
    res = comfy.run(g)
    ts = res.value("tr", 0)
    assert len(ts.tracks) == 2 and sorted(t.member_name for t in ts.tracks) == ["vid_a", "vid_d"]
    left = min(ts.tracks, key=lambda t: t.observed[0].center[0])
    assert left.member_name == "vid_a"
    report = res.value("fx", 3)
    assert "vid_a_tw" in report and "vid_d_tw" in report and f"face-frames fixed: {2 * N}" in report
    out, masks = res.value("fx", 0), res.value("fx", 1)
    src = _frames(shot)
    assert out.shape == src.shape and masks.shape == src.shape[:3]
    outside = masks == 0
    assert torch.equal(out[outside], src[outside]), "outside the masks every frame is bit-exact"
    assert float((out - src).abs().max()) > 0.01
    text, plot, doc = res.value("fl", 0), res.value("fl", 1), json.loads(res.value("fl", 2))
    assert "vid_a" in text and "vid_d" in text and plot.shape[-1] == 3
    tr = {t["member"]: t for t in doc["tracks"]}
    assert tr["vid_a"]["change_before"]["n"] == N - 1 and tr["vid_a"]["identity_before"]["n"] == N
    Image.fromarray((plot[0].numpy() * 255).astype(np.uint8)).save(artifacts_dir / "video_flicker_plot.png")
    Image.fromarray((out[N // 2].numpy() * 255).astype(np.uint8)).save(artifacts_dir / "video_face_fix_frame.png")


def test_cast_of_one_leaves_the_unknown_face_untouched(comfy, shot_folder):
    folder, shot = shot_folder
    g = _base(folder)
    g["ca"] = {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "vid_a", "revision": 0}}
    g["cast"] = {"class_type": "ContinuityMakeCast", "inputs": {"character_1": ["ca", 0]}}
    g["fx"] = _fix("cast", blend=0.5)
    g["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["fx", 0]}}
    res = comfy.run(g)
    out, report = res.value("fx", 0), res.value("fx", 3)
    src = _frames(shot)
    assert "unknown: left alone" in report and f"face-frames fixed: {N}" in report
    right = torch.zeros(src.shape[:3], dtype=torch.bool)
    right[..., 160:] = True                              # d's side of the frame
    assert torch.equal(out[right], src[right])
    assert not torch.equal(out[~right], src[~right])


def test_crop_sequence_paste_roundtrip_is_bit_exact(comfy, shot_folder):
    folder, shot = shot_folder
    g = _base(folder)
    g["tr"] = {"class_type": "ContinuityFaceTracks",
               "inputs": {"frames": ["fr", 0], "face_model": ["fm", 0], **TRACKING}}
    g["cs"] = {"class_type": "ContinuityTrackCropSequence",
               "inputs": {"frames": ["fr", 0], "tracks": ["tr", 0], "face_model": ["fm", 0], "which": "track 1",
                          **CROP}}
    g["inv"] = {"class_type": "ImageInvert", "inputs": {"image": ["cs", 0]}}
    g["same"] = {"class_type": "ContinuityPasteTrackSequence",
                 "inputs": {"frames": ["fr", 0], "stitch": ["cs", 2], "crops": ["cs", 0], "feather": 4.5,
                            "colour_match": False}}
    g["diff"] = {"class_type": "ContinuityPasteTrackSequence",
                 "inputs": {"frames": ["fr", 0], "stitch": ["cs", 2], "crops": ["inv", 0], "feather": 4.5,
                            "colour_match": False}}
    g["tp"] = {"class_type": "PreviewImage", "inputs": {"images": ["tr", 1]}}
    g["o1"] = {"class_type": "PreviewImage", "inputs": {"images": ["same", 0]}}
    g["o2"] = {"class_type": "PreviewImage", "inputs": {"images": ["diff", 0]}}
    res = comfy.run(g)
    crops, masks, stitch = res.value("cs", 0), res.value("cs", 1), res.value("cs", 2)
    assert crops.shape == (N, 64, 64, 3) and masks.shape == (N, 64, 64) and len({b.side for b in stitch.boxes}) == 1
    src = _frames(shot)
    assert torch.equal(res.value("same", 0), src)            # unchanged crops: the frames as they were
    diff = res.value("diff", 0)
    full = torch.stack([torch.from_numpy(stitch.full_mask(k)) for k in range(len(stitch))])
    assert torch.equal(diff[full == 0], src[full == 0]) and not torch.equal(diff, src)


def test_errors_name_node_and_input(comfy, shot_folder):
    folder, _ = shot_folder
    g = _base(folder)
    g["fx"] = _fix(None, which="cast")
    g["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["fx", 0]}}
    res = comfy.run(g, expect_success=False)
    msg = res.error["exception_message"]
    assert "Video Face Fix (Continuity)" in msg and "'cast'" in msg
    g = _base(folder)
    g["cast"] = {"class_type": "ContinuityLoadCast", "inputs": {"names": "../x"}}
    g["o"] = {"class_type": "PreviewAny", "inputs": {"source": ["cast", 1]}}
    ok, err, _, node_errors = comfy.validate(g)
    assert not ok and "names" in json.dumps(node_errors)


def test_face_region_mask_with_a_cast(comfy, shot_folder):
    folder, shot = shot_folder
    g = _base(folder)
    g["ca"] = {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "vid_d", "revision": 0}}
    g["cast"] = {"class_type": "ContinuityMakeCast", "inputs": {"character_1": ["ca", 0]}}
    regions = {"skin": True, "brows": True, "eyes": True, "nose": True, "mouth": True, "ears": False, "hair": False,
               "beard": False, "neck": False, "glasses": False, "hat": False}
    g["mk"] = {"class_type": "ContinuityFaceRegionMask",
               "inputs": {"face_model": ["fm", 0], "images": ["fr", 0], "which": "cast", "index": 0, **regions,
                          "grow": 0.0, "grow_unit": "px", "feather_px": 0.0, "fill_holes": True, "min_face": 16,
                          "if_no_face": "empty mask", "cast": ["cast", 0]}}
    g["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["mk", 1]}}
    res = comfy.run(g)
    mask, info = res.value("mk", 0), res.value("mk", 3)
    assert mask.shape == (N, H, W)
    assert float(mask[..., 160:].sum()) > 100 and float(mask[..., :150].sum()) == 0    # only d's face (right)
    assert "vid_d: face #" in info and "unknown, left alone" in info


def test_face_fix_with_a_cast(comfy, shot_folder):
    folder, shot = shot_folder
    g = _base(folder)
    g["fr"]["inputs"]["limit"] = 1
    g["cast"] = {"class_type": "ContinuityLoadCast", "inputs": {"names": "vid_d, vid_a"}}
    g["fx"] = {"class_type": "ContinuityFaceFix",
               "inputs": {"face_model": ["fm", 0], "image": ["fr", 0], "model": ["m", 0], "negative": ["n", 0],
                          "vae": ["m", 2], "clip": ["m", 1], "prompt": "portrait", "which": "cast", "index": 0,
                          "regions": "face", "grow": 5.0, "min_face": 16, "context": 1.5, "min_size": 32,
                          "target_size": 64, "padding": "edge", "seed": 1, "steps": 1, "cfg": 4.0,
                          "sampler_name": "euler", "scheduler": "normal", "denoise_1": 1.0, "denoise_2": 0.4,
                          "feather": 4.5, "colour_match": False, "keep_only_if_better": False,
                          "cast": ["cast", 0]}}
    g["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["fx", 0]}}
    res = comfy.run(g)
    out, mask, count, report = (res.value("fx", i) for i in range(4))
    src = _frames(shot)[:1]
    assert count == 2 and "vid_a_tw" in report and "vid_d_tw" in report
    assert "vid_a: face #" in report and "vid_d: face #" in report
    assert torch.equal(out[mask == 0], src[mask == 0]) and not torch.equal(out, src)
    assert float(mask[..., :150].sum()) > 0 and float(mask[..., 160:].sum()) > 0    # both people's faces
