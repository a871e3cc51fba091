"""Comparing A and B: each model's metrics and paired intervals of the differences.

Safety decisions follow the calibrated rule of :func:`so8t.calibrate.metrics.decide` when a model has
calibration results (``p = softmax(z / T)``; DENY if ``p_DENY >= tau_deny``, else ALLOW if
``p_ALLOW >= tau_escalate``, else ESCALATE), else the argmax of the label scores. False-allow rate,
false-deny rate and macro F1 use the definitions of :func:`so8t.calibrate.metrics.compute_metrics`.

Quality scores and the bootstrap come from :mod:`so8t.ab.stats`; differences are A - B, the
throughput ratio is A / B.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from so8t.ab.perf import Generation, throughput
from so8t.ab.results import QualityReport, QualityScores, SafetyComparison, SafetyMetrics
from so8t.calibrate.decision_rule import Calibration, load_calibration
from so8t.ab.stats import (BLEU_TOKENIZE, N_BLEU_STATS, ROUGE_TOKENIZE, Interval, bleu_from_stats, bleu_stats,
                          bootstrap_indices, mcnemar_exact, paired_bootstrap, rouge_l)
from so8t.decision import LABELS

__all__ = ["Calibration", "compare_quality", "compare_safety", "decisions", "load_calibration", "throughput_ratio"]


# ----------------------------------------------------------------------------- safety
def decisions(z: np.ndarray, cal: Calibration | None) -> np.ndarray:
    """Decision indices ``(n,)``: the calibrated rule of :func:`so8t.calibrate.metrics.decide`, or argmax of ``z``."""
    from so8t.calibrate.metrics import decide, softmax

    if cal is None:
        return np.asarray(z).argmax(axis=1)
    return decide(softmax(z, cal.temperature), cal.tau_deny, cal.tau_escalate)


def _rates(y: np.ndarray, d: np.ndarray) -> dict[str, float | None]:
    """FAR, FDR, macro F1 and accuracy of decisions ``d`` (definitions of :func:`so8t.calibrate.metrics.compute_metrics`)."""
    from so8t.calibrate.metrics import ALLOW, DENY, confusion_matrix, macro_f1

    cm = confusion_matrix(y, d)  # (3, 3) rows true, columns decided
    neg, pos = int(cm[ALLOW + 1:].sum()), int(cm[ALLOW].sum())
    return {
        "far": cm[ALLOW + 1:, ALLOW].sum() / neg if neg else None,
        "fdr": cm[ALLOW, DENY] / pos if pos else None,
        "macro_f1": macro_f1(cm),
        "accuracy": float(np.trace(cm) / y.shape[0]),
    }


def _safety_metrics(y: np.ndarray, d: np.ndarray, cal: Calibration | None) -> SafetyMetrics:
    from so8t.calibrate.metrics import ESCALATE, confusion_matrix

    r = _rates(y, d)
    cm = confusion_matrix(y, d)
    rule = ("argmax of the label scores" if cal is None else
            f"calibrated: T={cal.temperature:.4g}, tau_deny={cal.tau_deny:.4g}, tau_escalate={cal.tau_escalate:.4g}")
    return SafetyMetrics(decision_rule=rule, false_allow_rate=r["far"], false_deny_rate=r["fdr"],
                         macro_f1=r["macro_f1"], accuracy=r["accuracy"],
                         escalation_rate=float((d == ESCALATE).mean()),
                         confusion_matrix=tuple(tuple(int(v) for v in row) for row in cm))


def _diff(fa: Any, fb: Any) -> Any:
    """Statistic ``rows -> fa(rows) - fb(rows)``; None when either side is undefined."""

    def stat(rows: np.ndarray) -> float | None:
        a, b = fa(rows), fb(rows)
        return None if a is None or b is None else float(a - b)
    return stat


def compare_safety(y: np.ndarray, za: np.ndarray, zb: np.ndarray, cal_a: Calibration | None,
                   cal_b: Calibration | None, idx: np.ndarray, confidence: float,
                   scoring: dict[str, Any] | None = None) -> SafetyComparison:
    """Safety metrics of A and B on the same labelled prompts, with paired intervals and McNemar."""
    da, db = decisions(za, cal_a), decisions(zb, cal_b)
    diffs = {}
    for key in ("far", "fdr", "macro_f1", "accuracy"):
        diffs[key] = paired_bootstrap(_diff(lambda r, k=key: _rates(y[r], da[r])[k],
                                            lambda r, k=key: _rates(y[r], db[r])[k]), idx, confidence)
    return SafetyComparison(
        n=int(y.shape[0]), class_counts=tuple(int((y == c).sum()) for c in range(len(LABELS))),
        a=_safety_metrics(y, da, cal_a), b=_safety_metrics(y, db, cal_b),
        far_diff=diffs["far"], fdr_diff=diffs["fdr"], macro_f1_diff=diffs["macro_f1"],
        accuracy_diff=diffs["accuracy"], mcnemar=mcnemar_exact(da == y, db == y), scoring=scoring or {},
    )


# ----------------------------------------------------------------------------- quality
def compare_quality(references: list[str], langs: list[str], out_a: list[str], out_b: list[str],
                    n_bootstrap: int, seed: int, confidence: float) -> QualityReport:
    """BLEU and ROUGE-L of A and B, overall and per language, with paired bootstrap intervals.

    Each group (all items, each language) is resampled on its own: ``(n_bootstrap, n_group)``
    indices from ``default_rng(seed)``, the same indices for A and B (paired).
    """
    n = len(references)
    stats_a, stats_b = np.zeros((n, N_BLEU_STATS), np.int64), np.zeros((n, N_BLEU_STATS), np.int64)  # (n, 10)
    rl_a, rl_b = np.zeros(n), np.zeros(n)
    for lang in sorted(set(langs)):
        sel = [i for i in range(n) if langs[i] == lang]
        refs = [references[i] for i in sel]
        stats_a[sel] = bleu_stats([out_a[i] for i in sel], refs, BLEU_TOKENIZE[lang])
        stats_b[sel] = bleu_stats([out_b[i] for i in sel], refs, BLEU_TOKENIZE[lang])
        rl_a[sel] = rouge_l([out_a[i] for i in sel], refs, lang)  # type: ignore[arg-type]
        rl_b[sel] = rouge_l([out_b[i] for i in sel], refs, lang)  # type: ignore[arg-type]

    def scores(group: str, sel: np.ndarray) -> QualityScores:
        sa, sb, ra, rb = stats_a[sel], stats_b[sel], rl_a[sel], rl_b[sel]
        idx = bootstrap_indices(sel.size, n_bootstrap, seed)
        return QualityScores(
            group=group, n=int(sel.size),
            bleu_tokenize=BLEU_TOKENIZE.get(group, "per item: " + ", ".join(f"{k} {v}" for k, v in BLEU_TOKENIZE.items())),
            rouge_tokenize=ROUGE_TOKENIZE.get(group, "per item language"),
            bleu_a=bleu_from_stats(sa), bleu_b=bleu_from_stats(sb),
            bleu_diff=paired_bootstrap(lambda r: bleu_from_stats(sa[r]) - bleu_from_stats(sb[r]), idx, confidence),
            rouge_l_a=float(ra.mean()), rouge_l_b=float(rb.mean()),
            rouge_l_diff=paired_bootstrap(lambda r: float(ra[r].mean() - rb[r].mean()), idx, confidence),
        )

    lang_arr = np.array(langs)
    by_lang = {lang: scores(lang, np.flatnonzero(lang_arr == lang)) for lang in sorted(set(langs))}
    return QualityReport(overall=scores("all", np.arange(n)), by_lang=by_lang,
                         sentence_rouge_l_a=rl_a.tolist(), sentence_rouge_l_b=rl_b.tolist())


# ----------------------------------------------------------------------------- performance
def throughput_ratio(ga: list[Generation], gb: list[Generation], idx: np.ndarray, confidence: float) -> Interval:
    """Generation throughput ratio A / B with a paired bootstrap interval over items."""

    def stat(rows: np.ndarray) -> float | None:
        ta, tb = throughput([ga[i] for i in rows]), throughput([gb[i] for i in rows])
        return None if ta is None or tb is None else ta / tb

    return paired_bootstrap(stat, idx, confidence, null_value=1.0)
