"""Fixtures for the test tiers: core units, in-process ComfyUI, the live server, the frontend."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
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


# The frontend tier runs against every frontend the environment has (the one ComfyUI 0.3.75 pins
# and the newest, see scripts/setup_test_env.sh) and, where the newest has it, with its "Nodes 2.0"
# renderer on. One server per frontend version and one page per mode serve every test.
FRONTENDS = harness.frontends()
UI_MODES = [(FRONTENDS[0], False)] + [(fe, vue) for fe in FRONTENDS[1:] for vue in (False, True)]


@pytest.fixture(scope="session")
def latest_server(tmp_path_factory, artifacts_dir):
    """A second live server that serves the newest frontend (--front-end-root)."""
    if len(FRONTENDS) < 2:
        pytest.skip("the newest frontend is not installed (scripts/setup_test_env.sh installs it)")
    base = harness.make_base_dir(tmp_path_factory.mktemp("comfy-server-latest"))
    srv = harness.LiveServer(base, artifacts_dir / "server-latest.log", FRONTENDS[-1].root).start()
    yield srv
    srv.stop()


@dataclass
class UI:
    """One frontend in one mode: its server, a page on it, and where its screenshots go."""
    frontend: harness.Frontend
    vue: bool
    server: harness.LiveServer
    page: harness.Browser
    shots: Path

    @property
    def name(self) -> str:
        return self.frontend.version + ("-nodes2" if self.vue else "")


@pytest.fixture(scope="session", params=UI_MODES,
                ids=[fe.version + ("-nodes2" if vue else "") for fe, vue in UI_MODES])
def ui(request, tmp_path_factory, artifacts_dir):
    fe, vue = request.param
    srv = request.getfixturevalue("server" if fe.root is None else "latest_server")
    if harness.find_chromium() is None:
        pytest.skip("chromium not installed")
    # a returning user: no templates dialog on the first visit; the renderer this mode tests
    for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.VueNodes.Enabled", vue)):
        status, _ = srv.request("POST", f"/settings/{key}", value)
        assert status == 200
    page = harness.Browser(tmp_path_factory.mktemp("chromium-profile")).start(srv.url)
    try:
        page.wait_for("!!(window.app && window.app.graph && window.LiteGraph && "
                      "Object.keys(LiteGraph.registered_node_types).length > 100)", timeout=120)
        name = fe.version + ("-nodes2" if vue else "")
        yield UI(fe, vue, srv, page, artifacts_dir / "frontend" / name)
    finally:
        page.stop()
