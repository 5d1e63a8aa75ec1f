"""Charts of identity scores (matplotlib, Agg backend), returned as float RGB arrays (H, W, 3).

- :func:`bar_chart`: mean similarity per candidate set and model with standard deviation bars,
  the model's threshold and the reference baseline marked (the paper's Fig. 5 style).
- :func:`embedding_heatmap` / :func:`embedding_lines`: the embedding vectors of the images of each
  set as a heatmap and as lines (the paper's Fig. 7 style).
- :func:`time_plot`: per-frame similarity over time (identity over frames).
"""
from __future__ import annotations

import threading

import numpy as np

_plot_lock = threading.Lock()   # pyplot's state is global


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    return (buf.astype(np.float32) / 255.0).copy()


def bar_chart(summary: list[dict], title: str = "Identity similarity to the references",
              size=(8.0, 4.5), dpi: int = 100) -> np.ndarray:
    """``summary`` rows have set, model, mean, std, threshold, reference_baseline (None allowed)."""
    plt = _plt()
    sets = list(dict.fromkeys(r["set"] for r in summary))
    models = list(dict.fromkeys(r["model"] for r in summary))
    with _plot_lock:
        fig, ax = plt.subplots(figsize=size, dpi=dpi)
        try:
            width = 0.8 / max(1, len(models))
            x = np.arange(len(sets))
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            for k, m in enumerate(models):
                rows = {r["set"]: r for r in summary if r["model"] == m}
                means = [rows[s]["mean"] if s in rows and rows[s]["mean"] is not None else np.nan for s in sets]
                stds = [rows[s]["std"] if s in rows and rows[s]["std"] is not None else 0.0 for s in sets]
                pos = x - 0.4 + width * (k + 0.5)
                c = colors[k % len(colors)]
                bars = ax.bar(pos, means, width * 0.9, yerr=stds, capsize=3, label=m, color=c)
                for b, s, v in zip(bars, sets, means):
                    if np.isnan(v):
                        ax.text(b.get_x() + b.get_width() / 2, 0.02, "no face", ha="center", va="bottom",
                                rotation=90, fontsize=7)
                    else:
                        ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center",
                                va="bottom", fontsize=7)
                any_row = next(iter(rows.values()), None)
                if any_row is not None:
                    ax.hlines(any_row["threshold"], pos.min() - width / 2, pos.max() + width / 2, colors=c,
                              linestyles="dashed", linewidth=1)
                    base = any_row.get("reference_baseline")
                    if base is not None:
                        ax.hlines(base, pos.min() - width / 2, pos.max() + width / 2, colors=c,
                                  linestyles="dotted", linewidth=1)
            ax.set_xticks(x)
            ax.set_xticklabels(sets)
            ax.set_ylabel("mean cosine similarity")
            ax.set_ylim(0, 1.08)
            ax.set_title(title + "\n(dashed: model threshold, dotted: references among themselves)", fontsize=10)
            ax.legend(fontsize=8, loc="lower right")
            fig.tight_layout()
            return _to_array(fig)
        finally:
            plt.close(fig)


def embedding_heatmap(groups: dict[str, np.ndarray], title: str = "Face embeddings",
                      size=(8.0, 4.5), dpi: int = 100) -> np.ndarray:
    """One heatmap row per image (grouped by set, separated by lines); columns are dimensions."""
    plt = _plt()
    names, rows, bounds = [], [], []
    for g, arr in groups.items():
        arr = np.asarray(arr, np.float32).reshape(-1, np.asarray(arr).shape[-1]) if len(arr) else np.zeros((0, 1))
        if len(arr):
            rows.append(arr)
            names.append(g)
            bounds.append(sum(len(r) for r in rows))
    with _plot_lock:
        fig, ax = plt.subplots(figsize=size, dpi=dpi)
        try:
            if rows:
                data = np.concatenate(rows)
                lim = float(np.abs(data).max()) or 1.0
                im = ax.imshow(data, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
                fig.colorbar(im, ax=ax, fraction=0.04)
                starts = [0] + bounds[:-1]
                for b in bounds[:-1]:
                    ax.axhline(b - 0.5, color="black", linewidth=1.5)
                ax.set_yticks([(s + e - 1) / 2 for s, e in zip(starts, bounds)])
                ax.set_yticklabels(names)
                ax.set_xlabel("embedding dimension")
            else:
                ax.text(0.5, 0.5, "no embeddings (no face found)", ha="center", va="center")
            ax.set_title(title, fontsize=10)
            fig.tight_layout()
            return _to_array(fig)
        finally:
            plt.close(fig)


def embedding_lines(groups: dict[str, np.ndarray], title: str = "Face embeddings",
                    size=(8.0, 4.5), dpi: int = 100) -> np.ndarray:
    """Each image's embedding as a thin line, coloured by set, with the set mean thicker."""
    plt = _plt()
    with _plot_lock:
        fig, ax = plt.subplots(figsize=size, dpi=dpi)
        try:
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            for k, (g, arr) in enumerate(groups.items()):
                arr = np.asarray(arr, np.float32)
                if not len(arr):
                    continue
                c = colors[k % len(colors)]
                for v in arr:
                    ax.plot(v, color=c, linewidth=0.5, alpha=0.35)
                ax.plot(arr.mean(0), color=c, linewidth=1.6, label=f"{g} (n={len(arr)})")
            ax.set_xlabel("embedding dimension")
            ax.set_ylabel("value")
            ax.set_title(title, fontsize=10)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            fig.tight_layout()
            return _to_array(fig)
        finally:
            plt.close(fig)


def time_plot(series: dict[str, list[float | None]], *, threshold: float | None = None,
              title: str = "Identity over frames", ylabel: str = "cosine similarity to reference",
              size=(8.0, 3.5), dpi: int = 100) -> np.ndarray:
    """Lines over frame index; None values (no face) leave gaps and are marked with an x."""
    plt = _plt()
    with _plot_lock:
        fig, ax = plt.subplots(figsize=size, dpi=dpi)
        try:
            for name, vals in series.items():
                y = np.array([np.nan if v is None else v for v in vals], np.float64)
                x = np.arange(len(y))
                ax.plot(x, y, marker=".", label=name)
                miss = np.isnan(y)
                if miss.any():
                    lo = np.nanmin(y) if (~miss).any() else 0.0
                    ax.plot(x[miss], np.full(miss.sum(), lo), "x", color="red", label="no face")
            if threshold is not None:
                ax.axhline(threshold, color="gray", linestyle="dashed", linewidth=1, label="threshold")
            ax.set_xlabel("frame")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
            fig.tight_layout()
            return _to_array(fig)
        finally:
            plt.close(fig)
