"""Charts of the classification report, drawn with matplotlib's Agg backend (``Figure`` + ``FigureCanvasAgg``,
no pyplot state) and scikit-learn's ``RocCurveDisplay`` / ``ConfusionMatrixDisplay``. Each function returns a
``matplotlib.figure.Figure``; :func:`save_png` writes it atomically.

``preds`` everywhere is the ``predictions.csv`` frame of ``evaluate classify``: one row per (method, seed, test
sample) with ``label``, ``pred`` and ``prob_{class}`` columns; seeds are pooled.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..fsutil import atomic_write_bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """Render ``fig`` with Agg and write it as a PNG at ``path`` (temp file + rename)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def f1_bars(metrics: Mapping[str, Mapping[str, Any]], class_names: Sequence[str], minority: Sequence[str],
            n_seeds: int):
    """Grouped bars of F1 (mean +- std over seeds): one group per class, then minority F1 and macro F1; one bar
    per method. ``metrics``: the content of metrics.json."""
    methods = list(metrics)
    groups = [*class_names, "minority F1", "macro F1"]
    fig = _figure(max(7.0, 1.6 + 0.45 * len(groups) * max(1, len(methods))), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(groups))
    for i, m in enumerate(methods):
        vals = [metrics[m]["per_class"][c]["f1"] for c in class_names]
        vals += [metrics[m]["minority_f1"], metrics[m]["f1"]]
        mean = [np.nan if v["mean"] is None else v["mean"] for v in vals]
        std = [0.0 if v["std"] is None else v["std"] for v in vals]
        ax.bar(x - 0.4 + width * (i + 0.5), mean, width, yerr=std, capsize=2, label=m)
    ax.set_xticks(x, [f"{g}\n(disease)" if g in minority else g for g in groups])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("F1 on the real test split")
    ax.set_title(f"F1 per class (mean ± std over {n_seeds} seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def roc_panels(preds: pd.DataFrame, class_names: Sequence[str], methods: Sequence[str]):
    """ROC curves, one panel per class (one-vs-rest; a binary problem gets one panel, class 1 vs class 0), one
    curve per method (``RocCurveDisplay.from_predictions``; seeds pooled)."""
    from sklearn.metrics import RocCurveDisplay

    pos = [class_names[1]] if len(class_names) == 2 else list(class_names)
    fig = _figure(4.2 * len(pos), 4.4)
    axes = fig.subplots(1, len(pos), squeeze=False)[0]
    for ax, c in zip(axes, pos):
        for i, m in enumerate(methods):
            d = preds[preds["method"] == m]
            y = (d["label"] == c).to_numpy()
            if 0 < y.sum() < len(y):
                RocCurveDisplay.from_predictions(y, d[f"prob_{c}"].to_numpy(), name=m, ax=ax,
                                                 plot_chance_level=i == 0)
        rest = "rest" if len(class_names) > 2 else class_names[0]
        ax.set_title(f"{c} vs {rest}", fontsize="medium")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel(f"true positive rate ({c})")
        ax.legend(fontsize="x-small", loc="lower right")
    fig.suptitle("ROC on the real test split (seeds pooled)")
    return fig


def confusion_panels(preds: pd.DataFrame, class_names: Sequence[str], methods: Sequence[str]):
    """Confusion matrices (counts, seeds pooled; rows = true class), one panel per method
    (``ConfusionMatrixDisplay.from_predictions``)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    ncol = min(3, len(methods))
    nrow = int(np.ceil(len(methods) / ncol))
    side = 1.2 + 0.75 * len(class_names)
    fig = _figure(side * ncol + 0.5, side * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, m in zip(axes, methods):
        d = preds[preds["method"] == m]
        ConfusionMatrixDisplay.from_predictions(d["label"], d["pred"], labels=list(class_names), ax=ax,
                                                colorbar=False, cmap="Blues")
        ax.set_title(m, fontsize="medium")
        ax.tick_params(axis="x", labelrotation=30)
    for ax in axes[len(methods):]:
        ax.set_axis_off()
    fig.suptitle("Confusion matrices on the real test split (counts, seeds pooled)")
    return fig
