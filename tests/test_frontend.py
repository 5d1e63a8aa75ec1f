"""Tier 4: the real ComfyUI frontend in headless Chromium against the live server."""
import json

import pytest

import harness

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(harness.find_chromium() is None, reason="chromium not installed")]


def open_frontend(server, browser_factory):
    # The first visit opens the templates dialog; a user setting skips it, as a returning user has it.
    status, _ = server.request("POST", "/settings/Comfy.TutorialCompleted", True)
    assert status == 200
    b = browser_factory(server.url)
    b.wait_for("!!(window.app && window.app.graph && window.LiteGraph && "
               "Object.keys(LiteGraph.registered_node_types).length > 100)", timeout=120)
    return b


@pytest.fixture(scope="module")
def page(server, browser_factory):
    return open_frontend(server, browser_factory)


def test_frontend_knows_the_pack_and_loads_a_graph(page, server, artifacts_dir):
    assert page.eval("!!LiteGraph.registered_node_types['ContinuityLoadImageFolder']")
    # our web extension was loaded by the frontend
    exts = page.eval("app.extensions.map(e => e.name)")
    assert "continuity.reports" in exts
    api = {
        "1": {"class_type": "ContinuityLoadImageFolder",
              "inputs": {"folder": "frontend_set", "mode": "list", "recursive": False, "start": 0, "limit": 0,
                         "caption_extension": ".txt"}, "_meta": {"title": "Dataset folder"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    page.eval(f"app.loadApiJson({json.dumps(api)}, 'continuity-test')")
    nodes = page.eval("app.graph._nodes.map(n => ({type: n.type, title: n.title, "
                      "widgets: (n.widgets || []).map(w => [w.name, w.value])}))")
    by_type = {n["type"]: n for n in nodes}
    assert set(by_type) == {"ContinuityLoadImageFolder", "PreviewImage"}
    widgets = dict(by_type["ContinuityLoadImageFolder"]["widgets"])
    assert widgets["folder"] == "frontend_set" and widgets["mode"] == "list"
    # the link survived: the frontend serialises the graph back to the same API prompt
    prompt = page.eval("app.graphToPrompt().then(p => p.output)")
    load = next(v for v in prompt.values() if v["class_type"] == "ContinuityLoadImageFolder")
    preview = next(v for v in prompt.values() if v["class_type"] == "PreviewImage")
    assert preview["inputs"]["images"][1] == 0
    assert load["inputs"]["folder"] == "frontend_set"
    shot = page.screenshot(artifacts_dir / "frontend_load_image_folder.png")
    assert shot.stat().st_size > 10_000
