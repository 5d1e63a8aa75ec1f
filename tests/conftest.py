"""Fixtures for the test tiers: core units, in-process ComfyUI, the live server, the frontend."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT))

import harness

REPO = harness.REPO
# The core package is imported as `continuity`. The repo root goes at the *end* of sys.path: it
# holds a `nodes/` package that must never shadow ComfyUI's `nodes` module.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
# Test modules are imported by path (``--import-mode=importlib``: each stage folder has its own
# test_core.py ...), so ``tests/`` itself goes at the end too, for ``from support.x import y``.
if str(SUPPORT.parent) not in sys.path:
    sys.path.append(str(SUPPORT.parent))

FACES = REPO / "assets" / "faces"

# Core code that signs or checks files (continuity.store) outside ComfyUI needs a key folder; the
# nodes configure ComfyUI's system user folder instead. One per test session, never the user's.
if not os.environ.get("CONTINUITY_KEY_DIR"):
    import tempfile
    os.environ["CONTINUITY_KEY_DIR"] = tempfile.mkdtemp(prefix="continuity-keys-")
ARTIFACTS = Path(os.environ.get("CONTINUITY_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Real face photos (DeepFace's unit-test images, MIT; see assets/faces/README.md)."""
    return FACES


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI 0.3.75 in this process, with Continuity and the tiny-model test nodes loaded."""
    base = harness.make_base_dir(tmp_path_factory.mktemp("comfy-inproc"))
    return harness.InProcessComfy(base).start()


@pytest.fixture(scope="session")
def server(tmp_path_factory, artifacts_dir):
    """A live ComfyUI server (``main.py --cpu``) on a free loopback port."""
    base = harness.make_base_dir(tmp_path_factory.mktemp("comfy-server"))
    srv = harness.LiveServer(base, artifacts_dir / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def browser_factory(tmp_path_factory):
    """Starts headless Chromium sessions; all are stopped at the end."""
    started = []

    def make(url: str, **kw) -> harness.Browser:
        b = harness.Browser(tmp_path_factory.mktemp("chromium-profile")).start(url, **kw)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()
