"""The HTTP API runner against the live server: uploads, inputs by title, /ws progress, downloads."""
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from PIL import Image

from continuity import runner

pytestmark = pytest.mark.server

WORKFLOW = {
    "1": {"class_type": "ContinuityLoadImageFolder", "_meta": {"title": "Dataset folder"},
          "inputs": {"folder": "placeholder", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                     "caption_extension": ".txt"}},
    "2": {"class_type": "SaveImage", "_meta": {"title": "Save dataset"},
          "inputs": {"images": ["1", 0], "filename_prefix": "runner/set"}},
    "m": {"class_type": "ContinuityTestTinyModels", "inputs": {"seed": 0, "inpaint_model": False}},
    "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "portrait"}},
    "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "k": {"class_type": "KSampler", "_meta": {"title": "Sampler"},
          "inputs": {"model": ["m", 0], "positive": ["p", 0], "negative": ["p", 0], "latent_image": ["l", 0],
                     "seed": 1, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["m", 2]}},
    "s": {"class_type": "SaveImage", "_meta": {"title": "Save generated"},
          "inputs": {"images": ["d", 0], "filename_prefix": "runner/gen"}},
}


def test_runner_uploads_sets_runs_and_downloads(server, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((24, 32, 3), 60 * (i + 1), np.uint8)).save(src / f"p{i}.png")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    out = tmp_path / "out"
    err, std = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(std):
        rc = runner.main([str(wf), "--server", server.url, "--upload", f"Dataset folder.folder={src}",
                          "--set", "Sampler.steps=5", "--set", "Sampler.seed=7", "--out", str(out)])
    assert rc == 0, err.getvalue()
    files = sorted(os.listdir(out))
    assert len([f for f in files if "set" in f]) == 2 and len([f for f in files if "gen" in f]) == 1
    progress = err.getvalue()
    assert "Sampler" in progress and "5/5" in progress, progress   # the bar followed /ws progress events
    assert "output file(s)" in std.getvalue()


def test_runner_reports_refusals_clearly(server, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WORKFLOW))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = runner.main([str(wf), "--server", server.url, "--set", "Dataset folder.folder=../../etc", "--quiet",
                          "--out", str(tmp_path / "out")])
    assert rc == 1 and "refused" in err.getvalue() and "folder" in err.getvalue()
    with pytest.raises(runner.RunnerError, match="no input 'nope'"):
        runner.set_input(json.loads(json.dumps(WORKFLOW)), "Sampler", "nope", 1)
    with pytest.raises(runner.RunnerError, match="titles in this workflow"):
        runner.set_input(json.loads(json.dumps(WORKFLOW)), "Nobody", "seed", 1)
