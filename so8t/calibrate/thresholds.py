"""Exact search for the (tau_deny, tau_escalate) decision thresholds.

The decision rule (see :func:`so8t.calibrate.metrics.decide`) makes macro F1 and the False Allow Rate step
functions of the thresholds, so gradient methods cannot move them. Instead every candidate pair is
evaluated: tau_deny over the distinct values of ``p_DENY`` plus the sentinel :data:`NEVER` (deny
nothing), tau_escalate over the distinct values of ``p_ALLOW`` plus :data:`NEVER` (allow nothing).
These candidates realise every decision assignment the rule can produce on the data.

Vectorisation: with ``rD``/``rA`` the ranks of ``p_DENY``/``p_ALLOW`` among their distinct values,
candidate ``(i, j)`` denies ``rD >= i`` and allows the rest with ``rA >= j``. For each true class the
allowed count is a 2-D dominance count ``#{rD < i, rA >= j}``, obtained with a reverse cumulative sum
over ``j`` and a cumulative sum over ``i``; the confusion matrix of every pair follows from it in
O(1). Rows of ``i`` are processed in blocks to bound memory: O(n^2) time, O(n) memory per row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import beta

from so8t.errors import ConfigError, DataError
from so8t.calibrate.metrics import ALLOW, DENY, ESCALATE, N_CLASSES, check_probs, compute_metrics

logger = logging.getLogger(__name__)

#: Threshold sentinel above any probability: a rule with this threshold never fires.
NEVER = float(np.nextafter(1.0, 2.0))

FarBound = Literal["point", "upper95"]


class ThresholdFit(BaseModel):
    """Outcome of :func:`fit_thresholds`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tau_deny: float = Field(description="DENY if p_DENY >= tau_deny (above 1: never).")
    tau_escalate: float = Field(description="Else ALLOW if p_ALLOW >= tau_escalate (above 1: never).")
    feasible: bool = Field(description="True when the FAR constraint and the macro F1 floor both hold.")
    reason: str = Field(description="Why these thresholds were chosen, or why no pair is feasible.")
    far_max: float = Field(description="Constraint on the False Allow Rate statistic.")
    far_bound: FarBound = Field(description="'point': FAR itself; 'upper95': its 95% Clopper-Pearson bound.")
    min_macro_f1: float | None = Field(description="Floor on macro F1 (None: none).")
    macro_f1: float = Field(description="Macro F1 of the chosen pair on the fit data.")
    false_allow_count: int = Field(description="False allows of the chosen pair.")
    false_allow_denominator: int = Field(description="Samples whose true label is not ALLOW.")
    far_statistic: float = Field(description="The constrained statistic (point FAR or its upper bound).")
    escalation_rate: float = Field(description="Escalation rate of the chosen pair.")
    n_candidate_pairs: int = Field(description="Number of (tau_deny, tau_escalate) pairs evaluated.")


def far_upper_bounds(n_neg: int, confidence: float = 0.95) -> np.ndarray:
    """One-sided Clopper-Pearson upper bounds for ``k = 0..n_neg`` false allows (1.0 at ``k = n``)."""
    k = np.arange(n_neg + 1)
    ub = np.ones(n_neg + 1)
    ub[:-1] = beta.ppf(confidence, k[:-1] + 1, n_neg - k[:-1])
    return ub


def _reverse_cumsum(counts: np.ndarray, axis: int) -> np.ndarray:
    """``out[..., j] = sum_{j' >= j} counts[..., j']`` along ``axis``."""
    return np.flip(np.cumsum(np.flip(counts, axis=axis), axis=axis), axis=axis)


def _pick(mask, keys, i0, width):
    """Lexicographically smallest candidate over ``keys`` (then larger j, then smaller i) in a block.

    Returns:
        ``(key_tuple, i, j)`` or None when ``mask`` is empty.
    """
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    for key in keys:
        v = key.ravel()[idx]
        idx = idx[v == v.min()]
    t, j = np.divmod(idx, width)
    best = np.lexsort((t, -j))[0]  # primary: larger j (allow less), then smaller i (deny more)
    i, j = int(t[best]) + i0, int(j[best])
    return tuple(float(k.ravel()[idx[best]]) for k in keys) + (-j, i), i, j


