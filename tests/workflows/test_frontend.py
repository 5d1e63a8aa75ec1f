"""Tier 4: the real ComfyUI frontend in headless Chromium against the live server.

Every test runs once per frontend mode of the ``ui`` fixture: the frontend ComfyUI 0.3.75 pins,
the newest one, and the newest with its Nodes 2.0 renderer. What a test reads from the page is
plain data (numbers, strings, rectangles), never the frontend's own objects, whose shapes change
from version to version.
"""
import json
import re
import shutil
from pathlib import Path

import harness
import pytest
import workflow_support as ws

REPO = Path(__file__).resolve().parents[2]
WEB_JS = sorted((REPO / "web" / "js").glob("*.js"))

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(harness.find_chromium() is None, reason="chromium not installed")]

# Where each node and each pack display is on screen, in CSS pixels: [left, top, width, height].
# LiteGraph nodes are converted from canvas to screen coordinates; Nodes 2.0 nodes are elements.
# The elements of a node's pack displays: the DOM widgets the pack's scripts add (named continuity_*).
PACK_DISPLAYS_JS = """var packDisplays = (n) => (n.widgets || [])
  .filter((w) => w.element && String(w.name).startsWith('continuity_'))
  .map((w) => w.element);"""

GEOMETRY_JS = PACK_DISPLAYS_JS + """(() => {
  const cv = app.canvas, box = cv.canvas.getBoundingClientRect(), T = LiteGraph.NODE_TITLE_HEIGHT;
  const rect = (el) => { const b = el.getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; };
  const nodes = app.graph.nodes ?? app.graph._nodes;
  return nodes.map((n) => {
    const el = document.querySelector(`.lg-node[data-node-id="${n.id}"]`);
    let r;
    if (el) r = rect(el);
    else {
      const [x, y] = cv.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - T]);
      r = [box.left + x, box.top + y, n.size[0] * cv.ds.scale, (n.size[1] + T) * cv.ds.scale];
    }
    const displays = packDisplays(n).filter((d) => d.getClientRects().length)
      .map((d) => ({cls: d.className, rect: rect(d), text: d.textContent,
                    rows: d.querySelectorAll('tbody tr').length, points: Number(d.dataset.points || 0),
                    scrolls: d.scrollHeight > d.clientHeight + 1 || d.scrollWidth > d.clientWidth + 1}));
    // LiteGraph: the lowest edge of the node's ordinary widgets, to check a display sits below them
    const widgetsBottom = el ? null : Math.max(0, ...(n.widgets || [])
      .filter((w) => !w.element && w.type !== 'hidden' && !String(w.name).startsWith('$$'))
      .map((w) => (w.y ?? w.last_y ?? 0) + (LiteGraph.NODE_WIDGET_HEIGHT || 20)));
    const domTop = el ? null : Math.min(...(n.widgets || []).filter((w) => w.element && w.name.startsWith('continuity'))
      .map((w) => w.y ?? w.last_y ?? 1e9));
    return {id: String(n.id), type: n.type, title: n.title, rect: r, displays, widgetsBottom, domTop};
  });
})()"""


def overlap(a, b, tol=1.0):
    return (a[0] + tol < b[0] + b[2] and b[0] + tol < a[0] + a[2]
            and a[1] + tol < b[1] + b[3] and b[1] + tol < a[1] + a[3])


def inside(inner, outer, tol=2.0):
    return (inner[0] >= outer[0] - tol and inner[1] >= outer[1] - tol
            and inner[0] + inner[2] <= outer[0] + outer[2] + tol and inner[1] + inner[3] <= outer[1] + outer[3] + tol)


