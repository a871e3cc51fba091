"""Statistics of the A/B evaluation: BLEU and ROUGE-L per language, paired bootstrap, McNemar.

Tokenisation per language (``detect_lang`` decides from the text itself):

- English: sacrebleu's ``13a`` tokenizer; rouge-score's default tokenizer (lower-cased
  alphanumeric words, no stemming).
- Japanese: characters. sacrebleu ``tokenize="char"`` (every non-space character is a token);
  for rouge-score :class:`CharTokenizer` (lower-cased, whitespace dropped). Japanese has no spaces,
  so word tokenizers see one token per sentence; ``ja-mecab`` would need MeCab and a dictionary.

BLEU is a corpus score: per-sentence sufficient statistics (lengths, matched and total n-grams,
taken from sacrebleu) are summed and turned into a score by ``sacrebleu.BLEU.compute_bleu`` with
sacrebleu's default ``exp`` smoothing, which is what ``BLEU(tokenize=...).corpus_score`` does. The
overall (all languages) BLEU sums the statistics of every sentence, each tokenised for its
language. ROUGE-L is the mean per-sentence F-measure (0..1, rouge-score's scale).

Differences are always A - B. Their confidence intervals come from the paired bootstrap: the same
resampled item indices are applied to A and B, and the percentile interval of the differences is
reported. McNemar's exact test compares paired correctness on the discordant pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Lang = Literal["en", "ja"]

#: sacrebleu tokenizer per language.
BLEU_TOKENIZE: dict[str, str] = {"en": "13a", "ja": "char"}
#: Name of the rouge-score tokenisation per language (for reports).
ROUGE_TOKENIZE: dict[str, str] = {"en": "rouge-score default (lower-cased words)", "ja": "characters"}
MAX_NGRAM = 4
#: Columns of a BLEU statistics row: sys_len, ref_len, correct[1..4], total[1..4].
N_BLEU_STATS = 2 + 2 * MAX_NGRAM


def detect_lang(text: str) -> Lang:
    """``"ja"`` if the text contains hiragana, katakana or CJK ideographs, else ``"en"``."""
    for ch in text:
        if "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" or "\uff66" <= ch <= "\uff9f":
            return "ja"
    return "en"


class CharTokenizer:
    """rouge-score tokenizer for Japanese: one token per non-space character, lower-cased."""

    def tokenize(self, text: str) -> list[str]:
        return [ch for ch in text.lower() if not ch.isspace()]


# ----------------------------------------------------------------------------- BLEU
def bleu_stats(hypotheses: Sequence[str], references: Sequence[str], tokenize: str) -> np.ndarray:
    """Per-sentence BLEU sufficient statistics.

    Args:
        hypotheses: Model outputs.
        references: One reference per output.
        tokenize: A sacrebleu tokenizer name (``"13a"``, ``"char"``, ...).

    Returns:
        ``(n, 10)`` int64 rows ``[sys_len, ref_len, correct_1..4, total_1..4]``.
    """
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references: pass one of each per item")
    bleu = BLEU(tokenize=tokenize, effective_order=True)  # effective_order changes the score, not the counts
    out = np.zeros((len(hypotheses), N_BLEU_STATS), dtype=np.int64)  # (n, 10)
    for i, (h, r) in enumerate(zip(hypotheses, references)):
        s = bleu.sentence_score(h, [r])
        out[i] = [s.sys_len, s.ref_len, *s.counts, *s.totals]
    return out


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU (0..100) from summed statistics ``(10,)`` or per-sentence rows ``(n, 10)``."""
    from sacrebleu.metrics import BLEU

    s = np.asarray(stats, dtype=np.int64)
    if s.ndim == 2:
        s = s.sum(axis=0)
    return float(BLEU.compute_bleu(
        correct=[int(v) for v in s[2:2 + MAX_NGRAM]], total=[int(v) for v in s[2 + MAX_NGRAM:]],
        sys_len=int(s[0]), ref_len=int(s[1]), smooth_method="exp", max_ngram_order=MAX_NGRAM,
    ).score)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str) -> float:
    """Corpus BLEU, equal to ``sacrebleu.BLEU(tokenize=tokenize).corpus_score(hyps, [refs]).score``."""
    return bleu_from_stats(bleu_stats(hypotheses, references, tokenize))


# ----------------------------------------------------------------------------- ROUGE-L
def rouge_l(hypotheses: Sequence[str], references: Sequence[str], lang: Lang) -> np.ndarray:
    """Per-sentence ROUGE-L F-measure (0..1) with the tokenisation of ``lang``.

    Returns:
        ``(n,)`` float64.
    """
    from rouge_score.rouge_scorer import RougeScorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references: pass one of each per item")
    scorer = RougeScorer(["rougeL"], use_stemmer=False, tokenizer=CharTokenizer() if lang == "ja" else None)
    return np.array([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references)],
                    dtype=np.float64)