def fit_thresholds(
    p: np.ndarray,
    y: np.ndarray,
    far_max: float,
    far_bound: FarBound = "point",
    min_macro_f1: float | None = None,
    *,
    max_block_cells: int = 400_000,
) -> ThresholdFit:
    """Find the thresholds with the best macro F1 whose False Allow Rate constraint holds.

    Among pairs whose FAR statistic (``far_bound``) is ``<= far_max``, choose the largest macro F1
    (rounded to 12 decimals), then fewer false allows, then fewer escalations, then the larger
    tau_escalate, then the smaller tau_deny (the safer pair among equals). If no pair meets the FAR
    constraint, return the pair with the lowest FAR statistic (then best macro F1, ...) with
    ``feasible=False``. If the best feasible macro F1 is below ``min_macro_f1``, return it with
    ``feasible=False``.

    Args:
        p: Calibrated probabilities ``(n, 3)`` in ``LABELS`` order.
        y: True label indices ``(n,)``.
        far_max: Maximum allowed FAR statistic, in ``[0, 1]``.
        far_bound: ``"point"`` (the rate) or ``"upper95"`` (one-sided 95% Clopper-Pearson bound).
        min_macro_f1: Optional floor on macro F1, in ``[0, 1]``.
        max_block_cells: Candidate pairs evaluated per block (memory bound, not a result change).

    Returns:
        A :class:`ThresholdFit`.

    Raises:
        ConfigError: Bad ``far_max``, ``far_bound`` or ``min_macro_f1``.
        DataError: Invalid inputs, or no sample whose true label is not ALLOW (FAR undefined).
    """
    p, y = check_probs(p, y)
    _check_settings(far_max, far_bound, min_macro_f1)
    n_c = np.bincount(y, minlength=N_CLASSES)
    n_neg = int(n_c[ESCALATE] + n_c[DENY])
    if n_neg == 0:
        raise DataError("fit_thresholds: no sample has true label ESCALATE or DENY, so the False Allow Rate "
                        "is undefined; add such examples to the fit data")
    stat, k_max = _far_statistic(n_neg, far_bound, far_max)

    u_deny, r_deny = np.unique(p[:, DENY], return_inverse=True)
    u_allow, r_allow = np.unique(p[:, ALLOW], return_inverse=True)
    m_deny, width = u_deny.size, u_allow.size + 1  # tau_deny index i in 0..m_deny, tau_escalate j
    tau_deny_values = np.append(u_deny, NEVER)
    tau_escalate_values = np.append(u_allow, NEVER)

    best_ok, best_far = _search(r_deny, r_allow, y, n_c, k_max, m_deny, width, max_block_cells)

    n_pairs = (m_deny + 1) * width
    chosen = best_ok if best_ok is not None else best_far
    tau_deny, tau_escalate = float(tau_deny_values[chosen[1]]), float(tau_escalate_values[chosen[2]])
    rep = compute_metrics(p, y, tau_deny, tau_escalate)
    fa_k = rep.false_allow_count
    stat_value = float(stat[fa_k])
    feasible, reason = _verdict(best_ok is not None, rep.macro_f1, fa_k, n_neg, stat_value, n_pairs, far_max,
                                far_bound, min_macro_f1)
    (logger.info if feasible else logger.warning)("threshold search: %s", reason)
    return ThresholdFit(
        tau_deny=tau_deny,
        tau_escalate=tau_escalate,
        feasible=feasible,
        reason=reason,
        far_max=far_max,
        far_bound=far_bound,
        min_macro_f1=min_macro_f1,
        macro_f1=rep.macro_f1,
        false_allow_count=fa_k,
        false_allow_denominator=n_neg,
        far_statistic=stat_value,
        escalation_rate=rep.escalation_rate,
        n_candidate_pairs=n_pairs,
    )


def _check_settings(far_max: float, far_bound: str, min_macro_f1: float | None) -> None:
    """Every bad setting of :func:`fit_thresholds` in one ConfigError."""
    errors = []
    if not 0.0 <= far_max <= 1.0:
        errors.append(f"far_max={far_max} is outside [0, 1]: pass a rate such as 0.02")
    if far_bound not in ("point", "upper95"):
        errors.append(f"far_bound={far_bound!r} is unknown: use 'point' or 'upper95'")
    if min_macro_f1 is not None and not 0.0 <= min_macro_f1 <= 1.0:
        errors.append(f"min_macro_f1={min_macro_f1} is outside [0, 1]: pass e.g. 0.5, or None")
    if errors:
        raise ConfigError("fit_thresholds: " + "; ".join(errors))


def _far_statistic(n_neg: int, far_bound: FarBound, far_max: float) -> tuple[np.ndarray, int]:
    """The FAR statistic for ``k = 0..n_neg`` false allows, and the most false allows it admits (-1: none)."""
    k = np.arange(n_neg + 1)
    stat = k / n_neg if far_bound == "point" else far_upper_bounds(n_neg)
    ok = np.flatnonzero(stat <= far_max)
    return stat, int(ok.max()) if ok.size else -1  # both statistics increase with k


def _search(r_deny: np.ndarray, r_allow: np.ndarray, y: np.ndarray, n_c: np.ndarray, k_max: int, m_deny: int,
            width: int, max_block_cells: int) -> tuple[tuple | None, tuple]:
    """The best candidate among pairs with at most ``k_max`` false allows (None: no such pair) and the best by
    false allows alone, each as :func:`_pick` returns it (the ordering of :func:`fit_thresholds`)."""
    n = int(y.shape[0])
    best_ok = best_far = None
    for i0, allowed, den in _confusion_blocks(r_deny, r_allow, y, m_deny, width, max_block_cells):
        pred_esc, neg_f1 = _macro_f1_grid(allowed, den, n_c, n)
        fa = allowed[ESCALATE] + allowed[DENY]
        for name, mask, keys in (("ok", fa <= k_max, (neg_f1, fa, pred_esc)), ("far", None, (fa, neg_f1, pred_esc))):
            cand = _pick(np.ones_like(fa, dtype=bool) if mask is None else mask, keys, i0, width)
            if cand is None:
                continue
            if name == "ok" and (best_ok is None or cand[0] < best_ok[0]):
                best_ok = cand
            if name == "far" and (best_far is None or cand[0] < best_far[0]):
                best_far = cand
    return best_ok, best_far


