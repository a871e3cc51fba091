"""Calibration of the ALLOW / ESCALATE / DENY scores: temperature, thresholds, report.

Input is an ``(n, 3)`` array of label logits ``z`` (columns in :data:`so8t.decision.LABELS` order)
and integer labels ``y``; scoring a GGUF model into ``z`` happens elsewhere. :func:`calibrate`
splits the data (stratified), fits the temperature by NLL and the thresholds by exact search on the
fit split (on quantile grids of ``max_threshold_candidates`` values per column above that many
distinct probabilities, with a bounded loss: :func:`fit_thresholds_thinned`), and reports every
metric before and after calibration on both splits, with a verdict from
:func:`so8t.calibrate.promotion_gate.evaluate_gate` on the held-out split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import minimize, minimize_scalar

from so8t.decision import LABELS
from so8t.errors import ConfigError, DataError
from so8t.calibrate.promotion_gate import GateConfig, GateDecision, evaluate_gate
from so8t.calibrate.metrics import (ALLOW, DENY, N_CLASSES, MetricReport, check_labels, compute_metrics, log_softmax,
                          simulated_calibrated_ece, softmax)
from so8t.calibrate.thresholds import FarBound, ThresholdFit, fit_thresholds

__all__ = [
    "CalibrationConfig", "CalibrationResult", "SplitMetrics", "TemperatureFit", "ThresholdFit",
    "calibrate", "encode_labels", "fit_temperature", "fit_thresholds", "fit_thresholds_thinned",
    "nll_at_temperature", "split_stratified", "thin_threshold_candidates",
]

logger = logging.getLogger(__name__)

#: Names the gate's targets had in calibration settings before they were GateConfig's own.
_RENAMED = {"ece_target": "ece_max", "far_target": "far_max", "min_macro_f1": "macro_f1_min"}

#: Below this many samples the runbook says calibration is unreliable.
MIN_RECOMMENDED_SAMPLES = 100


class CalibrationConfig(GateConfig):
    """Settings of the calibration stage (runbook: ``calibrate_aed.py`` options).

    The gate's targets (``ece_max``, ``far_max``, ``far_bound``, ``macro_f1_min``) are :class:`GateConfig`'s own
    fields, inherited, not copies under other names: the thresholds are fitted to the targets the verdict judges.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_temperature: float = Field(1.0, description="Temperature before calibration and start of the fit.")
    initial_deny_threshold: float = Field(0.5, description="tau_deny before calibration: DENY if p_DENY >= it.")
    initial_escalate_threshold: float = Field(
        0.7, description="tau_escalate before calibration: ALLOW if p_ALLOW >= it, else ESCALATE."
    )
    temperature_bounds: tuple[float, float] = Field((0.05, 20.0), description="Search range of the temperature.")
    optimizer: Literal["L-BFGS-B", "SLSQP"] = Field(
        "L-BFGS-B", description="scipy.optimize.minimize method for T; L-BFGS-B falls back to SLSQP."
    )
    holdout_fraction: float = Field(
        0.5, description="Share of each class held out for the gate's metrics, in (0, 1). Half: the fit (one temperature, "
        "two thresholds) needs few samples, the hold-out ECE many (its noise floor: BENCHMARKS.md).")
    seed: int = Field(0, description="Seed of the stratified split.")
    n_bins: int = Field(15, description="Equal-width bins of the ECE variants.")
    threshold_far_bound: FarBound = Field(
        "upper95", description="FAR statistic the thresholds are fitted to on the fit split: 'upper95' (the one-sided "
        "95% Clopper-Pearson bound) leaves a margin so that the held-out FAR the gate judges stays within the target; "
        "'point' fits to the edge, and the held-out FAR then exceeds the target about half the time (BENCHMARKS.md). "
        "Falls back to 'point', with a warning, when no thresholds meet the bound (too few samples for it). "
        "With far_bound 'upper95' the fit always uses the bound.")
    max_threshold_candidates: int = Field(
        2048, description="Threshold candidates per probability column; above it the search runs on a quantile grid "
                          "of this many values (bounded approximation, see docs/calibration.md); 0: always exact."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_fields(cls, data: Any) -> Any:
        """Files written before the gate's names were the only ones (``calibration_results.json`` in older
        registry versions) still load: ``ece_target`` / ``far_target`` / ``min_macro_f1`` are read as
        ``ece_max`` / ``far_max`` / ``macro_f1_min``."""
        if isinstance(data, dict) and any(old in data for old in _RENAMED):
            data = {_RENAMED.get(k, k): v for k, v in data.items()}
        return data

    @property
    def gate(self) -> GateConfig:
        """The gate these settings calibrate for (the same four fields)."""
        return GateConfig(**self.model_dump(include=set(GateConfig.model_fields)))

    @model_validator(mode="after")
    def _check_calibration(self) -> CalibrationConfig:
        errors = []
        lo, hi = self.temperature_bounds
        if not 0 < lo < hi or not math.isfinite(hi):
            errors.append(f"temperature_bounds={self.temperature_bounds}: need 0 < low < high < inf, e.g. (0.05, 20)")
        elif not lo <= self.initial_temperature <= hi:
            errors.append(f"initial_temperature={self.initial_temperature} is outside temperature_bounds="
                          f"{self.temperature_bounds}: move it inside or widen the bounds")
        for name in ("initial_deny_threshold", "initial_escalate_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                errors.append(f"{name}={getattr(self, name)} is outside [0, 1]: it is a probability or rate")
        if not 0.0 < self.holdout_fraction < 1.0:
            errors.append(f"holdout_fraction={self.holdout_fraction} is outside (0, 1): use e.g. 0.5")
        if self.max_threshold_candidates != 0 and self.max_threshold_candidates < 2:
            errors.append(f"max_threshold_candidates={self.max_threshold_candidates} must be 0 (exact) or >= 2")
        if self.n_bins < 1:
            errors.append(f"n_bins={self.n_bins} must be >= 1 (the method uses 15)")
        if errors:
            raise ValueError("invalid CalibrationConfig: " + "; ".join(errors))
        return self


# ----------------------------------------------------------------------------- inputs
def encode_labels(labels: Sequence[str]) -> np.ndarray:
    """Map label strings (``"ALLOW"`` ...) to indices into ``LABELS``.

    Raises:
        DataError: An unknown label, naming it and the allowed ones.
    """
    index = {name: i for i, name in enumerate(LABELS)}
    bad = sorted({str(s) for s in labels if s not in index})
    if bad:
        raise DataError(f"unknown labels {bad}: labels must be one of {LABELS} (upper case)")
    return np.array([index[s] for s in labels], dtype=np.int64)


def _check_logits(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != N_CLASSES:
        raise DataError(f"logits have shape {z.shape}: expected (n, {N_CLASSES}) with columns {LABELS}")
    if z.shape[0] == 0:
        raise DataError("no samples: calibration needs scored validation examples")
    if not np.all(np.isfinite(z)):
        bad = int(np.flatnonzero(~np.isfinite(z).all(axis=1))[0])
        raise DataError(f"logits row {bad} is {z[bad].tolist()}: logits must be finite; check the scorer")
    return z, check_labels(y, z.shape[0])


def split_stratified(y: np.ndarray, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fit / held-out split.

    Each class with ``n_c`` samples puts ``round(holdout_fraction * n_c)`` of them (at least 1 and
    at most ``n_c - 1`` when ``n_c >= 2``; 0 when ``n_c == 1``) into the held-out split, chosen by a
    permutation from ``numpy.random.default_rng(seed)``.

    Args:
        y: Label indices ``(n,)``.
        holdout_fraction: Share held out, in ``(0, 1)``.
        seed: Random seed; the same seed and labels give the same split.

    Returns:
        ``(fit_idx, holdout_idx)``: sorted, disjoint index arrays covering ``range(n)``.

    Raises:
        ConfigError: ``holdout_fraction`` outside ``(0, 1)``.
        DataError: Invalid labels.
    """
    y = check_labels(y)
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction={holdout_fraction} is outside (0, 1): use e.g. 0.5")
    rng = np.random.default_rng(seed)
    hold = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(y == c)
        if idx.size < 2:
            continue
        k = min(max(int(math.floor(holdout_fraction * idx.size + 0.5)), 1), idx.size - 1)
        hold.append(rng.permutation(idx)[:k])
    holdout = np.sort(np.concatenate(hold)) if hold else np.zeros(0, dtype=np.int64)
    mask = np.zeros(y.shape[0], dtype=bool)
    mask[holdout] = True
    return np.flatnonzero(~mask), holdout


# ----------------------------------------------------------------------------- temperature
def nll_at_temperature(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``y`` under ``softmax(z / T)``."""
    return float(-log_softmax(z, temperature)[np.arange(y.shape[0]), y].mean())


def _nll_and_grad(s: np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """NLL and its derivative in ``s = log T``: ``dNLL/ds = mean(z_y - E_p[z]) / T``."""
    t = float(np.exp(s[0]))
    logp = log_softmax(z, t)  # (n, 3)
    rows = np.arange(y.shape[0])
    grad = float((z[rows, y] - (np.exp(logp) * z).sum(axis=1)).mean() / t)
    return float(-logp[rows, y].mean()), np.array([grad])


class TemperatureFit(BaseModel):
    """Outcome of :func:`fit_temperature`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(description="Fitted T (probabilities are softmax(z / T)).")
    nll_initial: float = Field(description="NLL at the initial temperature.")
    nll: float = Field(description="NLL at the fitted temperature.")
    optimizer_requested: str = Field(description="Method asked for.")
    optimizer_used: str = Field(description="Method whose answer was kept ('bounded-scalar' if the check won).")
    fallback_used: bool = Field(description="True when L-BFGS-B did not converge and SLSQP was run.")
    converged: bool = Field(description="Whether the kept gradient-based run reported success.")
    message: str = Field(description="Optimizer messages, fallback and check notes.")
    scalar_check_temperature: float = Field(description="T from an independent bounded scalar search.")
    scalar_check_nll: float = Field(description="NLL at scalar_check_temperature.")
    at_bound: bool = Field(description="True when T sits on a bound of the search range (widen it).")


def fit_temperature(
    z: np.ndarray,
    y: np.ndarray,
    initial: float = 1.0,
    bounds: tuple[float, float] = (0.05, 20.0),
    optimizer: Literal["L-BFGS-B", "SLSQP"] = "L-BFGS-B",
) -> TemperatureFit:
    """Fit the temperature by minimising the NLL over ``log T`` within ``bounds``.

    Runs ``scipy.optimize.minimize`` with ``optimizer`` (analytic gradient). If L-BFGS-B does not
    converge it falls back to SLSQP (the runbook's remedy) and logs it. The answer is then checked
    against a bounded scalar search (the NLL is unimodal in ``log T``); the lower NLL wins.

    Args:
        z: Logits ``(n, 3)``.
        y: Label indices ``(n,)``.
        initial: Starting temperature, inside ``bounds``.
        bounds: ``(low, high)`` temperature range, ``0 < low < high``.
        optimizer: ``"L-BFGS-B"`` or ``"SLSQP"``.

    Returns:
        A :class:`TemperatureFit`.

    Raises:
        DataError: Bad shapes or labels.
        ConfigError: Bad bounds, initial value or optimizer name.
    """
    z, y = _check_logits(z, y)
    lo, hi = bounds
    if not 0 < lo < hi or not lo <= initial <= hi:
        raise ConfigError(f"bounds={bounds}, initial={initial}: need 0 < low <= initial <= high")
    if optimizer not in ("L-BFGS-B", "SLSQP"):
        raise ConfigError(f"optimizer={optimizer!r} is unknown: use 'L-BFGS-B' or 'SLSQP'")
    log_bounds = [(math.log(lo), math.log(hi))]
    notes = []

    def run(method: str):
        res = minimize(_nll_and_grad, x0=[math.log(initial)], args=(z, y), jac=True, method=method,
                       bounds=log_bounds, options={"maxiter": 200})
        notes.append(f"{method}: success={res.success}, {res.message}")
        return res

    res, used, fallback = run(optimizer), optimizer, False
    if optimizer == "L-BFGS-B" and not res.success:
        logger.warning("L-BFGS-B did not converge (%s); falling back to SLSQP", res.message)
        res, used, fallback = run("SLSQP"), "SLSQP", True
    s_opt = float(np.clip(res.x[0], *log_bounds[0]))
    nll_opt = nll_at_temperature(z, y, math.exp(s_opt))

    check = minimize_scalar(lambda s: nll_at_temperature(z, y, math.exp(s)), bounds=log_bounds[0],
                            method="bounded", options={"xatol": 1e-8})
    t_check = float(math.exp(check.x))
    nll_check = nll_at_temperature(z, y, t_check)
    temperature, nll = math.exp(s_opt), nll_opt
    if nll_check < nll_opt - 1e-9:
        logger.warning("%s stopped at T=%.6g (NLL %.8f); bounded scalar search found T=%.6g (NLL %.8f); "
                       "keeping the latter", used, temperature, nll_opt, t_check, nll_check)
        notes.append(f"scalar check improved on {used}")
        temperature, nll, used = t_check, nll_check, "bounded-scalar"
    at_bound = bool(np.isclose(math.log(temperature), log_bounds[0], atol=1e-6).any())
    if at_bound:
        logger.warning("temperature %.6g sits on a bound of %s: widen temperature_bounds", temperature, bounds)
    nll_initial = nll_at_temperature(z, y, initial)
    logger.info("temperature fit: T=%.6g, NLL %.6f -> %.6f (%s)", temperature, nll_initial, nll, used)
    return TemperatureFit(
        temperature=temperature,
        nll_initial=nll_initial,
        nll=nll,
        optimizer_requested=optimizer,
        optimizer_used=used,
        fallback_used=fallback,
        converged=bool(res.success),
        message="; ".join(notes),
        scalar_check_temperature=t_check,
        scalar_check_nll=nll_check,
        at_bound=at_bound,
    )


# ----------------------------------------------------------------------------- threshold candidates
def _quantile_grid(values: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` distinct data values: those at ``k`` evenly spaced ranks, first and last included."""
    s = np.sort(values)
    ranks = np.round(np.linspace(0, s.shape[0] - 1, k)).astype(np.int64)
    return np.unique(s[ranks])


def thin_threshold_candidates(p: np.ndarray, max_candidates: int) -> tuple[np.ndarray, bool]:
    """Snap ``p_DENY`` and ``p_ALLOW`` down onto quantile grids of at most ``max_candidates`` values.

    The threshold search takes its candidates from the distinct values of ``p_DENY`` and
    ``p_ALLOW``; with ``n`` distinct values per column it evaluates ``O(n^2)`` pairs. Above
    ``max_candidates`` distinct values, a column is replaced by the largest grid value not above
    it, the grid being the data values at ``max_candidates`` evenly spaced ranks (the smallest and
    largest value included); ``p_ESCALATE`` takes the remainder so rows still sum to 1. For a grid
    value ``g``, ``p >= g`` holds exactly when ``snapped(p) >= g``, so every metric of a grid pair
    is the same on the snapped and the original probabilities: the search is exact over the grid.

    Args:
        p: Probabilities ``(n, 3)`` in ``LABELS`` order.
        max_candidates: Grid size per column (>= 2); 0 returns ``p`` unchanged.

    Returns:
        ``(p_snapped, thinned)``; ``p_snapped is p`` and ``thinned`` False when no column exceeds
        ``max_candidates`` distinct values (the search then stays exact).
    """
    if max_candidates == 0:
        return p, False
    q, thinned = p, False
    for c in (DENY, ALLOW):
        if np.unique(p[:, c]).size > max_candidates:
            if not thinned:
                q, thinned = p.copy(), True
            grid = _quantile_grid(p[:, c], max_candidates)
            q[:, c] = grid[np.searchsorted(grid, p[:, c], side="right") - 1]
    if thinned:
        q[:, 1] = np.clip(1.0 - q[:, ALLOW] - q[:, DENY], 0.0, 1.0)
    return q, thinned


def fit_thresholds_thinned(
    p: np.ndarray,
    y: np.ndarray,
    far_max: float,
    far_bound: FarBound = "point",
    min_macro_f1: float | None = None,
    max_candidates: int = 2048,
) -> ThresholdFit:
    """:func:`fit_thresholds`, on quantile-thinned candidates when a column has too many values.

    Exact (identical to :func:`fit_thresholds`) when neither ``p_DENY`` nor ``p_ALLOW`` has more
    than ``max_candidates`` distinct values. Otherwise the search is exact over the grids of
    :func:`thin_threshold_candidates`, which loses at most a bounded amount of macro F1: the grid
    pair that rounds the exact optimum's ``tau_deny`` down and ``tau_escalate`` up has no more
    false allows (so FAR feasibility is kept) and changes the decisions of at most the samples in
    one grid interval per column, ``m <= 2 * ceil(n / (max_candidates - 1))`` when probabilities
    are distinct (a run of equal values is never split and may add its length); each changed
    decision moves macro F1 by at most ``2 / (smallest class count)``.

    Returns:
        The :class:`ThresholdFit`; when thinned, its ``reason`` says so and ``n_candidate_pairs``
        counts the grid pairs.
    """
    q, thinned = thin_threshold_candidates(np.asarray(p, dtype=np.float64), max_candidates)
    fit = fit_thresholds(q, y, far_max, far_bound, min_macro_f1)
    if not thinned:
        return fit
    note = (f"; candidates thinned to quantile grids of <= {max_candidates} values per column "
            f"({np.unique(p[:, DENY]).size} distinct p_DENY, {np.unique(p[:, ALLOW]).size} distinct p_ALLOW)")
    logger.info("threshold search%s", note)
    return fit.model_copy(update={"reason": fit.reason + note})


# ----------------------------------------------------------------------------- the stage
class SplitMetrics(BaseModel):
    """Metrics of one parameter setting on the fit and held-out splits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(description="Temperature used.")
    tau_deny: float = Field(description="DENY threshold used.")
    tau_escalate: float = Field(description="ESCALATE/ALLOW threshold used.")
    fit: MetricReport = Field(description="Metrics on the fit split.")
    holdout: MetricReport = Field(description="Metrics on the held-out split.")


class CalibrationResult(BaseModel):
    """Everything written to ``calibration_results.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(1, description="Version of this file's layout.")
    labels: tuple[str, str, str] = Field(LABELS, description="Class order of all vectors and matrices.")
    temperature: float = Field(description="Calibrated temperature: p = softmax(z / temperature).")
    tau_deny: float = Field(description="Calibrated DENY threshold on p_DENY (above 1: never).")
    tau_escalate: float = Field(description="Calibrated ALLOW threshold on p_ALLOW (above 1: never).")
    passed: bool = Field(description="Whether the held-out metrics after calibration meet every target.")
    verdict: GateDecision = Field(description="Per-target verdict on the held-out split after calibration.")
    config: CalibrationConfig = Field(description="Settings used.")
    n_samples: int = Field(description="Samples scored.")
    n_fit: int = Field(description="Samples in the fit split.")
    n_holdout: int = Field(description="Samples in the held-out split.")
    class_counts: dict[str, int] = Field(description="Samples per label, all data.")
    temperature_fit: TemperatureFit = Field(description="Temperature optimisation details.")
    threshold_fit: ThresholdFit = Field(description="Threshold search details (fit split).")
    before: SplitMetrics = Field(description="Initial temperature and thresholds.")
    after: SplitMetrics = Field(description="Calibrated temperature and thresholds.")
    warnings: list[str] = Field(default_factory=list, description="Conditions a reader should know about.")
    holdout_ece_noise: tuple[float, float] | None = Field(
        None, description="(mean, 95th percentile) of the held-out ECE a perfectly calibrated model with the same "
        "calibrated probabilities would measure on this many samples (metrics.simulated_calibrated_ece).")
    model_sha256: str | None = Field(None, description="SHA-256 of the scored GGUF file.")
    data_sha256: str | None = Field(None, description="SHA-256 of the validation JSONL.")
    label_token_ids: dict[str, list[int]] | None = Field(None, description="Token ids of each label.")
    model_path: str | None = Field(None, description="Path of the scored model.")
    data_path: str | None = Field(None, description="Path of the validation data.")
    scoring: dict[str, Any] | None = Field(
        None, description="How the scores were read from the model: mode, prompt, template, cache key (so8t calibrate)."
    )


def _split_metrics(z, y, fit_idx, hold_idx, t, tau_deny, tau_escalate, n_bins) -> SplitMetrics:
    p = softmax(z, t)
    return SplitMetrics(
        temperature=t, tau_deny=tau_deny, tau_escalate=tau_escalate,
        fit=compute_metrics(p[fit_idx], y[fit_idx], tau_deny, tau_escalate, n_bins),
        holdout=compute_metrics(p[hold_idx], y[hold_idx], tau_deny, tau_escalate, n_bins),
    )


def calibrate(z: np.ndarray, y: np.ndarray, cfg: CalibrationConfig | None = None) -> CalibrationResult:
    """Split, fit temperature and thresholds on the fit split, report everything on both splits.

    Args:
        z: Label logits ``(n, 3)`` in ``LABELS`` order.
        y: True label indices ``(n,)`` (see :func:`encode_labels`).
        cfg: Settings; defaults to ``CalibrationConfig()``.

    Returns:
        A :class:`CalibrationResult` (``result.model_dump_json(indent=2)`` is the JSON file).

    Raises:
        DataError: Bad shapes or values, or a label with no example in the data (a ValueError).
    """
    cfg = cfg or CalibrationConfig()
    z, y = _check_logits(z, y)
    counts = np.bincount(y, minlength=N_CLASSES)
    missing = [LABELS[c] for c in range(N_CLASSES) if counts[c] == 0]
    if missing:
        raise DataError(f"labels {missing} have no example among {y.shape[0]} samples "
                        f"(counts {dict(zip(LABELS, counts.tolist()))}): calibration needs every label "
                        "in the validation data; add examples of the missing labels")
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        logger.warning("calibration: %s", message)

    if y.shape[0] < MIN_RECOMMENDED_SAMPLES:
        warn(f"only {y.shape[0]} samples: the runbook recommends >= {MIN_RECOMMENDED_SAMPLES}")
    for c in range(N_CLASSES):
        if counts[c] < 2:
            warn(f"label {LABELS[c]} has {counts[c]} sample: it cannot appear in both splits")
    fit_idx, hold_idx = split_stratified(y, cfg.holdout_fraction, cfg.seed)
    if hold_idx.size == 0:
        raise DataError(f"no label has 2 or more samples (counts {counts.tolist()}): nothing can be held out "
                        "for reporting; add validation examples")

    tfit = fit_temperature(z[fit_idx], y[fit_idx], cfg.initial_temperature, cfg.temperature_bounds, cfg.optimizer)
    if tfit.fallback_used:
        warn(f"L-BFGS-B did not converge; SLSQP was run; kept: {tfit.optimizer_used}")
    if not tfit.converged and tfit.optimizer_used != "bounded-scalar":
        warn(f"temperature optimizer did not report convergence: {tfit.message}")
    if tfit.at_bound:
        warn(f"temperature {tfit.temperature:.4g} is at a bound of {cfg.temperature_bounds}")
    p_fit = softmax(z[fit_idx], tfit.temperature)
    fit_bound: FarBound = "upper95" if "upper95" in (cfg.far_bound, cfg.threshold_far_bound) else "point"
    thr = fit_thresholds_thinned(p_fit, y[fit_idx], cfg.far_max, fit_bound, cfg.macro_f1_min,
                                 cfg.max_threshold_candidates)
    if not thr.feasible and fit_bound != cfg.far_bound:
        point = fit_thresholds_thinned(p_fit, y[fit_idx], cfg.far_max, cfg.far_bound, cfg.macro_f1_min,
                                       cfg.max_threshold_candidates)
        if point.feasible:
            warn(f"no thresholds meet FAR upper95 <= {cfg.far_max:g} on the fit split ({thr.reason}); fitted to the "
                 "point FAR without a margin instead: the held-out FAR may exceed the target; add validation data")
            thr = point
    if not thr.feasible:
        warn(f"threshold search infeasible: {thr.reason}")

    before = _split_metrics(z, y, fit_idx, hold_idx, cfg.initial_temperature, cfg.initial_deny_threshold,
                            cfg.initial_escalate_threshold, cfg.n_bins)
    after = _split_metrics(z, y, fit_idx, hold_idx, tfit.temperature, thr.tau_deny, thr.tau_escalate, cfg.n_bins)
    verdict = evaluate_gate(after.holdout, cfg.gate)
    simulated = simulated_calibrated_ece(softmax(z[hold_idx], tfit.temperature), cfg.n_bins)
    noise = (float(simulated.mean()), float(np.percentile(simulated, 95)))
    if noise[1] > cfg.ece_max:
        warn(f"the held-out ECE cannot be resolved at {cfg.ece_max:g} with {hold_idx.size} samples: a perfectly "
             f"calibrated model with these probabilities would measure {noise[0]:.3f} on average and more than "
             f"{cfg.ece_max:g} in {(simulated > cfg.ece_max).mean():.0%} of samples; add validation data "
             "(or raise holdout_fraction) rather than refitting")
    logger.info("calibration %s: T=%.4g tau_deny=%.4g tau_escalate=%.4g; %s",
                "passed" if verdict.passed else "failed", tfit.temperature, thr.tau_deny, thr.tau_escalate,
                verdict.summary)
    return CalibrationResult(
        temperature=tfit.temperature, tau_deny=thr.tau_deny, tau_escalate=thr.tau_escalate,
        passed=verdict.passed, verdict=verdict, config=cfg,
        n_samples=int(y.shape[0]), n_fit=int(fit_idx.size), n_holdout=int(hold_idx.size),
        class_counts=dict(zip(LABELS, (int(c) for c in counts))),
        temperature_fit=tfit, threshold_fit=thr, before=before, after=after, warnings=warnings,
        holdout_ece_noise=noise,
    )