def geometry(page):
    page.eval("app.canvas.setDirty(true, true); app.canvas.draw?.(true, true)")
    page.eval("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return {n["id"]: n for n in page.eval(GEOMETRY_JS)}


def overlapping_pairs(geo):
    ids = sorted(geo)
    return {(a, b) for i, a in enumerate(ids) for b in ids[i + 1:] if overlap(geo[a]["rect"], geo[b]["rect"])}


def check_displays(geo):
    """Every pack display lies inside its node, below its ordinary widgets, over no other node."""
    for n in geo.values():
        for d in n["displays"]:
            assert inside(d["rect"], n["rect"]), f"{n['title']}: display {d['rect']} outside its node {n['rect']}"
            for other in geo.values():
                if other is not n:
                    assert not overlap(d["rect"], other["rect"]), \
                        f"{n['title']}: display covers {other['title']}"
        if n["displays"] and n["widgetsBottom"] is not None:
            assert n["domTop"] >= n["widgetsBottom"] - 1, f"{n['title']}: display covers a widget"


def load_api(ui, api, name):
    ui.page.eval("app.graph.clear()")
    ui.page.eval(f"app.loadApiJson({json.dumps(api)}, {json.dumps(name)})")


def queue(ui):
    ui.page.eval("app.queuePrompt(0, 1)")


def displays_of(ui, type_):
    return ui.page.eval(PACK_DISPLAYS_JS + f"""(() => {{ const n = (app.graph.nodes ?? app.graph._nodes).find(n => n.type === {json.dumps(type_)});
        if (!n) return null;
        return packDisplays(n).map(d => ({{text: d.textContent, rows: Array.from(d.querySelectorAll('tbody tr'))
            .map(tr => Array.from(tr.cells).map(td => td.textContent)), points: Number(d.dataset.points || 0)}})); }})()""")


def wait_display(ui, type_, pred, timeout=180):
    def probe():
        ds = displays_of(ui, type_)
        return ds if ds and pred(ds[0]) else None
    import time
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = probe()
        if last:
            return last[0]
        ui.page.eval("new Promise(r => setTimeout(r, 250))")
    raise TimeoutError(f"{ui.name}: no display on {type_} (last: {displays_of(ui, type_)})")


def wait_idle(ui, timeout=300):
    """Until the server has run everything queued."""
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = ui.server.get("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            return
        time.sleep(0.25)
    raise TimeoutError("the queue did not empty")


def shot(ui, name):
    return ui.page.screenshot(ui.shots / f"{name}.png")


def switch_tab_away_and_back(ui):
    """What a user does: open another workflow tab, then come back to this one."""
    ui.page.eval("app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    ui.page.wait_for("(app.graph.nodes ?? app.graph._nodes).length === 0", timeout=30)
    ui.page.eval("app.extensionManager.command.execute('Workspace.PreviousOpenedWorkflow')")
    ui.page.wait_for("(app.graph.nodes ?? app.graph._nodes).length > 0", timeout=30)


# ----------------------------------------------------------------------------------------- tests

def test_every_pack_script_loads_and_registers(ui):
    """Each file of web/js is served, imports without error, and its extension is registered."""
    urls = [f"/extensions/{harness.PACK_LINK_NAME}/js/{p.name}" for p in WEB_JS]
    results = ui.page.eval(f"""Promise.allSettled({json.dumps(urls)}.map(u => import(u)))
        .then(rs => rs.map(r => r.status === 'fulfilled' ? 'ok' : String(r.reason)))""")
    assert results == ["ok"] * len(urls), dict(zip(urls, results))
    registered = set(ui.page.eval("app.extensions.map(e => e.name)"))
    for p in WEB_JS:
        for name in re.findall(r'registerExtension\(\{\s*name:\s*"([^"]+)"', p.read_text()):
            assert name in registered, f"{p.name}: extension {name} not registered"
    # nothing the pack's scripts asked for failed, and no error came from them
    failed = {u: s for u, s in ui.page.responses.items() if "/extensions/" in u and s >= 400}
    assert failed == {}
    ours = [c for c in ui.page.console if "/extensions/" in (c["url"] + c["text"]) or "continuity" in c["text"].lower()]
    assert ours == []


def test_mask_overlay_and_report_on_the_mask_node(ui, faces_dir):
    shutil.copy(faces_dir / "couple.jpg", ui.server.base / "input" / "fe_couple.jpg")
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "fe_couple.jpg"}},
           "2": {"class_type": "ContinuityFaceModelLoader",
                 "inputs": {"backend": "mediapipe", "parser": "auto", "embedder": "auto", "device": "cpu"}},
           "3": {"class_type": "ContinuityFaceRegionMask",
                 "inputs": {"face_model": ["2", 0], "images": ["1", 0], "which": "all", "index": 0, "skin": True,
                            "brows": True, "eyes": True, "nose": True, "mouth": True, "ears": True, "hair": True,
                            "beard": True, "neck": False, "glasses": False, "hat": False, "grow": 0.0,
                            "grow_unit": "px", "feather_px": 0.0, "fill_holes": True, "min_face": 32,
                            "if_no_face": "empty mask"}},
           "4": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 0]}},
           "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    load_api(ui, api, "mask")
    queue(ui)
    report = wait_display(ui, "ContinuityFaceRegionMask", lambda d: "faces per image" in d["text"])
    assert "faces per image: 2" in report["text"]
    # the overlay preview (images of the node's UI output) is shown on the node
    ui.page.wait_for("""(() => { const n = (app.graph.nodes ?? app.graph._nodes).find(n => n.type === 'ContinuityFaceRegionMask');
        return (n?.imgs?.length ?? 0) > 0 || !!document.querySelector(`.lg-node[data-node-id="${n?.id}"] img`); })()""",
                     timeout=60)
    shot(ui, "mask_overlay")
    check_displays(geometry(ui.page))


