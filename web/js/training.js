// Continuity: live training progress (state, step, loss, ETA) and the loss curve on Train LoRA
// and Training Status. The server sends "continuity.train.progress" events while a job runs
// ({job_id, node, state, step, total, loss, eta_s, point: [step, loss]} and on a finished,
// failed or cancelled job its last state), and each node returns
// ui={"continuity_train": [status]} (Training Status' status carries "losses": [[step, loss], ...]).
// The display is a DOM widget with its own space in the node, so it shows in the LiteGraph
// canvas and in the Nodes 2.0 renderer alike, and never covers the node's inputs.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { ensureStyle, fitNode, lastOutput, nodesOfTypes } from "./continuity_layout.js";

const NODE_TYPES = new Set(["ContinuityTrainLoRA", "ContinuityTrainingStatus"]);
const HEIGHT = 150;
const MAX_POINTS = 2000;
const byJob = new Map(); // job_id -> {state, step, total, loss, eta_s, points: [[step, loss]], ...}

const STYLE = `
.continuity-train { font: 11px/1.35 system-ui, sans-serif; color: var(--input-text, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; padding: 4px 6px; width: 100%;
  height: 100%; box-sizing: border-box; display: flex; flex-direction: column; gap: 3px; overflow: hidden; }
.continuity-train .ct-line { flex: none; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.continuity-train .ct-bar { height: 4px; background: #333; border-radius: 2px; flex: none; }
.continuity-train .ct-bar > div { height: 100%; width: 0; background: #4a8; border-radius: 2px; }
.continuity-train svg { flex: 1 1 auto; min-height: 30px; width: 100%; }
.continuity-train .ct-curve { fill: none; stroke: #6cf; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.continuity-train .ct-axis { fill: #999; font-size: 9px; }
.continuity-train.ct-failed .ct-line { color: #ff8a80; }`;

