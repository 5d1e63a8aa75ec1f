// Continuity: shared helpers of the pack's displays (tables, reports, the loss curve).
// A display lives in a DOM widget of its node; the node grows to show it only into free canvas
// space, so that it never covers a neighbour, and the display scrolls inside its widget.
import { app } from "../../../scripts/app.js";

const GAP = 12; // kept free between a grown node and its neighbours

function nodesOf(graph) {
  return graph?.nodes ?? graph?._nodes ?? [];
}

function titleHeight() {
  return globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
}

/** The id under which the frontend keeps a node's last output (app.nodeOutputs). */
export function outputKey(node) {
  const root = app.rootGraph ?? app.graph;
  const graph = node.graph;
  return graph && root && graph !== root && graph.id ? `${graph.id}:${node.id}` : String(node.id);
}

/** The node's last output as the frontend keeps it (restored with the workflow on a tab switch). */
export function lastOutput(node) {
  return app.nodeOutputs?.[outputKey(node)];
}

/** [x, y, w, h] of a node, title bar included. */
function box(node) {
  const t = titleHeight();
  const collapsed = node.flags?.collapsed;
  const w = collapsed ? (node._collapsed_width ?? 120) : node.size[0];
  const h = collapsed ? t : node.size[1] + t;
  return [node.pos[0], node.pos[1] - t, w, h];
}

/**
 * The largest [width, height] (body, without the title) up to ``want`` that the node can take
 * at its position without reaching another node, never less than its current size.
 */
export function roomFor(node, want) {
  const [x, top] = box(node);
  const others = nodesOf(node.graph ?? app.graph).filter((o) => o !== node && o.pos && o.size).map(box);
  const bottomOf = (h) => node.pos[1] + h;
  // width first, over the rows the grown node would span
  let w = Math.max(node.size[0], want[0]);
  const spanBottom = bottomOf(Math.max(node.size[1], want[1]));
  for (const [ox, oy, ow, oh] of others) {
    if (oy < spanBottom + GAP && oy + oh > top - GAP && ox >= x + 1 && ox < x + w + GAP) {
      w = Math.max(node.size[0], Math.min(w, ox - GAP - x));
    }
  }
  // then height, over the columns of that width
  let h = Math.max(node.size[1], want[1]);
  for (const [ox, oy, ow] of others) {
    if (ox < x + w + GAP && ox + ow > x - GAP && oy >= top + 1 && oy < bottomOf(h) + GAP) {
      h = Math.max(node.size[1], Math.min(h, oy - GAP - node.pos[1]));
    }
  }
  return [w, h];
}

/**
 * Size ``node`` for a display that would like ``wantWidth`` and ``extraHeight`` more height than
 * the node's minimum layout (or, with ``grow``, than its current height): as much as the free
 * space around it allows. The display scrolls for the rest.
 */
export function fitNode(node, wantWidth, extraHeight, grow = false) {
  const min = node.computeSize?.() ?? node.size;
  const base = grow ? node.size[1] : min[1];
  const want = [Math.max(min[0], wantWidth), base + Math.max(0, extraHeight)];
  const [w, h] = roomFor(node, want);
  const size = [Math.max(w, min[0]), Math.max(h, min[1])];
  if (size[0] !== node.size[0] || size[1] !== node.size[1]) {
    if (node.setSize) node.setSize(size);
    else node.size = size;
    // the open workflow's saved state takes the new size, so that coming back to its tab does not
    // bring back the smaller node (whose images would then spill out of it)
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }
  node.setDirtyCanvas?.(true, true);
  node.graph?.setDirtyCanvas?.(true, true);
}

const STYLE_ID = "continuity-style";

/** Inject the pack's stylesheet once. */
export function ensureStyle(css) {
  let s = document.getElementById(STYLE_ID);
  if (!s) {
    s = document.createElement("style");
    s.id = STYLE_ID;
    document.head.appendChild(s);
  }
  if (!s.textContent.includes(css)) s.textContent += css;
}

/** Every node of the open graph (subgraphs included) whose class is one of ``types``. */
export function nodesOfTypes(types) {
  const root = app.rootGraph ?? app.graph;
  const out = [];
  const visit = (graph) => {
    for (const n of nodesOf(graph)) {
      if (types(n)) out.push(n);
    }
  };
  visit(root);
  for (const sg of root?.subgraphs?.values?.() ?? []) visit(sg);
  return out;
}
