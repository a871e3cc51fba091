"""Calibration and decision metrics for the ALLOW / ESCALATE / DENY classifier.

Every score vector, probability row and matrix uses the order of :data:`so8t.decision.LABELS`
(index 0 = ALLOW, 1 = ESCALATE, 2 = DENY). Definitions follow ``so8t-method.md`` section 5.

Binning convention (equal-width ECE variants): ``n_bins`` bins with edges
``numpy.linspace(0, 1, n_bins + 1)``; bin ``b`` holds values in ``(edge[b], edge[b+1]]`` and a value
of exactly 0 goes into the first bin. A value equal to an inner edge therefore belongs to the bin
below it.

Empty denominators are never divided by: the rate is ``None`` and :class:`MetricReport.undefined`
says why.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from so8t.decision import LABELS
from so8t.errors import DataError
from so8t.logits import log_softmax, softmax  # noqa: F401  (the metrics' probabilities; defined once there)

logger = logging.getLogger(__name__)

ALLOW, ESCALATE, DENY = 0, 1, 2
N_CLASSES = len(LABELS)
DEFAULT_N_BINS = 15


# ----------------------------------------------------------------------------- validation
def check_labels(y: np.ndarray, n: int | None = None) -> np.ndarray:
    """Validate integer labels (indices into ``LABELS``) and return them as int64.

    Args:
        y: Labels, shape ``(n,)``, values in ``{0, 1, 2}``.
        n: Expected length, if known.

    Returns:
        ``y`` as a 1-D int64 array.

    Raises:
        DataError: Wrong shape, length, dtype or value range.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"labels have shape {y.shape}: expected 1-D (n,); pass y.ravel()")
    integral = y.dtype.kind in "iu" or (
        y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(np.mod(y, 1) == 0))
    )
    if y.size and not integral:
        raise DataError(
            f"labels have dtype {y.dtype} (e.g. {y[0]!r}): labels must be integer indices into "
            f"{LABELS}; encode strings with so8t.calibrate.calibration.encode_labels"
        )
    y = y.astype(np.int64)
    if n is not None and y.shape[0] != n:
        raise DataError(f"{y.shape[0]} labels for {n} score rows: lengths must match")
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        bad = y[(y < 0) | (y >= N_CLASSES)][0]
        raise DataError(f"label {bad} out of range: labels must be 0..{N_CLASSES - 1} for {LABELS}")
    return y