def test_training_progress_and_loss_curve_on_both_training_nodes(ui, tmp_path_factory):
    """A fake-trainer run: live step/loss/ETA while it trains, then the loss curve, on each node."""
    import sys
    sys.path.insert(0, str(REPO / "tests" / "support" / "fake_sdscripts"))
    import _fake_trainer
    where = tmp_path_factory.mktemp("sd-scripts") / "sd-scripts"
    ws.configure_fake_trainer(ui.server.base, where)
    _fake_trainer.set_control(str(where), {"step_delay": 0.08})
    ws.ensure_dataset(ui.server)
    prompt = ws.for_tiny_models(ws.load_api(REPO / "example_workflows" / "api" / "train_sdxl_realistic.json"))
    prompt["train"]["inputs"]["steps"] = 40
    ws.provide_model_files(ui.server.base, prompt)
    load_api(ui, prompt, "training")
    before = overlapping_pairs(geometry(ui.page))
    queue(ui)
    live = wait_display(ui, "ContinuityTrainLoRA", lambda d: "running" in d["text"] and "loss" in d["text"], timeout=120)
    assert "ETA" in live["text"]
    shot(ui, "training_running")
    done = wait_display(ui, "ContinuityTrainLoRA", lambda d: "finished" in d["text"], timeout=120)
    assert "step 40/40" in done["text"] and done["points"] >= 2
    status = wait_display(ui, "ContinuityTrainingStatus", lambda d: "finished" in d["text"] and d["points"] >= 2,
                          timeout=60)
    assert "loss" in status["text"]
    geo = geometry(ui.page)
    shot(ui, "training_finished")
    check_displays(geo)
    assert overlapping_pairs(geo) <= before
    switch_tab_away_and_back(ui)
    wait_display(ui, "ContinuityTrainingStatus", lambda d: d["points"] >= 2, timeout=30)
    shot(ui, "training_after_tab_switch")