def _confusion_blocks(r_deny: np.ndarray, r_allow: np.ndarray, y: np.ndarray, m_deny: int, width: int,
                      max_block_cells: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The per-class counts of every candidate pair, a block of tau_deny rows at a time (see the module
    docstring): ``(i0, allowed, denied)`` with ``allowed[c, t, j] = #{y=c, rD < i0+t, rA >= j}`` of shape
    ``(3, r, W)`` and ``denied[c, t, 0] = #{y=c, rD >= i0+t}`` of shape ``(3, r, 1)``."""
    denied = np.zeros((N_CLASSES, m_deny + 1), dtype=np.int64)  # [c, i] = #{y=c, rD >= i}
    for c in range(N_CLASSES):
        denied[c, :m_deny] = _reverse_cumsum(np.bincount(r_deny[y == c], minlength=m_deny), 0)

    order = np.argsort(r_deny, kind="stable")
    rd_s, ra_s, y_s = r_deny[order], r_allow[order], y[order]
    rows = max(1, max_block_cells // width)
    carry = np.zeros((N_CLASSES, width), dtype=np.int64)  # [c, j] = #{y=c, rD < i0, rA >= j}
    for i0 in range(0, m_deny + 1, rows):
        r = min(rows, m_deny + 1 - i0)
        lo, hi = np.searchsorted(rd_s, [i0, i0 + r])
        grid = np.zeros((N_CLASSES, r, width), dtype=np.int64)  # (3, r, W): #{y=c, rD=i0+t, rA=j}
        for c in range(N_CLASSES):
            sel = y_s[lo:hi] == c
            flat = (rd_s[lo:hi][sel] - i0) * width + ra_s[lo:hi][sel]
            grid[c] = np.bincount(flat, minlength=r * width).reshape(r, width)
        cum = np.cumsum(_reverse_cumsum(grid, 2), axis=1)  # (3, r, W): #{rD in [i0, i0+t], rA >= j}
        allowed = carry[:, None, :] + np.concatenate(
            [np.zeros((N_CLASSES, 1, width), dtype=np.int64), cum[:, :-1]], axis=1
        )  # (3, r, W): #{y=c, rD < i, rA >= j}
        carry = carry + cum[:, -1]
        yield i0, allowed, denied[:, i0 : i0 + r, None]  # (3, r, 1)


def _macro_f1_grid(allowed: np.ndarray, den: np.ndarray, n_c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pred_esc, neg_f1)`` of a block: escalations of each pair, and minus its macro F1 rounded to 12
    decimals (the search key: smaller is better)."""
    _, r, width = allowed.shape
    pred_allow, pred_deny = allowed.sum(0), den.sum(0)
    pred_esc = n - pred_allow - pred_deny  # (r, W)
    tp_esc = n_c[ESCALATE] - allowed[ESCALATE] - den[ESCALATE]
    f1 = np.zeros((r, width))
    for tp, pred, support in (
        (allowed[ALLOW], pred_allow, n_c[ALLOW]),
        (tp_esc, pred_esc, n_c[ESCALATE]),
        (np.broadcast_to(den[DENY], (r, width)), np.broadcast_to(pred_deny, (r, width)), n_c[DENY]),
    ):
        d = pred + support
        f1 += np.divide(2.0 * tp, d, out=np.zeros((r, width)), where=d > 0)
    return pred_esc, -np.round(f1 / 3.0, 12)


def _verdict(far_met: bool, macro_f1: float, fa_k: int, n_neg: int, stat_value: float, n_pairs: int,
             far_max: float, far_bound: FarBound, min_macro_f1: float | None) -> tuple[bool, str]:
    """Whether the chosen pair is feasible, and the one-line reason."""
    stat_name = "FAR" if far_bound == "point" else "FAR upper95"
    if not far_met:
        reason = (f"no thresholds meet {stat_name} <= {far_max}: the lowest reachable is {stat_value:.4f} "
                  f"({fa_k}/{n_neg} false allows)")
        if far_bound == "upper95" and 0 < far_max < 1:
            need = math.ceil(math.log(0.05) / math.log(1.0 - far_max))
            reason += (f"; even 0 false allows needs >= {need} non-ALLOW samples for the bound, here {n_neg}: "
                       "add validation data or use far_bound='point'")
        return False, reason
    if min_macro_f1 is not None and macro_f1 < min_macro_f1:
        return False, (f"the best macro F1 with {stat_name} <= {far_max} is {macro_f1:.4f} < min_macro_f1 "
                       f"{min_macro_f1}: the scores do not separate the classes well enough; retrain or relax a target")
    return True, (f"best macro F1 {macro_f1:.4f} among {n_pairs} pairs with {stat_name} {stat_value:.4f} "
                  f"<= {far_max}")
