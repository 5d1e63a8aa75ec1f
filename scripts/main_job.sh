#!/usr/bin/env bash
# The main job on a fresh machine: builds the environment (as the tests do), then runs the
# consistency evaluation workflow through ComfyUI's HTTP API on the shipped example photos with
# the built-in models, and writes the report (JSON, CSV) and plots under out/main-job/results/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash scripts/setup_test_env.sh
exec "${CONTINUITY_ENV:-$REPO/.testenv}/venv/bin/python" scripts/main_job.py "$@"
