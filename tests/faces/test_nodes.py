"""Face nodes in a real ComfyUI graph (in-process): Load Face Model, Detect Faces, Face Region Mask.

Photos: assets/faces (DeepFace unit-test images, MIT, Copyright (c) 2019 Sefik Ilkin Serengil)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from continuity.faces import mediapipe_available

pytestmark = pytest.mark.skipif(not mediapipe_available(), reason="mediapipe is not installed")

REGIONS = dict(skin=True, brows=True, eyes=True, nose=True, mouth=True, ears=True, hair=True, beard=True,
               neck=False, glasses=False, hat=False)


@pytest.fixture(scope="module")
def inputs(comfy, faces_dir):
    inp = comfy.base / "input"
    for n in ("img5", "img25", "couple"):
        shutil.copy(faces_dir / f"{n}.jpg", inp / f"{n}.jpg")
    Image.fromarray(np.full((200, 240, 3), 120, np.uint8)).save(inp / "blank.png")
    return inp


def mask_node(images, **kw):
    inputs = {"face_model": ["fm", 0], "images": images, "which": "largest", "index": 0, **REGIONS,
              "grow": 0.0, "grow_unit": "px", "feather_px": 0.0, "fill_holes": True, "min_face": 32,
              "if_no_face": "empty mask"}
    inputs.update(kw)
    return {"class_type": "ContinuityFaceRegionMask", "inputs": inputs}


def graph(*loads, backend="mediapipe", **kw):
    g = {"fm": {"class_type": "ContinuityFaceModelLoader",
                "inputs": {"backend": backend, "parser": "auto", "embedder": "auto", "device": "cpu"}}}
    for i, name in enumerate(loads):
        g[f"l{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    src = ["l0", 0]
    if len(loads) > 1:
        g["b"] = {"class_type": "ImageBatch", "inputs": {"image1": ["l0", 0], "image2": ["l1", 0]}}
        src = ["b", 0]
    g["m"] = mask_node(src, **kw)
    g["o"] = {"class_type": "PreviewImage", "inputs": {"images": ["m", 1]}}
    return g


def test_mask_batch_keeps_order(comfy, inputs):
    a = comfy.run(graph("img5.jpg", "img25.jpg"))
    b = comfy.run(graph("img25.jpg", "img5.jpg"))
    ma, mb = a.value("m", 0), b.value("m", 0)
    assert tuple(ma.shape) == (2, 512, 330) and ma.dtype.is_floating_point
    assert a.value("m", 2) == 2 and "faces per image: 1, 1" in a.value("m", 3)
    assert tuple(a.value("m", 1).shape) == (2, 512, 330, 3)
    assert float(ma[0].sum()) > 1000 and float(ma[1].sum()) > 1000
    # img5 is first in a and (resized to img25's size) second in b: the masks follow the images
    assert not bool((ma[0] == ma[1]).all())
    first_a = ma[0].numpy() > 0.5
    second_b = np.asarray(Image.fromarray(mb[1].numpy().astype(np.uint8) * 255).resize((330, 512))) > 127
    assert (first_a & second_b).sum() / (first_a | second_b).sum() > 0.6


def test_detect_then_mask_reuses_faces(comfy, inputs):
    g = graph("couple.jpg", which="all")
    g["d"] = {"class_type": "ContinuityFaceDetect",
              "inputs": {"face_model": ["fm", 0], "images": ["l0", 0], "min_face": 32}}
    g["m"]["inputs"]["faces"] = ["d", 0]
    g["o2"] = {"class_type": "PreviewImage", "inputs": {"images": ["d", 1]}}
    res = comfy.run(g)
    faces = res.value("d", 0)
    assert res.value("d", 2) == 2 and len(faces.faces) == 1 and all(f.image_index == 0 for f in faces.faces[0])
    assert res.value("m", 2) == 2
    direct = comfy.run(graph("couple.jpg", which="all")).value("m", 0)
    assert float((res.value("m", 0) - direct).abs().max()) == 0.0


def test_no_face_empty_or_error(comfy, inputs):
    res = comfy.run(graph("blank.png"))
    assert res.value("m", 2) == 0 and float(res.value("m", 0).max()) == 0.0
    assert tuple(res.value("m", 0).shape) == (1, 200, 240)
    bad = comfy.run(graph("blank.png", if_no_face="error"), expect_success=False)
    assert not bad.success
    assert "[Continuity] Face Region Mask (Continuity), input 'images': no face found in image 0" in \
        bad.error["exception_message"]


def test_unavailable_regions_are_named(comfy, inputs):
    res = comfy.run(graph("img25.jpg", glasses=True, hat=True))
    assert "cannot give: glasses, hat" in res.value("m", 3)
    res = comfy.run(graph("img25.jpg", **{k: False for k in REGIONS}), expect_success=False)
    assert "input 'skin': no region is switched on" in res.error["exception_message"]


def test_face_index_out_of_range_names_input(comfy, inputs):
    res = comfy.run(graph("img25.jpg", which="index", index=3), expect_success=False)
    assert "input 'index': face index 3 asked for, but 1 face(s) were found" in res.error["exception_message"]


def test_unknown_backend_is_refused(comfy, inputs):
    ok, err, _, node_errors = comfy.validate(graph("img25.jpg", backend="nope"))
    if ok:  # this ComfyUI does not check V3 combo values: the node itself refuses it
        res = comfy.run(graph("img25.jpg", backend="nope"), expect_success=False)
        assert "Load Face Model (Continuity), input 'backend': unknown face backend 'nope'" in \
            res.error["exception_message"]
    else:
        assert "fm" in node_errors


def test_dlib_backend_graph(comfy, inputs):
    res = comfy.run(graph("img5.jpg", backend="dlib"))
    assert res.value("m", 2) == 1 and float(res.value("m", 0).sum()) > 1000


def test_pro_backends_in_a_graph(comfy, inputs, monkeypatch):
    """Random-weight BiSeNet and SCRFD graph in the ComfyUI model folders, through the nodes."""
    import os
    import torch
    from pro_models import scrfd_graph
    from continuity.faces import facexlib_backend as fx
    monkeypatch.setenv("CONTINUITY_OFFLINE", "1")
    models = comfy.base / "models"
    g = graph("img25.jpg", glasses=True, hat=True)
    g["fm"]["inputs"]["parser"] = "bisenet"
    res = comfy.run(g, expect_success=False)        # no weights yet: the message names file and folder
    assert "parsing_bisenet.pth" in res.error["exception_message"]
    assert os.path.join("models", "facexlib") in res.error["exception_message"]
    (models / "facexlib").mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(fx.build_bisenet(19).state_dict(), models / "facexlib" / fx.BISENET_FILE)
    res = comfy.run(g)
    assert "cannot give" not in res.value("m", 3) and res.value("m", 2) == 1
    pytest.importorskip("onnxruntime")
    scrfd_graph(str(models / "insightface" / "models" / "buffalo_l" / "det_10g.onnx"))
    d = {"fm": {"class_type": "ContinuityFaceModelLoader",
                "inputs": {"backend": "insightface", "parser": "auto", "embedder": "auto", "device": "cpu"}},
         "l": {"class_type": "LoadImage", "inputs": {"image": "img25.jpg"}},
         "d": {"class_type": "ContinuityFaceDetect", "inputs": {"face_model": ["fm", 0], "images": ["l", 0],
                                                                 "min_face": 0}},
         "o": {"class_type": "PreviewImage", "inputs": {"images": ["d", 1]}}}
    res = comfy.run(d)
    assert res.value("d", 2) > 0 and all(f.backend == "insightface" for f in res.value("d", 0).faces[0])
