// Continuity web extension: shows the tables and text reports our nodes return in their UI output.
// A node returns ui={"continuity_table": [{"title": str, "columns": [...], "rows": [[...], ...]}],
//                    "continuity_text": [str, ...]}
// and the report appears in a DOM widget of the node after the run. It is drawn again from the
// node's last output (which the frontend keeps with each open workflow) when the user comes back
// to the workflow's tab, and it scrolls inside the node, which grows only into free space.
import { app } from "../../../scripts/app.js";
import { ensureStyle, fitNode, lastOutput, nodesOfTypes } from "./continuity_layout.js";

const STYLE = `
.continuity-report { font: 11px/1.35 system-ui, sans-serif; color: var(--input-text, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; padding: 4px 6px; overflow: auto;
  width: 100%; height: 100%; box-sizing: border-box; }
.continuity-report table { border-collapse: collapse; min-width: 100%; margin-bottom: 6px; }
.continuity-report th, .continuity-report td { border-bottom: 1px solid #444; padding: 1px 4px;
  text-align: right; white-space: nowrap; }
.continuity-report th { position: sticky; top: 0; background: var(--comfy-input-bg, #222); }
.continuity-report th:first-child, .continuity-report td:first-child { text-align: left; }
.continuity-report caption { text-align: left; font-weight: 600; padding-bottom: 2px; }
.continuity-report .bad { color: #ff8a80; } .continuity-report .good { color: #a5d6a7; }
.continuity-report pre { white-space: pre-wrap; margin: 0; }`;

const LINE = 16;         // px per table row or text line
const MIN_HEIGHT = 64;   // the report's smallest space: a few lines, the rest scrolls
const MAX_HEIGHT = 320;  // past this the report scrolls even where the canvas is free
const MAX_WIDTH = 560;

function isOurs(node) {
  return String(node?.comfyClass ?? node?.type ?? "").startsWith("Continuity");
}

function hasReport(message) {
  return !!(message?.continuity_table?.length || message?.continuity_text?.length);
}

function cell(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (value === null || value === undefined) return "—";
  return String(value);
}

export function renderReport(container, message) {
  container.replaceChildren();
  for (const table of message.continuity_table ?? []) {
    const t = document.createElement("table");
    if (table.title) t.createCaption().textContent = table.title;
    const head = t.createTHead().insertRow();
    for (const c of table.columns ?? []) {
      const th = document.createElement("th");
      th.textContent = c;
      head.appendChild(th);
    }
    const body = t.createTBody();
    for (const row of table.rows ?? []) {
      const tr = body.insertRow();
      row.forEach((v, i) => {
        const td = tr.insertCell();
        td.textContent = cell(v);
        const flag = table.flags?.[i];
        if (flag && typeof v === "boolean") td.className = v ? "good" : "bad";
      });
    }
    container.appendChild(t);
  }
  for (const text of message.continuity_text ?? []) {
    const pre = document.createElement("pre");
    pre.textContent = text;
    container.appendChild(pre);
  }
}

/** The space the report would like: [width, height] in canvas pixels. */
function wantedSize(message) {
  let lines = 0;
  let chars = 0;
  for (const t of message.continuity_table ?? []) {
    lines += (t.rows?.length ?? 0) + (t.title ? 2 : 1);
    const cols = t.columns ?? [];
    const widths = cols.map((c, i) => Math.max(String(c).length,
      ...(t.rows ?? []).slice(0, 50).map((r) => cell(r[i]).length)));
    chars = Math.max(chars, widths.reduce((a, b) => a + b + 2, 0));
  }
  for (const text of message.continuity_text ?? []) {
    const rows = String(text).split("\n");
    lines += rows.length;
    chars = Math.max(chars, Math.min(80, Math.max(...rows.map((r) => r.length))));
  }
  return [Math.min(MAX_WIDTH, 24 + chars * 6.2), Math.min(MAX_HEIGHT, 14 + lines * LINE)];
}

function reportWidget(node) {
  if (node.continuityReport) return node.continuityReport;
  ensureStyle(STYLE);
  const el = document.createElement("div");
  el.className = "continuity-report";
  // the canvas must not zoom or drag when the user scrolls the report
  el.addEventListener("wheel", (e) => {
    if (el.scrollHeight > el.clientHeight || el.scrollWidth > el.clientWidth) e.stopPropagation();
  }, { passive: true });
  node.continuityReport = node.addDOMWidget("continuity_report", "continuity_report", el, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => MIN_HEIGHT,
    getMaxHeight: () => node.continuityReportHeight ?? MAX_HEIGHT,
  });
  node.continuityReport.serialize = false; // not saved in widgets_values: it shows outputs, it holds no input
  return node.continuityReport;
}

/** The height the rendered report takes, measured once it is laid out (0 if it is not yet). */
function contentHeight(el) {
  if (!el.isConnected || !el.clientWidth) return 0;
  let h = 8; // padding
  for (const child of el.children) {
    const cs = getComputedStyle(child);
    h += child.offsetHeight + parseFloat(cs.marginTop || 0) + parseFloat(cs.marginBottom || 0);
  }
  if (el.scrollWidth > el.clientWidth + 1) h += 14; // the horizontal scrollbar
  return h;
}

/** Show ``message``'s report on ``node`` (once per message: redraws reuse what is there). */
export function showReport(node, message) {
  if (!hasReport(message)) return;
  const widget = reportWidget(node);
  if (node.continuityReportShown === message) return;
  node.continuityReportShown = message;
  const el = widget.element;
  renderReport(el, message);
  const [width, estimate] = wantedSize(message);
  node.continuityReportHeight = Math.max(MIN_HEIGHT, estimate);
  fitNode(node, width, node.continuityReportHeight - MIN_HEIGHT);
  // then, with the real layout: grow the node by what the report still lacks, as far as the
  // free space allows (the renderer decides how a node's space is shared between its widgets)
  let tries = 0;
  let lastClient = -1;
  const settle = () => {
    if (node.continuityReportShown !== message || tries++ > 8) return;
    const want = contentHeight(el);
    if (!want) return requestAnimationFrame(settle);
    const target = Math.min(MAX_HEIGHT, Math.max(MIN_HEIGHT, want));
    const lack = target - el.clientHeight;
    if (lack <= 2 || el.clientHeight === lastClient) return; // fits, or the node can grow no more
    lastClient = el.clientHeight;
    // the widget's share of the node includes the renderer's margins around the element
    node.continuityReportHeight = Math.min(MAX_HEIGHT + 40, node.continuityReportHeight + lack);
    fitNode(node, width, lack, true);
    requestAnimationFrame(() => requestAnimationFrame(settle));
  };
  requestAnimationFrame(settle);
}

function restore(node) {
  const out = lastOutput(node);
  if (hasReport(out)) showReport(node, out);
}

app.registerExtension({
  name: "continuity.reports",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith?.("Continuity")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      showReport(this, message);
    };
  },
  // a workflow opened again (tab switch, reload) gets its nodes' last outputs back
  onNodeOutputsUpdated() {
    for (const node of nodesOfTypes(isOurs)) restore(node);
  },
  loadedGraphNode(node) {
    if (isOurs(node)) restore(node);
  },
});
