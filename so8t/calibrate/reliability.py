"""Reliability diagram (top-label confidence vs accuracy) before and after calibration.

matplotlib is imported inside :func:`plot_reliability` and drawn on an Agg canvas without pyplot, so
importing this module costs nothing, works without a display and leaves pyplot's state alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from so8t.errors import DataError
from so8t.calibrate.metrics import DEFAULT_N_BINS, reliability_bins, top_label_ece

logger = logging.getLogger(__name__)


def plot_reliability(
    p_before: np.ndarray,
    p_after: np.ndarray,
    y: np.ndarray,
    path: str | Path,
    n_bins: int = DEFAULT_N_BINS,
    title: str = "Reliability diagram (top-label)",
) -> Path:
    """Write a reliability diagram PNG comparing probabilities before and after calibration.

    Top panel: accuracy of the argmax against mean top-label confidence per equal-width bin
    (same bins as :func:`so8t.calibrate.metrics.top_label_ece`), with the diagonal and each curve's ECE in
    the legend. Bottom panel: samples per bin, before and after.

    Args:
        p_before: Probabilities ``(n, 3)`` before calibration.
        p_after: Probabilities ``(n, 3)`` after calibration (same samples).
        y: True label indices ``(n,)``.
        path: Output file, e.g. ``.../reliability_diagram.png``; parent folders are created.
        n_bins: Number of bins.
        title: Figure title.

    Returns:
        The written path.

    Raises:
        DataError: Invalid probabilities/labels, or different sample counts.
        ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    if np.shape(p_before) != np.shape(p_after):
        raise DataError(f"p_before {np.shape(p_before)} and p_after {np.shape(p_after)} differ: "
                         "pass the same samples scored before and after calibration")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state touched

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2  # (n_bins,)
    width = 1.0 / n_bins
    fig = Figure(figsize=(6, 7))
    FigureCanvasAgg(fig)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for offset, (name, p, color) in zip(
        (-width / 4, width / 4), (("before", p_before, "tab:red"), ("after", p_after, "tab:blue"))
    ):
        bins = reliability_bins(p, y, n_bins)
        ece = top_label_ece(p, y, n_bins)
        conf = [b.mean_confidence for b in bins if b.count]
        acc = [b.accuracy for b in bins if b.count]
        ax.plot(conf, acc, marker="o", color=color, label=f"{name} (ECE {ece:.3f})")
        ax_n.bar(centers + offset, [b.count for b in bins], width=width / 2, color=color, alpha=0.7, label=name)
    ax.set_ylabel("accuracy of argmax")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax_n.set_xlabel("top-label confidence")
    ax_n.set_ylabel("samples per bin")
    ax_n.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    logger.info("reliability diagram written to %s", path)
    return path