def test_templates_browser_shows_the_pack_with_thumbnails(ui):
    """The templates browser lists the pack under its own name, each card with its thumbnail."""
    page = ui.page
    page.eval("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    # the pack's category in the dialog's navigation (named by locales/en/main.json)
    page.wait_for("""Array.from(document.querySelectorAll('[role=dialog] *')).some(e => e.children.length === 0
                     && e.textContent.trim() === 'Continuity')""", timeout=30)
    page.eval("""(() => { const el = Array.from(document.querySelectorAll('[role=dialog] *')).find(e =>
                 e.children.length === 0 && e.textContent.trim() === 'Continuity'); el.click(); })()""")
    # the cards' images once they have loaded: a card without a thumbnail shows the frontend's placeholder
    thumbs = page.wait_for("""(() => {
        const imgs = Array.from(document.querySelectorAll('[role=dialog] img'))
          .filter(i => i.getBoundingClientRect().width > 50);
        return imgs.length && imgs.every(i => i.complete) ? imgs.map(i => [i.src, i.naturalWidth]) : null;
    })()""", timeout=30)
    shot(ui, "templates_browser")
    assert all(w > 0 for _, w in thumbs), thumbs
    placeholders = [src for src, _ in thumbs if "default-template" in src]
    assert placeholders == [], f"{len(placeholders)} of {len(thumbs)} cards without a thumbnail"
    close_dialogs(page)


def close_dialogs(page):
    """Close the dialog as a user does: its close button (or Escape)."""
    page.eval("""(() => {
        const b = Array.from(document.querySelectorAll('[role=dialog] button')).find(b =>
            /close/i.test(b.getAttribute('aria-label') || '') || b.querySelector('.pi-times, [class*=lucide--x]'));
        if (b) b.click();
        else document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', code: 'Escape', bubbles: true}));
    })()""")
    page.wait_for("!document.querySelector('[role=dialog]')", timeout=15)


def similarity_tables(page):
    """Title -> rows of the table on each Face Similarity node."""
    return page.eval(PACK_DISPLAYS_JS + """Object.fromEntries((app.graph.nodes ?? app.graph._nodes)
        .filter(n => n.type === 'ContinuityFaceSimilarity').map(n => [n.title, packDisplays(n).flatMap(d =>
          Array.from(d.querySelectorAll('tbody tr')).map(tr => Array.from(tr.cells).map(td => td.textContent)))]))""")


def test_shipped_layout_after_a_run_keeps_displays_inside_their_nodes(ui):
    """consistency_evaluation as shipped, queued from the page: a table on every similarity node and the
    report, none covering a neighbour or a widget, all back after a workflow-tab switch."""
    graph = json.loads((REPO / "example_workflows" / "consistency_evaluation.json").read_text())
    api = ws.load_api(REPO / "example_workflows" / "api" / "consistency_evaluation.json")
    ws.provide_model_files(ui.server.base, api)
    ws.provide_inputs(ui.server.base, api)
    ui.page.eval("app.graph.clear()")
    ui.page.eval(f"app.loadGraphData({json.dumps(graph)}, true, true, 'consistency_evaluation')")
    ui.page.eval("app.canvas.ds.scale = 0.55; app.canvas.ds.offset = [40, 120]; app.canvas.setDirty(true, true)")
    before = overlapping_pairs(geometry(ui.page))
    queue(ui)
    wait_display(ui, "ContinuityConsistencyReport", lambda d: d["text"], timeout=300)
    try:
        ui.page.wait_for(PACK_DISPLAYS_JS + """(() => { const n = (app.graph.nodes ?? app.graph._nodes)
            .filter(n => n.type === 'ContinuityFaceSimilarity');
            return n.length && n.every(n => packDisplays(n).some(d => d.querySelectorAll('tbody tr').length)); })()""",
                         timeout=120)
    finally:
        shot(ui, "consistency_evaluation_after_run")
    tables = similarity_tables(ui.page)
    # the same person passes against the references, other people do not (last column: passes)
    assert tables["Similarity set 1"] and all(r[-1] == "true" for r in tables["Similarity set 1"])
    assert tables["Similarity set 2"] and all(r[-1] == "false" for r in tables["Similarity set 2"])
    geo = geometry(ui.page)
    check_displays(geo)
    assert overlapping_pairs(geo) <= before, "a node grown for its report covers another"
    # another workflow tab and back: new node objects; the reports come back from the last outputs
    wait_idle(ui)
    switch_tab_away_and_back(ui)
    ui.page.wait_for(PACK_DISPLAYS_JS + """(() => (app.graph.nodes ?? app.graph._nodes)
        .filter(n => n.type === 'ContinuityConsistencyReport').every(n => packDisplays(n).some(d => d.textContent)))()""",
                     timeout=30)
    assert similarity_tables(ui.page) == tables
    shot(ui, "consistency_evaluation_after_tab_switch")
    geo = geometry(ui.page)
    check_displays(geo)
    assert overlapping_pairs(geo) <= before
