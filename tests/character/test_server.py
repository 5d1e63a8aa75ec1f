"""Character profiles through graphs in the live ComfyUI server: made, loaded, updated, versioned."""
import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server


def _refs(server, name, n, seed):
    folder = server.base / "input" / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((40, 32, 3)) * 255).astype(np.uint8)).save(folder / f"r{i}.png")
    return name


def _load_folder(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def _save(name, **kw):
    inputs = {"name": name, "trigger_word": "", "class_phrase": "", "style": "keep", "threshold": 0.0, "notes": ""}
    inputs.update(kw)
    return {"class_type": "ContinuitySaveCharacter", "inputs": inputs}


def _text(entry, node):
    return entry["outputs"][node]["text"][0]


def test_profile_made_loaded_updated_versioned_live(server):
    _refs(server, "char_live_refs", 2, 0)
    entry = server.run({"1": _load_folder("char_live_refs"),
                        "2": _save("sam", references=["1", 0], trigger_word="s4m", class_phrase="man", threshold=0.6)})
    assert "sam (revision 1, realistic)" in _text(entry, "2")
    folder = server.base / "output" / "continuity" / "characters" / "sam"
    first = (folder / "manifest" / "000001.json").read_bytes()

    # the dropdown offers it
    info = server.get("/object_info/ContinuityLoadCharacter")["ContinuityLoadCharacter"]
    assert "sam" in json.dumps(info["input"]["required"]["name"])

    # load -> update through the CHARACTER (name empty) with one more reference
    _refs(server, "char_live_refs2", 1, 9)
    entry = server.run({"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "sam", "revision": 0}},
                        "2": _load_folder("char_live_refs2"),
                        "3": _save("", character=["1", 0], references=["2", 0], class_phrase="old man")})
    text = _text(entry, "3")
    assert "revision 2" in text and "class: old man" in text and "references: 3" in text and "trigger: s4m" in text

    # record a LoRA from revision 1's CHARACTER: it lands on top of the latest revision (3), nothing is lost
    entry = server.run({"1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "sam", "revision": 1}},
                        "2": {"class_type": "ContinuityRecordCharacterResult",
                              "inputs": {"character": ["1", 0], "lora_name": "sam_v1.safetensors", "stage": "1"}}})
    text = _text(entry, "2")
    assert "revision 3" in text and "class: old man" in text and "sam_v1.safetensors" in text

    # every revision is a file of its own; revision 1 is byte for byte what it was
    assert sorted(p.name for p in (folder / "manifest").iterdir()) == ["000001.json", "000002.json", "000003.json"]
    assert (folder / "manifest" / "000001.json").read_bytes() == first
    assert json.loads(first)["profile"]["class_phrase"] == "man"

    # a revision that does not exist is refused before running (HTTP 400), naming the node and the input
    status, body = server.post_prompt({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "sam", "revision": 9}},
        "2": {"class_type": "ContinuityRecordCharacterResult", "inputs": {"character": ["1", 0], "lora_name": "x"}}})
    assert status == 400
    assert "Load Character (Continuity)" in json.dumps(body) and "no revision 9" in json.dumps(body)
    # a profile that does not exist fails when it runs, with the same kind of message; the server carries on
    entry = server.run({
        "1": {"class_type": "ContinuityLoadCharacter", "inputs": {"name": "ghost", "revision": 0}},
        "2": {"class_type": "ContinuityRecordCharacterResult", "inputs": {"character": ["1", 0], "lora_name": "x"}}},
        expect_success=False)
    assert entry["status"]["status_str"] == "error"
    assert "no character profile 'ghost'" in json.dumps(entry["status"]["messages"])
    assert server.get("/system_stats")
