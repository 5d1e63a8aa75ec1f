#!/usr/bin/env python3
"""The main job: the consistency evaluation workflow through ComfyUI's HTTP API, on shipped photos.

Starts a headless ComfyUI (the one scripts/setup_test_env.sh built, or $COMFYUI_PATH) with this
pack in its custom_nodes, uploads the example photos that each image-folder node of the workflow
names in ``_meta.example_files`` (from assets/faces), queues the workflow with a progress bar from
/ws, and downloads the report (JSON, CSV) and the plots. Only the built-in models are used.

    python scripts/main_job.py [--out out/main-job] [--workflow example_workflows/api/consistency_evaluation.json]
"""
import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from continuity import runner


def comfyui_dir() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"])
    env = Path(os.environ.get("CONTINUITY_ENV", REPO / ".testenv"))
    return Path((env / "comfyui_path").read_text().strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "out" / "main-job"))
    ap.add_argument("--workflow", default=str(REPO / "example_workflows" / "api" / "consistency_evaluation.json"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    base = out / "comfyui"
    for sub in ("custom_nodes", "input", "output", "models", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "continuity"
    if link.is_symlink() or link.exists():
        if link.resolve() != REPO:
            raise SystemExit(f"{link} exists and is not this pack")
    else:
        link.symlink_to(REPO, target_is_directory=True)

    prompt = runner.load_api_workflow(args.workflow)
    uploads = []
    staging = out / "example_inputs"
    shutil.rmtree(staging, ignore_errors=True)
    for nid, node in prompt.items():
        files = node.get("_meta", {}).get("example_files")
        if not files:
            continue
        title = node["_meta"].get("title", nid)
        folder = staging / title.replace(" ", "_")
        folder.mkdir(parents=True)
        for name in files:
            shutil.copy(REPO / "assets" / "faces" / name, folder / name)
        uploads.append(f"{title}.folder={folder}")

    results = out / "results" / time.strftime("%Y%m%d-%H%M%S")
    argv = [args.workflow, "--start-comfyui", str(comfyui_dir()), "--base-directory", str(base), "--cpu",
            "--comfy-log", str(out / "comfyui.log"), "--out", str(results)]
    for u in uploads:
        argv += ["--upload", u]
    print(f"ComfyUI log: {out / 'comfyui.log'}")
    rc = runner.main(argv)
    if rc == 0:
        tables = sorted(results.glob("*.csv"))
        print(f"\nresults: {results}")
        for t in tables:
            print(f"\n{t.name}:\n{t.read_text()}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