# ----------------------------------------------------------------------------- bootstrap
class Interval(BaseModel):
    """A point estimate of a difference (A - B) or ratio (A / B) with its bootstrap interval."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    estimate: float | None = Field(description="The statistic on the full set (None if undefined).")
    low: float | None = Field(description="Lower percentile bound of the bootstrap distribution.")
    high: float | None = Field(description="Upper percentile bound of the bootstrap distribution.")
    confidence: float = Field(description="Two-sided coverage of [low, high], e.g. 0.95.")
    n_resamples: int = Field(description="Bootstrap resamples (those with an undefined value are skipped).")
    null_value: float = Field(0.0, description="The value meaning 'no difference' (0 for differences, 1 for ratios).")

    @property
    def significant(self) -> bool:
        """True when the interval excludes ``null_value``."""
        if self.low is None or self.high is None:
            return False
        return not self.low <= self.null_value <= self.high

    def text(self, fmt: str = ".3f") -> str:
        """``+1.234 [-0.5, +2.9]`` style rendering."""
        if self.estimate is None:
            return "n/a"
        sign = "+" if self.null_value == 0.0 else ""
        lo = "n/a" if self.low is None else format(self.low, sign + fmt)
        hi = "n/a" if self.high is None else format(self.high, sign + fmt)
        return f"{format(self.estimate, sign + fmt)} [{lo}, {hi}]"


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Resampled item indices: ``numpy.random.default_rng(seed).integers(0, n, size=(B, n))``.

    Returns:
        ``(n_resamples, n)`` int64.
    """
    if n < 1:
        raise ValueError(f"n={n}: the bootstrap needs at least one item")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def percentile_interval(estimate: float | None, samples: np.ndarray, confidence: float,
                        null_value: float = 0.0) -> Interval:
    """Percentile interval of bootstrap samples, skipping undefined (NaN) ones.

    The bounds are ``numpy.percentile`` (linear interpolation) at ``100 * (1 - confidence) / 2``
    and ``100 * (1 + confidence) / 2``.
    """
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0 or estimate is None:
        return Interval(estimate=estimate, low=None, high=None, confidence=confidence, n_resamples=int(s.size),
                        null_value=null_value)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(s, [alpha, 100.0 - alpha])
    return Interval(estimate=float(estimate), low=float(lo), high=float(hi), confidence=confidence,
                    n_resamples=int(s.size), null_value=null_value)


def paired_bootstrap(statistic: Callable[[np.ndarray], float | None], idx: np.ndarray, confidence: float,
                     null_value: float = 0.0) -> Interval:
    """Paired bootstrap interval of ``statistic``.

    Args:
        statistic: Maps item indices ``(m,)`` to the paired statistic (e.g. ``metric_A(items) -
            metric_B(items)``); None when undefined on that resample.
        idx: ``(B, n)`` resampled indices from :func:`bootstrap_indices`.
        confidence: Coverage, e.g. 0.95.
        null_value: 0 for a difference, 1 for a ratio.

    Returns:
        :class:`Interval` with the statistic on all ``n`` items as estimate.
    """
    n = idx.shape[1]
    estimate = statistic(np.arange(n))
    samples = np.array([np.nan if (v := statistic(rows)) is None else v for rows in idx], dtype=np.float64)
    return percentile_interval(estimate, samples, confidence, null_value)


# ----------------------------------------------------------------------------- McNemar
class McNemarResult(BaseModel):
    """McNemar's exact test on paired correctness of A and B."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(description="Paired items.")
    both_correct: int = Field(description="Items both models got right.")
    a_only: int = Field(description="Discordant: A right, B wrong.")
    b_only: int = Field(description="Discordant: A wrong, B right.")
    both_wrong: int = Field(description="Items both models got wrong.")
    p_value: float = Field(description="Two-sided exact p: binomtest(a_only, a_only + b_only, 0.5); 1 if no discordant pair.")


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """McNemar's exact (binomial) test.

    Under H0 (equal accuracy) each discordant pair is A-only with probability 1/2, so the p-value
    is ``scipy.stats.binomtest(a_only, a_only + b_only, 0.5).pvalue`` (two-sided).

    Args:
        correct_a: ``(n,)`` booleans, A's decision equals the label.
        correct_b: ``(n,)`` booleans, B's decision equals the label.
    """
    from scipy.stats import binomtest

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correctness vectors have shapes {a.shape} and {b.shape}: expected equal (n,)")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    k = a_only + b_only
    p = 1.0 if k == 0 else float(binomtest(a_only, k, 0.5, alternative="two-sided").pvalue)
    return McNemarResult(n=int(a.size), both_correct=int((a & b).sum()), a_only=a_only, b_only=b_only,
                         both_wrong=int((~a & ~b).sum()), p_value=min(1.0, p))
