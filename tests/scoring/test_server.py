"""Scoring through the live ComfyUI server: a report graph via /prompt, PNGs via /view, files on disk."""
import io
import json
import os
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server


def _put(base, folder, faces_dir, names, side=400):
    d = base / "input" / folder
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        img = Image.open(faces_dir / n).convert("RGB")
        img.thumbnail((side, side))
        img.save(d / (os.path.splitext(n)[0] + ".png"))


def _folder(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def test_report_graph_through_live_server(server, faces_dir, artifacts_dir):
    _put(server.base, "score_live_refs", faces_dir, ["img1.jpg", "img2.jpg", "img4.jpg"])
    _put(server.base, "score_live_same", faces_dir, ["img5.jpg", "img10.jpg"])
    _put(server.base, "score_live_other", faces_dir, ["img13.jpg", "img16.jpg"])
    prompt = {
        "1": _folder("score_live_refs"), "2": _folder("score_live_same"), "3": _folder("score_live_other"),
        "4": {"class_type": "ContinuityFaceSimilarity",
              "inputs": {"references": ["1", 0], "candidates": ["2", 0], "model": "dlib", "face_policy": "largest",
                         "set_name": "same", "filenames": ["2", 2]}},
        "5": {"class_type": "ContinuityFaceSimilarity",
              "inputs": {"references": ["1", 0], "candidates": ["3", 0], "model": "all available",
                         "face_policy": "largest", "set_name": "other", "filenames": ["3", 2]}},
        "6": {"class_type": "ContinuityConsistencyReport",
              "inputs": {"scores_1": ["4", 0], "scores_2": ["5", 0], "plot_model": "dlib", "save": True,
                         "filename_prefix": "continuity/reports/live"}},
    }
    entry, events = server.ws_events(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    imgs = entry["outputs"]["6"]["images"]
    assert len(imgs) == 3
    for k, item in enumerate(imgs):
        q = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item["subfolder"], "type": item["type"]})
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/view?{q}", timeout=30) as r:
            data = r.read()
        png = Image.open(io.BytesIO(data)).convert("RGB")
        arr = np.asarray(png)
        assert png.size[0] >= 800 and arr.std() > 10
        png.save(artifacts_dir / f"live_report_{k}.png")
    # Face Similarity shows its text in the UI
    assert any("same person" in t for t in entry["outputs"]["4"]["text"])
    reports = sorted((server.base / "output" / "continuity" / "reports").glob("live*.json"))
    assert reports, "no report written"
    doc = json.loads(reports[-1].read_text())
    rows = {(r["set"], r["model"]): r for r in doc["table"]}
    assert rows[("same", "dlib")]["mean"] > rows[("same", "dlib")]["threshold"] > rows[("other", "dlib")]["mean"]
    assert doc["sets"][1]["unavailable_models"]           # which models did not run, and why
    assert (reports[-1].with_suffix(".csv")).is_file()
    assert any(e["type"] == "progress" for e in events)
    assert server.get("/object_info")["ContinuityFaceSimilarity"]["display_name"] == "Face Similarity (Continuity)"
