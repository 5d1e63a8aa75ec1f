// Continuity: training progress and loss curve drawn on Train LoRA / Training Status nodes.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPES = new Set(["ContinuityTrainLoRA", "ContinuityTrainingStatus"]);
const byJob = new Map(); // job_id -> {state, step, total, loss, eta_s, points: [[step, loss]], node}

function fmtEta(s) {
  if (s == null) return "?";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return (h ? h + "h" : "") + String(m).padStart(h ? 2 : 1, "0") + "m" + String(sec).padStart(2, "0") + "s";
}

function record(d) {
  if (!d || !d.job_id) return null;
  const st = byJob.get(d.job_id) || { points: [] };
  Object.assign(st, { ...d, points: st.points });
  if (Array.isArray(d.losses)) st.points = d.losses.slice();
  else if (Array.isArray(d.point) && (!st.points.length || st.points[st.points.length - 1][0] !== d.point[0])) {
    st.points.push(d.point);
    if (st.points.length > 2000) st.points = st.points.filter((_, i) => i % 2 === 0);
  }
  byJob.set(d.job_id, st);
  return st;
}

function nodeFor(d) {
  const graph = app.graph;
  if (!graph) return null;
  if (d.node != null) {
    const n = graph.getNodeById(Number(d.node)) || graph.getNodeById(d.node);
    if (n) return n;
  }
  return (graph._nodes || []).find((n) => NODE_TYPES.has(n.comfyClass) && n.__continuityJob === d.job_id) || null;
}

api.addEventListener("continuity.train.progress", (ev) => {
  const st = record(ev.detail);
  if (!st) return;
  const node = nodeFor(st);
  if (node) {
    node.__continuityJob = st.job_id;
    node.setDirtyCanvas(true, true);
  }
});

function drawCurve(ctx, node, st) {
  const pad = 6, h = 90;
  const w = node.size[0] - pad * 2;
  const y0 = node.size[1] - h - pad;
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.35)";
  ctx.fillRect(pad, y0, w, h);
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  const loss = st.loss != null ? Number(st.loss).toPrecision(4) : "-";
  const line = `${st.state || ""}  ${st.step ?? 0}/${st.total ?? "?"}  loss ${loss}  ETA ${fmtEta(st.eta_s)}`;
  ctx.fillText(line, pad + 4, y0 + 13);
  if (st.total) {
    ctx.fillStyle = "#4a8";
    ctx.fillRect(pad, y0 + h - 4, (w * Math.min(st.step || 0, st.total)) / st.total, 4);
  }
  const pts = st.points || [];
  if (pts.length > 1) {
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const xmin = Math.min(...xs), xmax = Math.max(...xs, xmin + 1);
    const ymin = Math.min(...ys), ymax = Math.max(...ys, ymin + 1e-9);
    ctx.strokeStyle = "#6cf";
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    pts.forEach(([x, y], i) => {
      const px = pad + ((x - xmin) / (xmax - xmin)) * w;
      const py = y0 + 18 + (1 - (y - ymin) / (ymax - ymin)) * (h - 26);
      i ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
    });
    ctx.stroke();
  }
  ctx.restore();
}

app.registerExtension({
  name: "continuity.training",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const items = message?.continuity_train;
      if (Array.isArray(items) && items[0]) {
        const st = record({ ...items[0], node: this.id });
        if (st) this.__continuityJob = st.job_id;
        this.setDirtyCanvas(true, true);
      }
    };
    const onDraw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDraw?.apply(this, arguments);
      if (this.flags?.collapsed || !this.__continuityJob) return;
      const st = byJob.get(this.__continuityJob);
      if (!st) return;
      if (this.size[1] < 200) this.size[1] = 200;
      drawCurve(ctx, this, st);
    };
  },
});