def check_probs(p: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate an ``(n, 3)`` probability matrix (and labels, if given).

    Args:
        p: Probabilities, rows summing to 1, columns in ``LABELS`` order.
        y: Optional labels, shape ``(n,)``.

    Returns:
        ``(p, y)`` as float64 / int64 arrays.

    Raises:
        DataError: Empty input, wrong shape, non-finite values or rows not summing to 1.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != N_CLASSES:
        raise DataError(f"probabilities have shape {p.shape}: expected (n, {N_CLASSES}) in order {LABELS}")
    if p.shape[0] == 0:
        raise DataError("no samples: metrics need at least one scored example")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise DataError("probabilities must be finite and in [0, 1]: pass softmax(z / T), not raw logits")
    worst = float(np.abs(p.sum(axis=1) - 1.0).max())
    if worst > 1e-6:
        raise DataError(f"probability rows sum to 1 +/- {worst:.3g}: rows must sum to 1; use softmax()")
    return p, (None if y is None else check_labels(y, p.shape[0]))


# ----------------------------------------------------------------------------- calibration error
def bin_index(values: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> np.ndarray:
    """Equal-width bin of each value in ``[0, 1]``: ``(lo, hi]`` bins, 0 in the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(values, dtype=np.float64), side="left")


class BinStat(BaseModel):
    """One bin of a top-label reliability diagram."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lo: float = Field(description="Lower edge (exclusive, except 0 for the first bin).")
    hi: float = Field(description="Upper edge (inclusive).")
    count: int = Field(description="Samples whose top-label confidence falls in the bin.")
    mean_confidence: float | None = Field(description="Mean top-label confidence; None if empty.")
    accuracy: float | None = Field(description="Accuracy of the argmax in the bin; None if empty.")


def reliability_bins(p: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> list[BinStat]:
    """Per-bin top-label confidence and argmax accuracy (the data behind ECE and the diagram).

    Args:
        p: Probabilities ``(n, 3)``.
        y: Labels ``(n,)``.
        n_bins: Number of equal-width bins.

    Returns:
        ``n_bins`` :class:`BinStat` entries, empty bins included.
    """
    p, y = check_probs(p, y)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)  # ties: first index wins
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    s_conf = np.bincount(b, weights=conf, minlength=n_bins)
    s_acc = np.bincount(b, weights=correct, minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return [
        BinStat(
            lo=float(edges[i]),
            hi=float(edges[i + 1]),
            count=int(count[i]),
            mean_confidence=float(s_conf[i] / count[i]) if count[i] else None,
            accuracy=float(s_acc[i] / count[i]) if count[i] else None,
        )
        for i in range(n_bins)
    ]


def _binned_gap(values: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    """sum_b (n_b / n) |mean(hits in b) - mean(values in b)| over equal-width bins."""
    b = bin_index(values, n_bins)
    gap = np.abs(np.bincount(b, weights=hits, minlength=n_bins) - np.bincount(b, weights=values, minlength=n_bins))
    return float(gap.sum() / values.shape[0])  # |sum(h) - sum(v)| / n == (n_b/n) |mean h - mean v|


def top_label_ece(p: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Top-label expected calibration error over equal-width confidence bins.

    ``ECE = sum_b (n_b / n) |acc_b - conf_b|`` with ``conf`` the largest probability of each row and
    ``acc`` whether its argmax (first index on ties) equals the label.
    """
    p, y = check_probs(p, y)
    return _binned_gap(p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64), n_bins)


def simulated_calibrated_ece(p: np.ndarray, n_bins: int = DEFAULT_N_BINS, draws: int = 2000,
                             seed: int = 0) -> np.ndarray:
    """Top-label ECEs that a *perfectly calibrated* model with these probabilities would measure.

    Each draw gives every row a hit with probability equal to its top-label confidence (what
    perfect calibration means) and computes the ECE of those hits. A finite sample's ECE is never
    0: with few rows per bin its gaps are sampling noise. If the measured ECE is within this range,
    the measurement cannot tell the model from a calibrated one: more data, not another fit, helps.

    Returns:
        ``(draws,)`` simulated ECE values (seeded, deterministic).
    """
    p, _ = check_probs(p)
    conf = p.max(axis=1)
    onehot = np.zeros((conf.shape[0], n_bins))
    onehot[np.arange(conf.shape[0]), bin_index(conf, n_bins)] = 1.0
    hits = (np.random.default_rng(seed).random((draws, conf.shape[0])) < conf).astype(np.float64)  # (draws, n)
    return np.abs(hits @ onehot - conf @ onehot).sum(axis=1) / conf.shape[0]


def classwise_ece(p: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Class-wise ECE: mean over the 3 classes of the binned gap between ``p_k`` and ``1[y == k]``."""
    p, y = check_probs(p, y)
    return float(np.mean([_binned_gap(p[:, k], (y == k).astype(np.float64), n_bins) for k in range(N_CLASSES)]))


def adaptive_ece(p: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Equal-mass (adaptive) top-label ECE.

    Samples are sorted by top-label confidence (stable sort) and cut into ``min(n_bins, n)``
    contiguous groups whose sizes differ by at most one (larger groups first, as
    ``numpy.array_split``); tied confidences may straddle a cut.
    """
    p, y = check_probs(p, y)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(conf, kind="stable")
    groups = np.array_split(order, min(n_bins, conf.shape[0]))
    return float(sum(abs(correct[g].sum() - conf[g].sum()) for g in groups) / conf.shape[0])


# ----------------------------------------------------------------------------- proper scores
def brier_score(p: np.ndarray, y: np.ndarray) -> float:
    """Multiclass Brier score ``(1/n) sum_i sum_k (p_ik - 1[y_i = k])^2``, range 0..2."""
    p, y = check_probs(p, y)
    onehot = np.eye(N_CLASSES)[y]  # (n, 3)
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def negative_log_likelihood(p: np.ndarray, y: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of the labels, probabilities clipped at ``eps``."""
    p, y = check_probs(p, y)
    return float(-np.log(np.clip(p[np.arange(y.shape[0]), y], eps, 1.0)).mean())


# ----------------------------------------------------------------------------- decisions
def decide(p: np.ndarray, tau_deny: float, tau_escalate: float) -> np.ndarray:
    """Safety-first decision rule.

    DENY if ``p_DENY >= tau_deny``; else ALLOW if ``p_ALLOW >= tau_escalate``; else ESCALATE.
    A threshold above 1 never fires.

    Returns:
        Decision indices ``(n,)`` into ``LABELS``.
    """
    p, _ = check_probs(p)
    out = np.full(p.shape[0], ESCALATE, dtype=np.int64)
    out[p[:, ALLOW] >= tau_escalate] = ALLOW
    out[p[:, DENY] >= tau_deny] = DENY  # DENY takes precedence
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """3x3 counts, rows = true label, columns = decision, both in ``LABELS`` order."""
    y_true = check_labels(y_true)
    y_pred = check_labels(y_pred, y_true.shape[0])
    return np.bincount(y_true * N_CLASSES + y_pred, minlength=N_CLASSES**2).reshape(N_CLASSES, N_CLASSES)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 ``2 TP / (2 TP + FP + FN)``; 0 when the class has no support and no predictions.

    This matches ``sklearn.metrics.f1_score(..., labels=[0, 1, 2], average=None, zero_division=0)``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # predicted + support == 2TP + FP + FN
    return np.divide(2 * tp, denom, out=np.zeros(N_CLASSES), where=denom > 0)


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of :func:`f1_per_class` over all three classes."""
    return float(f1_per_class(cm).mean())


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float | None:
    """One-sided Clopper-Pearson upper bound on a binomial proportion.

    Args:
        k: Successes (here: false allows), ``0 <= k <= n``.
        n: Trials (here: samples whose true label is not ALLOW).
        confidence: One-sided confidence level.

    Returns:
        ``Beta.ppf(confidence, k + 1, n - k)``; 1.0 when ``k == n``; None when ``n == 0``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"k={k}, n={n}: need 0 <= k <= n")
    if n == 0:
        return None
    if k == n:
        return 1.0
    # scipy.stats is imported here, not with the module: it takes about a second, and every scorer
    # (so8t.calibrate.scoring, so8t.export.logit_compare, hence so8t.export.gguf) imports this module for log_softmax.
    from scipy.stats import beta

    return float(beta.ppf(confidence, k + 1, n - k))


# ----------------------------------------------------------------------------- the report
class MetricReport(BaseModel):
    """Every calibration and decision metric of one (probabilities, thresholds, labels) set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: tuple[str, str, str] = Field(default=LABELS, description="Class order of all vectors and matrices.")
    n: int = Field(description="Number of samples.")
    class_counts: tuple[int, int, int] = Field(description="Samples per true label, in `labels` order.")
    tau_deny: float = Field(description="DENY if p_DENY >= tau_deny (a value above 1 never fires).")
    tau_escalate: float = Field(description="Else ALLOW if p_ALLOW >= tau_escalate, else ESCALATE.")
    n_bins: int = Field(description="Bins of the ECE variants.")
    ece: float = Field(description="Top-label ECE, equal-width bins (lo, hi], 0 in the first bin.")
    classwise_ece: float = Field(description="Mean over classes of the per-class binned calibration error.")
    adaptive_ece: float = Field(description="Top-label ECE with equal-mass bins.")
    reliability: tuple[BinStat, ...] = Field(description="Per-bin data behind `ece`.")
    brier: float = Field(description="(1/n) sum_i sum_k (p_ik - y_ik)^2, range 0..2.")
    nll: float = Field(description="Mean negative log-likelihood of the true labels.")
    argmax_accuracy: float = Field(description="Accuracy of the argmax of p (before thresholds).")
    confusion_matrix: tuple[tuple[int, int, int], ...] = Field(description="Rows true, columns decision.")
    f1_per_class: tuple[float, float, float] = Field(description="F1 per class (0 if undefined).")
    macro_f1: float = Field(description="Unweighted mean of f1_per_class (sklearn zero_division=0).")
    decision_accuracy: float = Field(description="Fraction of decisions equal to the true label.")
    false_allow_count: int = Field(description="Decided ALLOW while the true label is not ALLOW.")
    false_allow_denominator: int = Field(description="Samples whose true label is not ALLOW.")
    false_allow_rate: float | None = Field(description="false_allow_count / denominator; None if 0.")
    false_allow_upper95: float | None = Field(description="One-sided 95% Clopper-Pearson upper bound.")
    false_deny_count: int = Field(description="Decided DENY while the true label is ALLOW.")
    false_deny_denominator: int = Field(description="Samples whose true label is ALLOW.")
    false_deny_rate: float | None = Field(description="false_deny_count / denominator; None if 0.")
    escalation_count: int = Field(description="Samples decided ESCALATE.")
    escalation_rate: float = Field(description="escalation_count / n.")
    undefined: dict[str, str] = Field(default_factory=dict, description="Metric name -> why it is None.")


def compute_metrics(
    p: np.ndarray,
    y: np.ndarray,
    tau_deny: float,
    tau_escalate: float,
    n_bins: int = DEFAULT_N_BINS,
) -> MetricReport:
    """Compute every metric of section 5 for one set of probabilities and thresholds.

    Args:
        p: Probabilities ``(n, 3)`` in ``LABELS`` order, e.g. ``softmax(z, T)``.
        y: True label indices ``(n,)``.
        tau_deny: DENY threshold on ``p_DENY``.
        tau_escalate: ALLOW threshold on ``p_ALLOW`` (below it: ESCALATE).
        n_bins: Bins of the ECE variants.

    Returns:
        A frozen :class:`MetricReport`.

    Raises:
        DataError: Invalid probabilities or labels (see :func:`check_probs`).
    """
    p, y = check_probs(p, y)
    n = int(y.shape[0])
    cm = confusion_matrix(y, decide(p, tau_deny, tau_escalate))
    undefined: dict[str, str] = {}
    neg = int(cm[ALLOW + 1 :].sum())
    fa = int(cm[ALLOW + 1 :, ALLOW].sum())
    pos = int(cm[ALLOW].sum())
    fd = int(cm[ALLOW, DENY])
    if neg == 0:
        undefined["false_allow_rate"] = "no samples whose true label is ESCALATE or DENY"
        undefined["false_allow_upper95"] = undefined["false_allow_rate"]
    if pos == 0:
        undefined["false_deny_rate"] = "no samples whose true label is ALLOW"
    for name, reason in undefined.items():
        logger.debug("%s undefined: %s", name, reason)
    f1 = f1_per_class(cm)
    return MetricReport(
        n=n,
        class_counts=tuple(int(c) for c in cm.sum(axis=1)),
        tau_deny=float(tau_deny),
        tau_escalate=float(tau_escalate),
        n_bins=n_bins,
        ece=top_label_ece(p, y, n_bins),
        classwise_ece=classwise_ece(p, y, n_bins),
        adaptive_ece=adaptive_ece(p, y, n_bins),
        reliability=tuple(reliability_bins(p, y, n_bins)),
        brier=brier_score(p, y),
        nll=negative_log_likelihood(p, y),
        argmax_accuracy=float((p.argmax(axis=1) == y).mean()),
        confusion_matrix=tuple(tuple(int(v) for v in row) for row in cm),
        f1_per_class=tuple(float(v) for v in f1),
        macro_f1=float(f1.mean()),
        decision_accuracy=float(np.trace(cm) / n),
        false_allow_count=fa,
        false_allow_denominator=neg,
        false_allow_rate=fa / neg if neg else None,
        false_allow_upper95=clopper_pearson_upper(fa, neg),
        false_deny_count=fd,
        false_deny_denominator=pos,
        false_deny_rate=fd / pos if pos else None,
        escalation_count=int(cm[:, ESCALATE].sum()),
        escalation_rate=float(cm[:, ESCALATE].sum() / n),
        undefined=undefined,
    )
