"""Installs the one dependency that requirements.txt cannot express: mediapipe without its extras.

ComfyUI-Manager and comfy-cli run this file after requirements.txt. mediapipe 0.10.21 is the last
release that bundles its face detection, face mesh and selfie segmentation models; its declared
dependencies pull jax and downgrade numpy, which would break other packs, so it is installed with
``--no-deps`` (requirements.txt carries what it really needs). Where no wheel exists (Python 3.13
and later), the pack still works with the dlib backend and says so.
"""
import importlib.util
import subprocess
import sys

MEDIAPIPE = "mediapipe==0.10.21"


def main() -> int:
    if importlib.util.find_spec("mediapipe") is not None:
        return 0
    if sys.version_info >= (3, 13):
        print(f"[Continuity] {MEDIAPIPE} has no wheel for Python {sys.version_info.major}.{sys.version_info.minor}: "
              "the built-in dlib backend is used instead.")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", MEDIAPIPE]
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        print(f"[Continuity] could not install {MEDIAPIPE}; the dlib backend still works. Command: {' '.join(cmd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
