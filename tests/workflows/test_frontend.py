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


def test_similarity_table_and_plots_drawn_on_the_nodes(page, server, artifacts_dir, faces_dir):
    """Queued from the page: the web extension draws the score table on Face Similarity."""
    import shutil
    for folder, names in (("fe_refs", ["img1.jpg", "img2.jpg"]), ("fe_cands", ["img4.jpg", "img13.jpg"])):
        d = server.base / "input" / folder
        d.mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(faces_dir / n, d / n)
    lf = lambda folder: {"class_type": "ContinuityLoadImageFolder",
                         "inputs": {"folder": folder, "mode": "list", "recursive": False, "start": 0, "limit": 0,
                                    "caption_extension": ".txt"}}
    api = {"1": lf("fe_refs"), "2": lf("fe_cands"),
           "3": {"class_type": "ContinuityFaceSimilarity",
                 "inputs": {"references": ["1", 0], "candidates": ["2", 0], "model": "dlib", "face_policy": "largest",
                            "set_name": "frontend", "filenames": ["2", 2]}},
           "4": {"class_type": "ContinuityConsistencyReport",
                 "inputs": {"scores_1": ["3", 0], "plot_model": "", "save": False,
                            "filename_prefix": "continuity/reports/frontend"}}}
    page.eval("app.graph.clear()")
    page.eval(f"app.loadApiJson({json.dumps(api)}, 'scores')")
    page.eval("app.queuePrompt(0, 1)")
    rows = page.wait_for("""(() => { const n = app.graph._nodes.find(n => n.type === 'ContinuityFaceSimilarity');
        const el = n?.continuityReport?.element; return el ? Array.from(el.querySelectorAll('tbody tr')).map(
        tr => Array.from(tr.cells).map(td => td.textContent)) : null; })()""", timeout=180)
    assert [r[0] for r in rows] == ["img4.jpg", "img13.jpg"]
    assert rows[0][-1] == "true" and rows[1][-1] == "false"   # same person passes, another does not
    page.wait_for("(() => { const n = app.graph._nodes.find(n => n.type === 'ContinuityConsistencyReport');"
                  " return n?.imgs?.length > 0 && n?.continuityReport; })()", timeout=120)
    page.eval("app.canvas.ds.scale = 0.8; app.canvas.setDirty(true, true)")
    page.screenshot(artifacts_dir / "frontend_similarity_table.png")


def test_mask_overlay_shown_on_the_mask_node(page, server, artifacts_dir, faces_dir):
    import shutil
    shutil.copy(faces_dir / "couple.jpg", server.base / "input" / "fe_couple.jpg")
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "fe_couple.jpg"}},
           "2": {"class_type": "ContinuityFaceModelLoader",
                 "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
           "3": {"class_type": "ContinuityFaceRegionMask",
                 "inputs": {"face_model": ["2", 0], "images": ["1", 0], "which": "all", "index": 0, "skin": True,
                            "brows": True, "eyes": True, "nose": True, "mouth": True, "ears": True, "hair": True,
                            "beard": True, "neck": False, "glasses": False, "hat": False, "grow": 0.0,
                            "grow_unit": "px", "feather": 0.0, "fill_holes": True, "min_size": 32,
                            "if_no_face": "empty mask"}},
           "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
           "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    page.eval("app.graph.clear()")
    page.eval(f"app.loadApiJson({json.dumps(api)}, 'mask')")
    page.eval("app.queuePrompt(0, 1)")
    text = page.wait_for("""(() => { const n = app.graph._nodes.find(n => n.type === 'ContinuityFaceRegionMask');
        return n?.imgs?.length > 0 && n?.continuityReport ? n.continuityReport.element.textContent : null; })()""",
                         timeout=180)
    assert "faces per image: 2" in text
    page.screenshot(artifacts_dir / "frontend_mask_overlay.png")
