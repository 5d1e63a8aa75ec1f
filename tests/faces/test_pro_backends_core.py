"""Pro face backends without downloads: BiSeNet (facexlib's structure) and an SCRFD-shaped ONNX graph,
both with random weights, run through the real loading and decoding code; and the offline messages."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from continuity.errors import MissingModelError
from continuity.faces import facexlib_backend as fx
from continuity.faces import get_detector, get_parser
from continuity.faces.masks import region_masks
from pro_models import scrfd_graph


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    monkeypatch.setenv("CONTINUITY_OFFLINE", "1")


@pytest.fixture(scope="module")
def bisenet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("facexlib")
    torch.manual_seed(0)
    net = fx.build_bisenet(19)
    torch.save(net.state_dict(), d / fx.BISENET_FILE)
    return str(d)


def test_bisenet_structure_matches_facexlib_weights(bisenet_dir):
    sd = torch.load(os.path.join(bisenet_dir, fx.BISENET_FILE), weights_only=True)
    # parameter names of facexlib's parsing_bisenet.pth
    for k in ("cp.resnet.conv1.weight", "cp.resnet.layer4.1.bn2.running_var", "cp.arm16.conv_atten.weight",
              "cp.conv_avg.conv.weight", "ffm.convblk.conv.weight", "ffm.conv2.weight", "conv_out.conv_out.weight",
              "conv_out16.conv.bn.weight", "conv_out32.conv_out.weight", "cp.resnet.layer2.0.downsample.0.weight"):
        assert k in sd, k
    assert tuple(sd["conv_out.conv_out.weight"].shape) == (19, 256, 1, 1)
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == \
        sum(p.numel() for p in fx.build_bisenet(19).parameters())
    bad = {k: v for k, v in sd.items() if not k.startswith("conv_out32")}
    with pytest.raises(RuntimeError):
        fx.build_bisenet(19).load_state_dict(bad, strict=True)


def test_bisenet_parser_with_random_weights(faces_dir, bisenet_dir):
    rgb = np.asarray(Image.open(faces_dir / "img25.jpg").convert("RGB"))
    parser = get_parser("bisenet", models_dir=bisenet_dir)
    assert get_parser("bisenet", models_dir=bisenet_dir) is parser            # cached
    faces = get_detector("dlib").detect(rgb)
    parts = parser.parse(rgb, faces[0])
    assert set(parts) == set(parser.regions)
    stack = np.stack([parts[r] for r in fx.REGION_CLASSES])
    assert stack.shape[1:] == rgb.shape[:2] and stack.max() <= 1
    assert stack.sum(0).max() <= 1                   # CelebAMask-HQ classes are a partition
    res = region_masks(rgb, faces, regions="face,glasses,hat", parser=parser)
    assert res.unavailable == () and res.mask.shape == rgb.shape[:2]
    lab, (x0, y0, x1, y1) = parser.labels(rgb, faces[0])
    assert lab.max() < 19 and x1 - x0 == lab.shape[1]


def test_bisenet_offline_message(tmp_path):
    with pytest.raises(MissingModelError) as e:
        fx.load_bisenet(str(tmp_path), "cpu")
    msg = str(e.value)
    assert "parsing_bisenet.pth" in msg and fx.BISENET_URL in msg and str(tmp_path) in msg
    assert "non-commercial" in msg and e.value.input == "parser"


def test_retinaface_offline_message(tmp_path):
    with pytest.raises(MissingModelError) as e:
        get_detector("retinaface", models_dir=str(tmp_path / "facexlib"))
    assert "detection_Resnet50_Final.pth" in str(e.value) and fx.RETINAFACE_URL in str(e.value)
    assert str(tmp_path / "facexlib") in str(e.value)


def test_retinaface_random_weights_load_and_decode(tmp_path):
    torch.manual_seed(0)
    net = fx.build_retinaface()
    sd = net.state_dict()
    for k in ("body.conv1.weight", "body.layer4.2.bn3.running_mean", "fpn.merge1.0.weight", "ssh3.conv7x7_3.1.bias",
              "ClassHead.2.conv1x1.weight", "BboxHead.0.conv1x1.bias", "LandmarkHead.1.conv1x1.weight"):
        assert k in sd, k                                     # facexlib's parameter names
    with torch.no_grad():                                     # only stride-32 priors are faces; no regression
        for heads in (net.BboxHead, net.LandmarkHead, net.ClassHead):
            for h in heads:
                h.conv1x1.weight.zero_()
                h.conv1x1.bias.zero_()
        for i, h in enumerate(net.ClassHead):
            h.conv1x1.bias.copy_(torch.tensor([10.0, -10.0] * 2 if i < 2 else [-10.0, 10.0] * 2))
    folder = tmp_path / "facexlib"
    folder.mkdir()
    # the released file was saved from DataParallel: 'module.' prefixes are accepted
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, folder / fx.RETINAFACE_FILE)
    det = get_detector("retinaface", models_dir=str(folder))
    faces = det.detect(np.zeros((320, 320, 3), np.uint8))
    assert faces
    for f in faces:
        cx, cy = f.center
        for c in (cx, cy):
            assert abs((c - 16) / 32 - round((c - 16) / 32)) < 1e-4     # on the stride-32 grid
        assert f.width == pytest.approx(256, abs=1e-3) or f.width == pytest.approx(512, abs=1e-3)
        assert f.landmarks5 == pytest.approx(np.tile([cx, cy], (5, 1)), abs=1e-3)
        assert f.score == pytest.approx(1.0, abs=1e-6)
    assert len(fx.retinaface_priors(320, 320)) == (40 * 40 + 20 * 20 + 10 * 10) * 2


def test_insightface_scrfd_decoding(tmp_path):
    pytest.importorskip("onnxruntime")
    root = tmp_path / "insightface"
    scrfd_graph(str(root / "models" / "buffalo_l" / "det_10g.onnx"))
    det = get_detector("insightface", models_dir=str(root))
    rgb = np.zeros((320, 640, 3), np.uint8)            # scale 1: letterbox rows 320-640 are padding
    faces = det.detect(rgb)
    # stride 32 on 640x640: 20x20 centres, 2 anchors each (duplicates removed by NMS); centres on the
    # image (y < 320) keep their box, the padded rows are clipped away or empty
    centres = {(round(f.center[0]), round(f.center[1])) for f in faces if f.height > 0}
    expect = {(x * 32, y * 32) for x in range(1, 20) for y in range(1, 10)}
    assert expect <= centres
    f = next(f for f in faces if round(f.center[0]) == 320 and round(f.center[1]) == 160)
    assert f.box == pytest.approx((312, 152, 328, 168)) and f.score == pytest.approx(1 / (1 + np.exp(-5)), rel=1e-4)
    assert f.landmarks5[2] == pytest.approx((320 + 6.4, 160 - 6.4), abs=1e-3)
    assert all(0 <= f.box[0] <= f.box[2] <= 640 and 0 <= f.box[1] <= f.box[3] <= 320 for f in faces)


def test_insightface_offline_message(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(MissingModelError) as e:
        get_detector("insightface", models_dir=str(tmp_path / "insightface"))
    assert "buffalo_l.zip" in str(e.value) and "non-commercial" in str(e.value)