export function fmtEta(s) {
  if (s == null || !Number.isFinite(Number(s))) return "?";
  s = Math.max(0, Number(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return (h ? h + "h" : "") + String(m).padStart(h ? 2 : 1, "0") + "m" + String(sec).padStart(2, "0") + "s";
}

/** Merge a status message into the job's state; returns the state. */
export function record(d) {
  if (!d || !d.job_id) return null;
  const st = byJob.get(d.job_id) || { points: [] };
  const points = st.points;
  // "unknown" is what a server says of a job it has no record of: what this page saw stands
  const keep = d.state === "unknown" && st.state && st.state !== "unknown";
  for (const [k, v] of Object.entries(d)) {
    if (v === undefined || k === "losses" || k === "point") continue;
    if (keep && (k === "state" || k === "step" || k === "loss")) continue;
    st[k] = v;
  }
  st.points = points;
  if (Array.isArray(d.losses) && d.losses.length >= points.length) {
    st.points = d.losses.filter((p) => Array.isArray(p) && p.length >= 2).map((p) => [Number(p[0]), Number(p[1])]);
  } else if (Array.isArray(d.point) && d.point.length >= 2) {
    // kept in step order, one point per step: messages from the node and from the job registry
    // can arrive interleaved
    const p = [Number(d.point[0]), Number(d.point[1])];
    let i = points.length;
    while (i > 0 && points[i - 1][0] > p[0]) i--;
    if (i > 0 && points[i - 1][0] === p[0]) points[i - 1] = p;
    else points.splice(i, 0, p);
    if (points.length > MAX_POINTS) st.points = points.filter((_, i) => i % 2 === 0);
  }
  byJob.set(d.job_id, st);
  return st;
}

function statusLines(st) {
  const first = [st.state || "waiting"];
  if (st.total || st.step) first.push(`step ${st.step ?? 0}/${st.total ?? "?"}`);
  if (st.epochs) first.push(`epoch ${st.epoch ?? 0}/${st.epochs}`);
  const second = [];
  if (st.loss != null) second.push(`loss ${Number(st.loss).toPrecision(4)}`);
  if (st.state === "running") second.push(`ETA ${fmtEta(st.eta_s)}`);
  if (st.lora_name && st.state === "finished") second.push(st.lora_name);
  if (st.error) second.push(String(st.error).trim().split("\n").pop());
  return [first.join(" · "), second.join(" · ")];
}

const SVG = "http://www.w3.org/2000/svg";

function buildElement() {
  const el = document.createElement("div");
  el.className = "continuity-train";
  const line = document.createElement("div");
  line.className = "ct-line";
  line.textContent = "no training yet";
  const line2 = document.createElement("div");
  line2.className = "ct-line";
  const bar = document.createElement("div");
  bar.className = "ct-bar";
  bar.appendChild(document.createElement("div"));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 100 100");
  svg.setAttribute("preserveAspectRatio", "none");
  const curve = document.createElementNS(SVG, "polyline");
  curve.setAttribute("class", "ct-curve");
  svg.appendChild(curve);
  el.append(line, line2, bar, svg);
  return el;
}

function draw(el, st) {
  el.classList.toggle("ct-failed", st.state === "failed" || st.state === "cancelled");
  const lines = el.querySelectorAll(".ct-line");
  statusLines(st).forEach((text, i) => {
    lines[i].textContent = text;
    lines[i].title = i === 1 && st.error ? String(st.error) : text;
  });
  const frac = st.total ? Math.min(1, (st.step || 0) / st.total) : st.state === "finished" ? 1 : 0;
  el.querySelector(".ct-bar > div").style.width = `${(100 * frac).toFixed(1)}%`;
  const pts = st.points || [];
  const curve = el.querySelector(".ct-curve");
  if (pts.length < 2) {
    curve.setAttribute("points", "");
    return;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const xmin = Math.min(...xs), xmax = Math.max(...xs, xmin + 1);
  const ymin = Math.min(...ys), ymax = Math.max(...ys, ymin + 1e-9);
  curve.setAttribute("points", pts.map(([x, y]) =>
    `${((100 * (x - xmin)) / (xmax - xmin)).toFixed(2)},${(96 - (92 * (y - ymin)) / (ymax - ymin)).toFixed(2)}`).join(" "));
  el.dataset.points = String(pts.length);
}

function trainWidget(node) {
  if (node.continuityTrain) return node.continuityTrain;
  ensureStyle(STYLE);
  const el = buildElement();
  node.continuityTrain = node.addDOMWidget("continuity_training", "continuity_training", el, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => HEIGHT,
    getMaxHeight: () => HEIGHT,
  });
  node.continuityTrain.serialize = false; // not saved in widgets_values: it shows outputs, it holds no input
  return node.continuityTrain;
}

function show(node, st) {
  if (!st) return;
  node.continuityJob = st.job_id;
  draw(trainWidget(node).element, st);
  node.setDirtyCanvas?.(true, true);
}

function nodeFor(d) {
  const nodes = nodesOfTypes((n) => NODE_TYPES.has(n.comfyClass ?? n.type));
  // the node that runs the job, and every node already showing it (a Training Status)
  const id = d.node != null ? String(d.node).split(":").pop() : null;
  return nodes.filter((n) => String(n.id) === id || n.continuityJob === d.job_id);
}

api.addEventListener("continuity.train.progress", (ev) => {
  const st = record(ev.detail);
  if (!st) return;
  for (const node of nodeFor(ev.detail)) show(node, st);
});

function restore(node) {
  const item = lastOutput(node)?.continuity_train?.[0];
  if (item?.job_id) show(node, record(item));
}

app.registerExtension({
  name: "continuity.training",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      trainWidget(this);
      // room for the display below the inputs, taken from free canvas space only
      fitNode(this, this.size[0], 0);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const item = message?.continuity_train?.[0];
      if (item?.job_id) show(this, record(item));
    };
  },
  onNodeOutputsUpdated() {
    for (const node of nodesOfTypes((n) => NODE_TYPES.has(n.comfyClass ?? n.type))) restore(node);
  },
  loadedGraphNode(node) {
    if (!NODE_TYPES.has(node.comfyClass ?? node.type)) return;
    fitNode(node, node.size[0], 0); // a workflow saved before the display existed
    restore(node);
  },
});
