"""Face Region Mask through the live ComfyUI server (/object_info, /prompt, /history, /ws).

Photo: assets/faces/img25.jpg (DeepFace unit-test images, MIT, Copyright (c) 2019 Sefik Ilkin Serengil)."""
import shutil

import numpy as np
import pytest
from PIL import Image

from continuity.faces import mediapipe_available

pytestmark = [pytest.mark.server,
              pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")]

REGIONS = dict(skin=True, brows=True, eyes=True, nose=True, mouth=True, ears=True, hair=True, beard=True,
               neck=False, glasses=False, hat=False)


def _graph(image, **kw):
    mask_inputs = {"face_model": ["fm", 0], "images": ["l", 0], "which": "largest", "index": 0, **REGIONS,
                   "grow": 4.0, "grow_unit": "px", "feather_px": 2.0, "fill_holes": True, "min_face": 32,
                   "if_no_face": "empty mask"}
    mask_inputs.update(kw)
    return {
        "fm": {"class_type": "ContinuityFaceModelLoader",
               "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
        "l": {"class_type": "LoadImage", "inputs": {"image": image}},
        "m": {"class_type": "ContinuityFaceRegionMask", "inputs": mask_inputs},
        "mi": {"class_type": "MaskToImage", "inputs": {"mask": ["m", 0]}},
        "s": {"class_type": "SaveImage", "inputs": {"images": ["mi", 0], "filename_prefix": "continuity_facemask"}},
        "p": {"class_type": "PreviewImage", "inputs": {"images": ["m", 1]}},
    }


def test_face_nodes_listed(server):
    info = server.get("/object_info")
    for node_id in ("ContinuityFaceModelLoader", "ContinuityFaceDetect", "ContinuityFaceRegionMask"):
        node = info[node_id]
        assert node["display_name"].endswith(" (Continuity)") and node["category"] == "Continuity/faces"
        for name, spec in {**node["input"]["required"], **node["input"].get("optional", {})}.items():
            assert "tooltip" in spec[1], (node_id, name)


def test_face_region_mask_live(server, faces_dir):
    shutil.copy(faces_dir / "img25.jpg", server.base / "input" / "img25.jpg")
    entry, events = server.ws_events(_graph("img25.jpg"))
    assert entry["status"]["status_str"] == "success"
    saved = entry["outputs"]["s"]["images"][0]
    mask = np.asarray(Image.open(server.base / "output" / saved["subfolder"] / saved["filename"]).convert("L"))
    assert mask.shape == (400, 400)
    on = mask > 127
    assert 0.05 < on.mean() < 0.6                 # a head, not the whole picture
    assert not on[:10, :10].any() and not on[:10, -10:].any()
    assert any(e["type"] == "executed" and e["data"]["node"] == "p" for e in events)


def test_no_face_error_is_reported_live(server):
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(server.base / "input" / "flat.png")
    entry = server.run(_graph("flat.png", if_no_face="error"), expect_success=False)
    msgs = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert msgs and "Face Region Mask (Continuity), input 'images': no face found" in msgs[0][1]["exception_message"]
    assert server.get("/system_stats")["system"]["comfyui_version"]
