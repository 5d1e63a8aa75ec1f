"""The face-fix nodes through a live ComfyUI server (/object_info, /prompt, /history, /ws, /interrupt)."""
import json
import time
import uuid

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server


def _inputs(server, tag, h=96, w=80, box=(40, 20, 80, 60)):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([0.5 + 0.3 * np.sin(xx / 11.0 + c) * np.cos(yy / 7.0) for c in range(3)], -1)
    img = (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)
    m = np.zeros((h, w), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 255
    Image.fromarray(img).save(server.base / "input" / f"{tag}.png")
    Image.fromarray(m).save(server.base / "input" / f"{tag}_mask.png")
    return img, m > 0


def _graph(tag, *, steps=3, target=64, seed=11, inpaint=True):
    return {
        "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": inpaint}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "a face"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": ""}},
        "i": {"class_type": "LoadImage", "inputs": {"image": f"{tag}.png"}},
        "k": {"class_type": "LoadImageMask", "inputs": {"image": f"{tag}_mask.png", "channel": "red"}},
        "c": {"class_type": "ContinuityCropForInpaint",
              "inputs": {"image": ["i", 0], "mask": ["k", 0], "context": 1.5, "min_size": 16,
                         "target_size": target, "padding": "reflect"}},
        "t": {"class_type": "ContinuityTwoPassInpaint",
              "inputs": {"model": ["m", 0], "positive": ["p", 0], "negative": ["n", 0], "vae": ["m", 2],
                         "image": ["c", 0], "mask": ["c", 1], "seed": seed, "steps": steps, "cfg": 4.0,
                         "sampler_name": "euler_ancestral", "scheduler": "karras", "denoise_1": 1.0,
                         "denoise_2": 0.4}},
        "s": {"class_type": "ContinuityPasteBack",
              "inputs": {"stitch": ["c", 2], "image": ["t", 0], "feather": 4.5, "colour_match": False}},
        "o": {"class_type": "SaveImage", "inputs": {"images": ["s", 0], "filename_prefix": f"fix/{tag}"}},
    }


def _saved(server, entry):
    item = entry["outputs"]["o"]["images"][0]
    return np.asarray(Image.open(server.base / "output" / item["subfolder"] / item["filename"]).convert("RGB"))


def test_object_info_describes_the_fix_nodes(server):
    info = server.get("/object_info")
    for node_id, name in [("ContinuityCropForInpaint", "Crop For Inpaint (Continuity)"),
                          ("ContinuityTwoPassInpaint", "Two-Pass Inpaint (Continuity)"),
                          ("ContinuityPasteBack", "Paste Back (Continuity)"),
                          ("ContinuityFaceFix", "Face Fix (Continuity)")]:
        node = info[node_id]
        assert node["display_name"] == name and node["category"] == "Continuity/face fix"
        for spec in list(node["input"]["required"].values()) + list(node["input"].get("optional", {}).values()):
            assert "tooltip" in spec[1]
        assert all(node["output_tooltips"])
    assert info["ContinuityCropForInpaint"]["output"][2] == "CONTINUITY_STITCH"
    assert info["ContinuityTwoPassInpaint"]["input"]["required"]["denoise_2"][1]["default"] == 0.4


def test_two_pass_graph_through_the_server(server):
    img, inside = _inputs(server, "srv_fix")
    entry, events = server.ws_events(_graph("srv_fix"))
    assert entry["status"]["status_str"] == "success"
    out = _saved(server, entry)
    assert out.shape == img.shape
    # SaveImage truncates float*255 to 8 bits, so untouched pixels come back within one level
    diff = np.abs(out.astype(int) - img.astype(int))
    assert diff[~inside].max() <= 1
    assert diff[inside].max() > 3
    assert any(e["type"] == "progress" for e in events), "sampling reports progress like KSampler"
    again = _saved(server, server.run(_graph("srv_fix")))
    assert np.array_equal(out, again), "deterministic for a seed"


def test_interrupt_through_the_server(server):
    import websocket
    _inputs(server, "srv_int")
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=120)
    try:
        status, body = server.post_prompt(_graph("srv_int", steps=400, target=128, seed=3), client_id)
        assert status == 200
        prompt_id = body["prompt_id"]
        interrupted = False
        sent = False
        deadline = time.time() + 120
        while time.time() < deadline:
            msg = ws.recv()
            if isinstance(msg, bytes):
                continue
            ev = json.loads(msg)
            if ev["type"] == "progress" and not sent:
                server.request("POST", "/interrupt", {})
                sent = True
            if ev["type"] == "execution_interrupted" and ev["data"].get("prompt_id") == prompt_id:
                interrupted = True
                break
            if ev["type"] == "executing" and ev["data"].get("node") is None and ev["data"].get("prompt_id") == prompt_id:
                break
        assert sent and interrupted
    finally:
        ws.close()
    # the server goes on serving
    _inputs(server, "srv_after")
    assert server.run(_graph("srv_after"))["status"]["status_str"] == "success"


def test_face_fix_through_the_server(server, faces_dir):
    img = Image.open(faces_dir / "img2.jpg").convert("RGB")
    img = img.resize((img.width // 4, img.height // 4), Image.LANCZOS)
    img.save(server.base / "input" / "srv_face.png")
    src = np.asarray(img)
    graph = {
        "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": True}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "a face"}},
        "i": {"class_type": "LoadImage", "inputs": {"image": "srv_face.png"}},
        "f": {"class_type": "ContinuityFaceModelLoader",
              "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
        "x": {"class_type": "ContinuityFaceFix",
              "inputs": {"face_model": ["f", 0], "image": ["i", 0], "model": ["m", 0], "positive": ["p", 0],
                         "negative": ["p", 0], "vae": ["m", 2], "which": "largest", "index": 0,
                         "regions": "face", "grow": 0.0, "min_face": 16, "context": 1.5, "min_size": 32,
                         "target_size": 64, "padding": "edge", "seed": 5, "steps": 2, "cfg": 4.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise_1": 1.0, "denoise_2": 0.4,
                         "feather": 4.5, "colour_match": False}},
        "o": {"class_type": "SaveImage", "inputs": {"images": ["x", 0], "filename_prefix": "fix/srv_face"}},
        "mo": {"class_type": "MaskToImage", "inputs": {"mask": ["x", 1]}},
        "ms": {"class_type": "SaveImage", "inputs": {"images": ["mo", 0], "filename_prefix": "fix/srv_face_mask"}},
    }
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success"
    out = _saved(server, entry)
    item = entry["outputs"]["ms"]["images"][0]
    mask = np.asarray(Image.open(server.base / "output" / item["subfolder"] / item["filename"]).convert("L")) > 0
    assert out.shape == src.shape and mask.any()
    diff = np.abs(out.astype(int) - src.astype(int))
    assert diff[~mask].max() <= 1 and diff[mask].max() > 3
