"""Charts of identity scores (matplotlib, Agg backend), returned as float RGB arrays (H, W, 3).

- :func:`bar_chart`: mean similarity per candidate set and model with standard deviation bars,
  the model's threshold and the reference baseline marked (the paper's Fig. 5 style).
- :func:`embedding_heatmap` / :func:`embedding_lines`: the embedding vectors of the images of each
  set as a heatmap and as lines (the paper's Fig. 7 style).
- :func:`time_plot`: per-frame similarity over time (identity over frames).
"""
from __future__ import annotations

import textwrap
import threading
from contextlib import contextmanager

import numpy as np

_plot_lock = threading.Lock()   # pyplot's state is global


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


@contextmanager
def _figure(*args, **kwargs):
    """A new pyplot figure (and its axes), made and closed under the lock: pyplot's state is global."""
    plt = _plt()
    with _plot_lock:
        fig, axes = plt.subplots(*args, **kwargs)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def _to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    return (buf.astype(np.float32) / 255.0).copy()


def _bars(ax, plt, summary, sets, models, key, err_key, with_lines):
    width = 0.8 / max(1, len(models))
    x = np.arange(len(sets))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, m in enumerate(models):
        rows = {r["set"]: r for r in summary if r["model"] == m}
        vals = [rows[s].get(key) if s in rows and rows[s].get(key) is not None else np.nan for s in sets]
        errs = [rows[s].get(err_key) or 0.0 if (s in rows and err_key) else 0.0 for s in sets]
        pos = x - 0.4 + width * (k + 0.5)
        c = colors[k % len(colors)]
        bars = ax.bar(pos, np.nan_to_num(vals, nan=0.0), width * 0.9, yerr=errs if err_key else None, capsize=3,
                      label=m, color=c)
        for b, v, e in zip(bars, vals, errs):
            cx = b.get_x() + b.get_width() / 2
            if np.isnan(v):
                ax.text(cx, 0.02, "n/a", ha="center", va="bottom", fontsize=7)
            else:
                e = float(e or 0.0)   # the label sits beyond the error bar, not on it
                ax.text(cx, v + e + 0.01 if v >= 0 else v - e - 0.01, f"{v:.3f}" if key == "mean" else f"{v:+.2f}",
                        ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
        any_row = next(iter(rows.values()), None)
        if with_lines and any_row is not None:
            ax.hlines(any_row["threshold"], x.min() - 0.4, x.max() + 0.4, colors=c, linestyles="dashed", linewidth=1)
            base = any_row.get("reference_baseline")
            if base is not None:
                ax.hlines(base, x.min() - 0.4, x.max() + 0.4, colors=c, linestyles="dotted", linewidth=1)
    # set names wrapped to the width each bar group has (about 15 characters per inch at 8 pt),
    # so that long names never run into their neighbours
    fig = ax.get_figure()
    inches = ax.get_position().width * fig.get_figwidth() / max(1, len(sets))
    width_chars = max(6, int(inches * 15))
    labels = []
    for s in sets:
        miss = sum(r["faces_missing"] for r in summary if r["set"] == s and r["model"] == models[0])
        n = next((r["count"] for r in summary if r["set"] == s), 0)
        name = "\n".join(textwrap.wrap(str(s), width_chars, break_long_words=True) or [""])
        labels.append(f"{name}\n(n={n}" + (f", {miss} no face)" if miss else ")"))
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)


