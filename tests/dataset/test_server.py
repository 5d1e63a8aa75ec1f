"""Dataset nodes on the live server: versions saved, merged and refused through /prompt."""
import hashlib
import json
import os
import shutil

import pytest

pytestmark = pytest.mark.server


def _copy_faces(faces_dir, folder, ids):
    folder.mkdir(parents=True, exist_ok=True)
    for n in ids:
        shutil.copy(faces_dir / f"img{n}.jpg", folder / f"img{n}.jpg")
        (folder / f"img{n}.txt").write_text(f"photo of ohwx person, shot {n}\n")
    return folder


def _tree_hashes(path):
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _load(folder):
    return {"class_type": "ContinuityLoadImageFolder",
            "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                       "caption_extension": ".txt"}}


def test_live_server_version_and_merge(server, faces_dir):
    _copy_faces(faces_dir, server.base / "input" / "live_src", [3, 12])
    save = {"1": _load("live_src"),
            "2": {"class_type": "ContinuitySaveDatasetVersion",
                  "inputs": {"images": ["1", 0], "name": "live", "note": "", "captions": ["1", 3],
                             "filenames": ["1", 2]}}}
    server.run(save)
    v1 = server.base / "output" / "continuity" / "datasets" / "live" / "v1"
    before = _tree_hashes(v1)
    merge = {"1": {"class_type": "ContinuityLoadDatasetVersion", "inputs": {"name": "live", "version": 1}},
             "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 1]}},
             "3": {"class_type": "ContinuityMergeFixedImages",
                   "inputs": {"dataset": ["1", 0], "fixed_images": ["2", 0], "filenames": ["1", 3], "note": "fix"}}}
    server.run(merge)
    man2 = json.loads((v1.parent / "v2" / "manifest.json").read_text())
    assert man2["parent"] == "v1" and man2["provenance"]["replaced"] == ["img12.png", "img3.png"]
    assert _tree_hashes(v1) == before
    status, body = server.post_prompt({"1": _load("live_src"),
                                       "2": {"class_type": "ContinuitySaveDatasetVersion",
                                             "inputs": {"images": ["1", 0], "name": "a/b", "note": ""}}})
    assert status == 400 and "input 'name'" in json.dumps(body)
