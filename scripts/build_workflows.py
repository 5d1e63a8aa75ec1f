#!/usr/bin/env python3
"""Build the UI-format workflows in example_workflows/ from their API-format sources in example_workflows/api/.

The API files are the source of truth (they are what scripts POST to /prompt). The UI files are
made by the real ComfyUI frontend: a live server with the pack, headless Chromium, then
``app.loadApiJson`` and ``app.graph.serialize()``, so they load exactly as a user's saved
workflow does. A node's ``_meta.note`` (ignored by the server) becomes a Note beside that node,
used to name the model files the user must supply.

    .testenv/venv/bin/python scripts/build_workflows.py            # all
    .testenv/venv/bin/python scripts/build_workflows.py face_fix   # some
"""
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))
import harness

API_DIR = REPO / "example_workflows" / "api"
UI_DIR = REPO / "example_workflows"

JS_BUILD = """
(async () => {
  const api = %s;
  const notes = %s;
  await app.loadApiJson(api, %s);
  // image and video loaders grow when the user's file shows its preview: make room before arranging
  for (const n of app.graph._nodes) {
    if (["LoadImage", "LoadImageMask", "LoadVideo"].includes(n.type)) {
      n.size = [Math.max(n.size[0], 320), Math.max(n.size[1], 460)];
    }
  }
  app.graph.arrange?.();
  for (const [nodeId, text] of Object.entries(notes)) {
    const target = app.graph.getNodeById(Number(nodeId)) ?? app.graph.getNodeById(nodeId);
    const note = LiteGraph.createNode("Note");
    note.widgets[0].value = text;
    note.title = "Note: model files";
    note.size = [320, 140];
    app.graph.add(note);
    if (target) note.pos = [target.pos[0], target.pos[1] - 190];
  }
  const g = app.graph.serialize();
  return JSON.stringify(g);
})()
"""


def numeric_ids(api: dict) -> tuple[dict, dict]:
    """The frontend needs numeric node ids: map ours (which may be names) to 1..N."""
    mapping = {nid: str(i + 1) for i, nid in enumerate(api)}
    out = {}
    for nid, node in api.items():
        node = json.loads(json.dumps(node))
        for k, v in node.get("inputs", {}).items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in mapping:
                node["inputs"][k] = [mapping[v[0]], v[1]]
        out[mapping[nid]] = node
    return out, mapping


def main(names):
    specs = sorted(API_DIR.glob("*.json"))
    if names:
        specs = [p for p in specs if p.stem in names]
    with tempfile.TemporaryDirectory() as tmp:
        base = harness.make_base_dir(Path(tmp) / "comfy")
        server = harness.LiveServer(base, Path(tmp) / "server.log").start()
        browser = None
        try:
            server.request("POST", "/settings/Comfy.TutorialCompleted", True)
            browser = harness.Browser(Path(tmp) / "profile").start(server.url)
            browser.wait_for("!!(window.app && window.app.graph && Object.keys(LiteGraph.registered_node_types).length > 100)",
                             timeout=120)
            for path in specs:
                api = json.loads(path.read_text())
                api_num, mapping = numeric_ids(api)
                notes = {mapping[nid]: n["_meta"]["note"] for nid, n in api.items() if n.get("_meta", {}).get("note")}
                for node in api_num.values():
                    node.get("_meta", {}).pop("note", None)
                browser.eval("app.graph.clear()")
                ui = json.loads(browser.eval(JS_BUILD % (json.dumps(api_num), json.dumps(notes), json.dumps(path.stem))))
                missing = browser.eval("app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)")
                if missing:
                    raise SystemExit(f"{path.name}: the frontend does not know {missing}")
                ui.setdefault("extra", {})["continuity"] = {"api": f"example_workflows/api/{path.name}"}
                out = UI_DIR / path.name
                out.write_text(json.dumps(ui, indent=1) + "\n")
                print(f"wrote {out.relative_to(REPO)} ({len(ui['nodes'])} nodes)")
        finally:
            if browser:
                browser.stop()
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
