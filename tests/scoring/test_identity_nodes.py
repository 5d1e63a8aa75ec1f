"""One identity measure: the same face and the same reference portraits give the same number in
Face Similarity, Face Fix's report (which = character), Dataset Audit (identity against a character)
and the training plan's evaluation and refine step (continuity.character.refine.score_images).

Photos: assets/faces (DeepFace unit-test images, MIT, Copyright (c) 2019 Sefik Ilkin Serengil).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from continuity.character import save_profile
from continuity.faces import mediapipe_available

REFS = ("img1.jpg", "img2.jpg", "img5.jpg")
CANDIDATE = "img4.jpg"          # the same person


def _photo(faces_dir, name, height):
    img = Image.open(faces_dir / name).convert("RGB")
    return np.asarray(img.resize((round(img.width * height / img.height), height), Image.LANCZOS))


@pytest.mark.comfy
@pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")
def test_the_same_number_in_every_node(comfy, faces_dir):
    root = comfy.base / "output" / "continuity" / "characters"
    char = save_profile(str(root), "one_measure",
                        references=[_photo(faces_dir, f, 400).astype(np.float32) / 255 for f in REFS])
    folder = comfy.base / "input" / "one_measure"
    folder.mkdir(parents=True, exist_ok=True)
    cand = _photo(faces_dir, CANDIDATE, 320)
    Image.fromarray(cand).save(folder / "cand.png")
    g = {
        "fm": {"class_type": "ContinuityFaceModelLoader",
               "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "dlib", "device": "cpu"}},
        "c": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "one_measure", "revision": 0}},
        "l": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": "one_measure", "mode": "batch", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "fs": {"class_type": "ContinuityFaceSimilarity",
               "inputs": {"candidates": ["l", 0], "model": "dlib", "face_policy": "largest", "set_name": "s",
                          "face_model": ["fm", 0], "character": ["c", 0]}},
        "a": {"class_type": "ContinuityDatasetAudit",
              "inputs": {"images": ["l", 0], "identity_model": "dlib", "min_side": 64, "min_count": 1,
                         "yaw_threshold": 20.0, "pitch_threshold": 25.0, "use_person_mask": False,
                         "face_model": ["fm", 0], "character": ["c", 0]}},
        "tm": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["tm", 1], "text": "a face"}},
        "x": {"class_type": "ContinuityFaceFix",
              "inputs": {"face_model": ["fm", 0], "image": ["l", 0], "model": ["tm", 0], "positive": ["p", 0],
                         "negative": ["p", 0], "vae": ["tm", 2], "which": "character", "index": 0,
                         "regions": "face", "grow": 5.0, "min_face": 16, "context": 1.5, "min_size": 32,
                         "target_size": 64, "padding": "edge", "seed": 0, "steps": 1, "cfg": 4.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise_1": 0.5, "denoise_2": 0.0,
                         "feather": 4.5, "colour_match": False, "character": ["c", 0], "lora_strength": 0.0}},
        "o": {"class_type": "PreviewImage", "inputs": {"images": ["x", 0]}},
        "s1": {"class_type": "PreviewAny", "inputs": {"source": ["fs", 1]}},
        "s2": {"class_type": "PreviewAny", "inputs": {"source": ["a", 1]}},
    }
    res = comfy.run(g)
    similarity = res.value("fs", 0).models["dlib"].mean[0]
    assert similarity is not None and similarity > 0.9
    audit = json.loads(res.value("a", 1))["images"][0]["identity"]
    assert audit == pytest.approx(similarity, abs=6e-5)             # the audit rounds to 4 decimals
    report = res.value("x", 3)
    shown = re.search(r"character 'one_measure' is face #0 of 1 \(.*?\), similarity ([0-9.]+)", report)
    assert shown, report
    assert shown.group(1) == f"{similarity:.3f}"
    before = re.search(r"image 0: similarity ([0-9.]+) before the fix", report)
    assert before and before.group(1) == f"{similarity:.3f}"
    # the plan's evaluation and refine step score with continuity.character.refine.score_images
    from continuity import faces as cf
    from continuity.character.refine import score_images
    from continuity.faces import embedders
    plan = score_images(char, [cand.astype(np.float32) / 255], detector=cf.load_analyzer("mediapipe").detector,
                        embedder=embedders.get_embedder("dlib"))
    assert plan[0][0] == pytest.approx(similarity, abs=1e-6)
