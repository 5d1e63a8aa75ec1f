"""Tier 3: the live ComfyUI server, through /object_info, /prompt, /history and /ws."""
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server


def _folder(server, name, n=2, size=(48, 40)):
    folder = server.base / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size[1], size[0], 3), 40 * (i + 1), np.uint8)
        Image.fromarray(arr).save(folder / f"frame{i}.png")
    return folder


def _graph(folder, mode="list"):
    return {
        "1": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": folder, "mode": mode, "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "continuity_test"}},
    }


def test_object_info_lists_the_pack(server):
    info = server.get("/object_info")
    node = info["ContinuityLoadImageFolder"]
    assert node["display_name"] == "Load Image Folder (Continuity)"
    assert node["category"].startswith("Continuity")
    assert node["output_is_list"] == [True, True, True, True, False]
    assert "tooltip" in node["input"]["required"]["folder"][1]
    # the web extension folder is announced to the frontend
    assert any("continuity" in e.lower() for e in server.get("/extensions"))


def test_prompt_history_and_ws_events(server):
    _folder(server, "live_a", n=3)
    entry, events = server.ws_events(_graph("live_a"))
    assert entry["status"]["status_str"] == "success"
    saved = entry["outputs"]["2"]["images"]
    assert len(saved) == 3
    for item in saved:
        assert (server.base / "output" / item["subfolder"] / item["filename"]).is_file()
    types = [e["type"] for e in events]
    assert "execution_start" in types and "executing" in types
    assert any(e["type"] == "executed" and e["data"]["node"] == "2" for e in events)


def test_bad_value_is_http_400_with_the_node_error(server):
    status, body = server.post_prompt(_graph("../../etc"))
    assert status == 400
    errors = body["node_errors"]["1"]["errors"]
    assert any("input 'folder'" in e["details"] or "input 'folder'" in e["message"] for e in errors)
    # the server is still alive and serving
    assert server.get("/system_stats")["system"]["comfyui_version"]


def test_runtime_error_reported_not_crashing(server):
    folder = _folder(server, "live_mixed", n=1, size=(32, 32))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "odd.png")
    entry = server.run(_graph("live_mixed", mode="batch"), expect_success=False)
    assert entry["status"]["status_str"] == "error"
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert "Load Image Folder (Continuity)" in err["exception_message"]
    assert "input 'mode'" in err["exception_message"]
    assert server.get("/system_stats")
