// Continuity web extension: shows the tables and text reports our nodes return in their UI output.
// A node returns ui={"continuity_table": [{"title": str, "columns": [...], "rows": [[...], ...]}],
//                    "continuity_text": [str, ...]}
// and the table appears on the node after the run (and is kept with the workflow's last run).
import { app } from "../../../scripts/app.js";

const STYLE = `
.continuity-report { font: 11px/1.35 system-ui, sans-serif; color: var(--input-text, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; padding: 6px; overflow: auto;
  max-height: 100%; box-sizing: border-box; }
.continuity-report table { border-collapse: collapse; width: 100%; margin-bottom: 6px; }
.continuity-report th, .continuity-report td { border-bottom: 1px solid #444; padding: 2px 4px;
  text-align: right; white-space: nowrap; }
.continuity-report th:first-child, .continuity-report td:first-child { text-align: left; }
.continuity-report caption { text-align: left; font-weight: 600; padding-bottom: 2px; }
.continuity-report .bad { color: #ff8a80; } .continuity-report .good { color: #a5d6a7; }
.continuity-report pre { white-space: pre-wrap; margin: 0; }`;

function ensureStyle() {
  if (document.getElementById("continuity-style")) return;
  const s = document.createElement("style");
  s.id = "continuity-style";
  s.textContent = STYLE;
  document.head.appendChild(s);
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

app.registerExtension({
  name: "continuity.reports",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith?.("Continuity")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (!message?.continuity_table && !message?.continuity_text) return;
      ensureStyle();
      if (!this.continuityReport) {
        const el = document.createElement("div");
        el.className = "continuity-report";
        this.continuityReport = this.addDOMWidget("continuity_report", "continuity_report", el, {
          serialize: false,
          getMinHeight: () => this.continuityReportHeight ?? 80,
        });
      }
      renderReport(this.continuityReport.element, message);
      // room for the table: a line per row (up to 14 rows; more scroll), text reports as they are
      const rows = (message.continuity_table ?? []).reduce((n, t) => n + (t.rows?.length ?? 0) + 2, 0);
      const lines = (message.continuity_text ?? []).reduce((n, t) => n + String(t).split("\n").length, 0);
      this.continuityReportHeight = Math.min(340, 40 + 17 * (Math.min(rows, 14) + Math.min(lines, 8)));
      const wanted = Math.max(this.size[0], 480);
      this.setSize([wanted, Math.max(this.size[1], this.computeSize([wanted, 0])[1])]);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