def bar_chart(summary: list[dict], title: str = "Identity similarity to the references",
              size=(10.0, 4.5), dpi: int = 100) -> np.ndarray:
    """Raw mean cosine per set and model (left) and the calibrated view (right).

    ``summary`` rows have set, model, count, faces_missing, mean, std, threshold,
    reference_baseline and calibrated_mean (None allowed). Calibrated: 0 at the model's own
    threshold, 1 when as close as the references are to each other.
    """
    plt = _plt()
    sets = list(dict.fromkeys(r["set"] for r in summary))
    models = list(dict.fromkeys(r["model"] for r in summary))
    with _figure(1, 2, figsize=size, dpi=dpi, gridspec_kw={"width_ratios": [3, 2]}) as (fig, (ax, ax2)):
        _bars(ax, plt, summary, sets, models, "mean", "std", True)
        ax.set_ylabel("mean cosine similarity")
        ax.set_ylim(0, 1.1)
        ax.set_title("raw (dashed: model threshold, dotted: references among themselves)", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        _bars(ax2, plt, summary, sets, models, "calibrated_mean", None, False)
        ax2.axhline(0.0, color="gray", linestyle="dashed", linewidth=1)
        ax2.axhline(1.0, color="gray", linestyle="dotted", linewidth=1)
        ax2.set_title("calibrated (0: threshold, 1: as close as the references)", fontsize=9)
        lo = min([r["calibrated_mean"] for r in summary if r.get("calibrated_mean") is not None] + [0.0])
        hi = max([r["calibrated_mean"] for r in summary if r.get("calibrated_mean") is not None] + [1.0])
        ax2.set_ylim(lo - 0.25, hi + 0.25)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        return _to_array(fig)


def embedding_heatmap(groups: dict[str, np.ndarray], title: str = "Face embeddings",
                      size=(10.0, 4.5), dpi: int = 100) -> np.ndarray:
    """One heatmap row per image (grouped by set, separated by lines); columns are dimensions."""
    names, rows, bounds = [], [], []
    for g, arr in groups.items():
        arr = np.asarray(arr, np.float32).reshape(-1, np.asarray(arr).shape[-1]) if len(arr) else np.zeros((0, 1))
        if len(arr):
            rows.append(arr)
            names.append(g)
            bounds.append(sum(len(r) for r in rows))
    with _figure(figsize=size, dpi=dpi) as (fig, ax):
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


def embedding_lines(groups: dict[str, np.ndarray], title: str = "Face embeddings",
                    size=(10.0, 4.5), dpi: int = 100) -> np.ndarray:
    """Each image's embedding as a thin line, coloured by set, with the set mean thicker."""
    plt = _plt()
    with _figure(figsize=size, dpi=dpi) as (fig, ax):
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


def time_plot(series: dict[str, list[float | None]], *, threshold: float | None = None,
              title: str = "Identity over frames", ylabel: str = "cosine similarity to reference",
              size=(8.0, 3.5), dpi: int = 100) -> np.ndarray:
    """Lines over frame index; None values (no face) leave gaps and are marked with an x."""
    with _figure(figsize=size, dpi=dpi) as (fig, ax):
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
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("frame")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _to_array(fig)


def pair_histogram(sims: list[float | None], labels: list[bool], threshold: float, *, title: str = "",
                   size=(8.0, 3.5), dpi: int = 100) -> np.ndarray:
    """Histograms of the similarities of same-person and different-person pairs, threshold marked."""
    s = np.array([np.nan if v is None else v for v in sims], np.float64)
    y = np.asarray(labels, bool)
    ok = ~np.isnan(s)
    with _figure(figsize=size, dpi=dpi) as (fig, ax):
        lo = min(float(np.nanmin(s)) if ok.any() else 0.0, threshold) - 0.02
        hi = max(float(np.nanmax(s)) if ok.any() else 1.0, threshold) + 0.02
        bins = np.linspace(lo, hi, 40)
        ax.hist(s[ok & ~y], bins=bins, alpha=0.6, label=f"different people ({int((ok & ~y).sum())})")
        ax.hist(s[ok & y], bins=bins, alpha=0.6, label=f"same person ({int((ok & y).sum())})")
        ax.axvline(threshold, color="black", linestyle="dashed", linewidth=1, label=f"threshold {threshold:g}")
        from matplotlib.ticker import MaxNLocator
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("pairs")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _to_array(fig)
