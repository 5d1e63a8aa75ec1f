#!/usr/bin/env python3
"""Build the UI-format workflows in example_workflows/ from their API-format sources in example_workflows/api/.

The API files are the source of truth (they are what scripts POST to /prompt). The UI files are
made by the real ComfyUI frontend: a live server with the pack, headless Chromium, then
``app.loadApiJson`` and ``app.graph.serialize()``, so they load exactly as a user's saved
workflow does. A node's ``_meta.note`` (ignored by the server) becomes a Note beside that node,
used to name the model files the user must supply.

Each UI workflow gets its templates-browser thumbnail, ``example_workflows/NAME.jpg``: a screenshot
of the graph as the frontend draws it, under a band with the workflow's title and what it does
(the browser itself shows only the file name for a custom node's template).

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

# The title and one line on each workflow, shown on its thumbnail. A workflow not listed here gets
# its file name as a title.
TITLES = {
    "character_grow_layer": ("Grow a character layer", "Generate one framing, keep what matches the character, add it as a new dataset version"),
    "character_profile": ("Character profile", "Reference portraits to a saved character: trigger word, class phrase, identity"),
    "character_record_training": ("Record a training", "Train a character's LoRA and record it in the character's profile"),
    "character_training_plan": ("Character training plan", "Multi-stage LoRA training with the two-step fix-and-retrain loop"),
    "check_identity_model": ("Check an identity model", "How well a face-recognition model separates your references"),
    "clip_metrics": ("CLIP / DINO similarity", "Image-level similarity of candidates to references"),
    "consistency_evaluation": ("Consistency evaluation", "Identity similarity of shot sets to reference portraits, with report and plots"),
    "dataset_preparation": ("Dataset preparation", "Cut, square, audit, caption and save a versioned training dataset"),
    "face_fix": ("Face fix", "Every face of every image fixed by inpainting with the character LoRA, in one node"),
    "face_fix_two_pass": ("Face fix, step by step", "Mask, Lanczos crop, two inpainting passes and paste back"),
    "feedback_loop": ("Feedback loop", "Score, fix the weak images, and make the next dataset version"),
    "generate_with_lora": ("Generate with the LoRA", "Text to image with the trained LoRA, scored against the references"),
    "train_flux_animated": ("Train: Flux.1 Schnell, animated", "The paper's animated-character LoRA preset with kohya-ss sd-scripts"),
    "train_sdxl_realistic": ("Train: SDXL, realistic", "The paper's realistic-character LoRA preset with kohya-ss sd-scripts"),
    "train_shot_type": ("Train: shot-type LoRA", "A close-up, medium or long-shot LoRA continuing from the character LoRA"),
    "cast_face_fix": ("Cast face fix", "Every character of a still found by identity and fixed with their own LoRA"),
    "video_shot_face_fix": ("Video shot face fix", "A shot's faces tracked and fixed frame by frame, with the flicker report"),
    "video_crop_sequence": ("Video crop sequence", "A face track's stable crops, for a video inpainting model, pasted back"),
    "video_identity_motion": ("Video identity and motion", "Identity over the frames of a shot and its motion intensity"),
}

THUMB = 512        # px, square: the templates browser crops its cards to squares
BAND = 104         # px of the caption band under the graph

# Hide the page around the canvas for the screenshot: only the graph (and the DOM widgets drawn
# over it, such as text boxes) stays visible.
JS_GRAPH_ONLY = """
(() => {
  let s = document.getElementById('continuity-thumbnail-style');
  if (!s) { s = document.createElement('style'); s.id = 'continuity-thumbnail-style'; document.head.appendChild(s); }
  s.textContent = `body * { visibility: hidden !important; }
    .continuity-thumbnail-visible, .dom-widget, .dom-widget * { visibility: visible !important; }`;
  app.canvas.canvas.classList.add('continuity-thumbnail-visible');
  app.canvas.deselectAll?.();
  app.canvas.min_font_size_for_lod = 0;  // node text drawn even on a zoomed-out graph
  const nodes = app.graph.nodes ?? app.graph._nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const r = app.canvas.canvas.getBoundingClientRect();
  const pad = 30, w = x1 - x0 + 2 * pad, h = y1 - y0 + 2 * pad;
  const scale = Math.min(r.width / w, r.height / h, 1.2);
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [(r.width / scale - (x1 - x0)) / 2 - x0, (r.height / scale - (y1 - y0)) / 2 - y0];
  app.canvas.setDirty(true, true);
  return new Promise((res) => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(() => {
    const [ax, ay] = app.canvas.ds.convertOffsetToCanvas([x0 - pad, y0 - pad]);
    const [bx, by] = app.canvas.ds.convertOffsetToCanvas([x1 + pad, y1 + pad]);
    res([r.left + Math.max(0, ax), r.top + Math.max(0, ay), Math.min(r.width, bx) - Math.max(0, ax),
         Math.min(r.height, by) - Math.max(0, ay)]);
  }, 300))));
})()
"""

JS_BUILD = """
(async () => {
  const api = %s;
  const notes = %s;
  // the pack's nodes that show a table or text report after a run (web/js/continuity.js)
  const REPORT_NODES = ["ContinuityFaceSimilarity", "ContinuityConsistencyReport", "ContinuityFaceRegionMask",
                        "ContinuityFaceFix"];
  await app.loadApiJson(api, %s);
  // image and video loaders grow when the user's file shows its preview: make room before arranging
  for (const n of app.graph._nodes) {
    if (["LoadImage", "LoadImageMask", "LoadVideo"].includes(n.type)) {
      n.size = [Math.max(n.size[0], 320), Math.max(n.size[1], 460)];
    }
    // so do image savers and previews for the image they will show, and the pack's output nodes
    // for the table or report they show after a run (it scrolls when it needs more)
    if (["SaveImage", "PreviewImage"].includes(n.type)) {
      n.size = [Math.max(n.size[0], 300), Math.max(n.size[1], 300)];
    } else if (REPORT_NODES.includes(n.type)) {
      n.size = [Math.max(n.size[0], 340), n.size[1] + 150];
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
  app.canvas.ds.scale = 1;  // the view the file opens with, whatever the last thumbnail needed
  app.canvas.ds.offset = [0, 0];
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


def _font(size: int, bold: bool = False):
    from PIL import ImageFont
    import matplotlib
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / name
    return ImageFont.truetype(str(path), size)


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return [*lines, line] if line else lines


def thumbnail(browser, stem: str, out: Path) -> None:
    """The graph as the frontend draws it, fitted into a square, under its title and description."""
    import base64
    import io

    from PIL import Image, ImageDraw
    x, y, w, h = browser.eval(JS_GRAPH_ONLY)
    data = browser.send("Page.captureScreenshot", format="png",
                        clip={"x": x, "y": y, "width": max(1, w), "height": max(1, h), "scale": 1})["data"]
    graph = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    bg = graph.getpixel((2, 2))
    img = Image.new("RGB", (THUMB, THUMB), bg)
    room = (THUMB - 16, THUMB - BAND - 12)
    graph.thumbnail(room, Image.Resampling.LANCZOS)
    # the graph above, the caption band below (newer frontends put badges on a card's top corners)
    img.paste(graph, ((THUMB - graph.width) // 2, (THUMB - BAND - graph.height) // 2))
    draw = ImageDraw.Draw(img)
    top = THUMB - BAND
    draw.rectangle((0, top, THUMB, THUMB), fill=(24, 28, 36))
    draw.line((0, top, THUMB, top), fill=(80, 160, 120), width=3)
    title, desc = TITLES.get(stem, (stem.replace("_", " ").capitalize(), ""))
    size = 28
    while size > 16 and draw.textlength(title, font=_font(size, bold=True)) > THUMB - 36:
        size -= 1
    draw.text((18, top + 14 + (28 - size) // 2), title, font=_font(size, bold=True), fill=(240, 240, 240))
    for i, line in enumerate(_wrap(draw, desc, _font(16), THUMB - 36)[:2]):
        draw.text((18, top + 54 + 21 * i), line, font=_font(16), fill=(190, 198, 210))
    img.save(out, "JPEG", quality=85, optimize=True)


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
            # a square page, so that graphs fill their square thumbnails
            browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=1400, deviceScaleFactor=1,
                         mobile=False)
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
                # the thumbnail from the saved file, loaded as the templates browser loads it
                browser.eval(f"app.loadGraphData({json.dumps(ui)}, true, true, {json.dumps(path.stem)})")
                thumbnail(browser, path.stem, out.with_suffix(".jpg"))
                browser.eval("document.getElementById('continuity-thumbnail-style')?.remove()")
                print(f"wrote {out.relative_to(REPO)} ({len(ui['nodes'])} nodes) and its thumbnail")
        finally:
            if browser:
                browser.stop()
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
