"""The shipped workflows load in the real frontend, validate, and run where they can.

Every workflow exists twice: ``example_workflows/api/NAME.json`` (API format, for POST /prompt; the
source) and ``example_workflows/NAME.json`` (UI format, built from it by scripts/build_workflows.py with
the real frontend, listed in ComfyUI's template browser).
"""
import json
from pathlib import Path

import pytest

import harness
import workflow_support as ws

REPO = Path(__file__).resolve().parents[2]
API = sorted((REPO / "example_workflows" / "api").glob("*.json"))
UI = sorted(p for p in (REPO / "example_workflows").glob("*.json"))


def test_every_workflow_has_both_formats():
    assert API, "no workflows shipped"
    assert {p.stem for p in API} == {p.stem for p in UI}


@pytest.mark.comfy
def test_every_pack_node_appears_in_a_workflow(comfy):
    import nodes
    ours = {k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("Continuity") and "Test" not in k}
    used = set()
    for p in API:
        used |= {n["class_type"] for n in json.loads(p.read_text()).values()}
    assert ours - used == set(), f"nodes in no workflow: {sorted(ours - used)}"


@pytest.mark.comfy
@pytest.mark.parametrize("path", API, ids=lambda p: p.stem)
def test_api_workflow_validates(comfy, path):
    """The check POST /prompt makes, with the user's model files present by name."""
    prompt = ws.load_api(path)
    ws.provide_model_files(comfy.base, prompt)
    ws.provide_inputs(comfy.base, prompt)
    ok, err, outputs, node_errors = comfy.validate(prompt)
    assert ok, f"{path.name}: {err} {json.dumps(node_errors)[:3000]}"
    assert outputs


@pytest.mark.server
@pytest.mark.parametrize("path", [p for p in API if ws.runnable(p)], ids=lambda p: p.stem)
def test_workflow_runs_end_to_end_on_the_live_server(server, path, tmp_path_factory):
    prompt = ws.for_tiny_models(ws.load_api(path))
    ws.provide_model_files(server.base, prompt)
    ws.provide_inputs(server.base, prompt)
    if any(n["class_type"] == "ContinuityTrainLoRA" for n in prompt.values()):
        # the fake sd-scripts of the training tests, configured the way a server admin does it
        ws.configure_fake_trainer(server.base, tmp_path_factory.mktemp("sd-scripts") / "sd-scripts")
    if any(n["class_type"] == "ContinuityLoadDatasetVersion" for n in prompt.values()):
        ws.ensure_dataset(server)
    entry = server.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"], f"{path.name} produced no output"


def test_every_workflow_is_a_template_with_a_thumbnail(server):
    """The templates browser lists each UI workflow and shows <name>.jpg on its card."""
    templates = server.get("/workflow_templates")
    assert sorted(templates.get(harness.PACK_LINK_NAME, [])) == sorted(p.stem for p in UI)
    for path in UI:
        status, raw = server.request("GET", f"/api/workflow_templates/{harness.PACK_LINK_NAME}/{path.name}")
        assert status == 200, f"template {path.name} not served"
        status, jpg = server.request("GET", f"/api/workflow_templates/{harness.PACK_LINK_NAME}/{path.stem}.jpg")
        assert status == 200 and jpg[:3] == b"\xff\xd8\xff", f"{path.stem}.jpg: no thumbnail (build_workflows.py)"


def declared_inputs_only(prompt: dict, object_info: dict) -> dict:
    """A frontend's prompt without what the server does not declare (newer frontends send the values
    of their own display widgets, such as PreviewAny's ``preview``, which the server ignores)."""
    for node in prompt.values():
        spec = object_info.get(node["class_type"], {}).get("input", {})
        names = set(spec.get("required", {})) | set(spec.get("optional", {}))
        node["inputs"] = {k: v for k, v in node["inputs"].items() if k in names}
    return prompt


@pytest.mark.browser
def test_ui_workflows_load_in_the_frontend(ui):
    """Every shipped workflow loads in each frontend (and renderer) exactly as its API twin."""
    page = ui.page
    object_info = ui.server.get("/object_info")
    for path in UI:
        status, raw = ui.server.request("GET", f"/api/workflow_templates/{harness.PACK_LINK_NAME}/{path.name}")
        assert status == 200, f"template {path.name} not served"
        graph = json.loads(raw)
        page.eval("app.graph.clear()")
        page.eval(f"app.loadGraphData({json.dumps(graph)}, true, true, {json.dumps(path.stem)})")
        nodes = "(app.graph.nodes ?? app.graph._nodes)"
        missing = page.eval(f"{nodes}.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)")
        assert missing == [], f"{ui.name} {path.name}: missing node types {missing}"
        # widget values the frontend accepts: combos hold one of their options, numbers within range
        bad = page.eval(nodes + """.flatMap(n => (n.widgets || []).filter(w => {
              if (w.type === 'combo') { const v = w.options?.values; const vals = typeof v === 'function' ? v() : v;
                                        return Array.isArray(vals) && vals.length && !vals.includes(w.value); }
              if (w.type === 'number') { return (w.options?.min !== undefined && w.value < w.options.min) ||
                                                (w.options?.max !== undefined && w.value > w.options.max); }
              return false; }).map(w => n.type + '.' + w.name + '=' + JSON.stringify(w.value)))""")
        model_combos = ws.model_widget_names()
        # model files, character profiles and input images are the user's own: a fresh server may list none
        user_combos = {"ContinuityLoadCharacter.name", "LoadImage.image", "LoadImageMask.image", "LoadVideo.file"}
        bad = [b for b in bad if b.split("=")[0].split(".")[-1] not in model_combos
               and b.split("=")[0] not in user_combos]
        assert bad == [], f"{ui.name} {path.name}: widget values out of range: {bad}"
        # the UI graph serialises to the same API prompt as its twin
        prompt = declared_inputs_only(page.eval("app.graphToPrompt().then(p => p.output)"), object_info)
        api = declared_inputs_only(ws.load_api(REPO / "example_workflows" / "api" / path.name), object_info)
        assert ws.signature(prompt) == ws.signature(api), f"{ui.name} {path.name}: UI and API formats differ"
        page.screenshot(ui.shots / "workflows" / f"{path.stem}.png")
