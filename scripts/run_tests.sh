#!/usr/bin/env bash
# The test command: builds the test environment if needed, then runs every tier of the tests
# (core units, in-process ComfyUI, the live server, the frontend in headless Chromium), after ruff and mypy.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -k faces`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

start=$(date +%s)
bash scripts/setup_test_env.sh
echo "environment ready in $(( $(date +%s) - start )) s"

# Debian's Chromium for the frontend tier.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is not installed and cannot be installed here: the frontend tests will be skipped" >&2
  fi
fi
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "CI needs chromium for the frontend tier" >&2
  exit 1
fi

VENV="${CONTINUITY_ENV:-$REPO/.testenv}/venv"

# Lint (ruff, with the complexity ceiling) and types (mypy on the core) first: cheap, and a failure
# stops the run before the slow tiers. Configuration: pyproject.toml.
t0=$(date +%s)
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"
echo "lint and types clean in $(( $(date +%s) - t0 )) s"

# Static scan for custom nodes (nodesafe from PyPI) as a report: printed, JSON kept, never fails the run.
"$VENV/bin/python" "$REPO/scripts/nodesafe_report.py" --out "${CONTINUITY_ARTIFACTS:-$REPO/test-artifacts}/nodesafe.json" || true

t0=$(date +%s)
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
echo "tests ran in $(( $(date +%s) - t0 )) s"
if [ "$rc" = "5" ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
