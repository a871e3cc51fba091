"""A/B statistics checked independently: BLEU / ROUGE-L against direct library calls, the paired
bootstrap against a plain numpy resampling loop, McNemar against hand-computed binomial sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from so8t.ab.compare import compare_quality, compare_safety, decisions
from so8t.calibrate.decision_rule import Calibration
from so8t.ab.stats import (CharTokenizer, bleu_from_stats, bleu_stats, bootstrap_indices, corpus_bleu, detect_lang,
                          mcnemar_exact, paired_bootstrap, percentile_interval, rouge_l)

EN_HYP = ["The cat sat on the mat.", "Paris is the capital of France", "", "A hexagon has 6 sides.",
          "Water boils at one hundred degrees."]
EN_REF = ["The cat is on the mat.", "The capital of France is Paris.", "Nothing here.", "A hexagon has six sides.",
          "Water boils at 100 degrees Celsius at sea level."]
JA_HYP = ["日本の首都は東京です。", "富士山は高い山です", "水はH2O", "一週間は七日です。", ""]
JA_REF = ["日本の首都は東京です。", "富士山の高さは約3776メートルです。", "水の化学式はH2Oです。", "一週間は7日です。",
          "クモの脚は8本あります。"]


# ----------------------------------------------------------------------------- BLEU / ROUGE
@pytest.mark.parametrize("hyp,ref,tok", [(EN_HYP, EN_REF, "13a"), (JA_HYP, JA_REF, "char")])
def test_bleu_equals_sacrebleu_corpus_score(hyp, ref, tok):
    direct = sacrebleu.BLEU(tokenize=tok).corpus_score(hyp, [ref]).score
    assert corpus_bleu(hyp, ref, tok) == pytest.approx(direct, abs=1e-9)
    # summing any subset's statistics is the corpus score of that subset
    sub = [0, 1, 3]
    stats = bleu_stats(hyp, ref, tok)
    assert bleu_from_stats(stats[sub]) == pytest.approx(
        sacrebleu.BLEU(tokenize=tok).corpus_score([hyp[i] for i in sub], [[ref[i] for i in sub]]).score, abs=1e-9)


def test_bleu_of_identical_text_is_100_and_japanese_needs_char_tokens():
    assert corpus_bleu(JA_REF, JA_REF, "char") == pytest.approx(100.0)
    # with 13a a Japanese sentence is one token, so a near miss scores 0: why 'char' is used
    assert corpus_bleu(["日本の首都は東京です"], ["日本の首都は東京です。"], "13a") == 0.0
    assert corpus_bleu(["日本の首都は東京です"], ["日本の首都は東京です。"], "char") > 50


def test_rouge_l_equals_rouge_score():
    en = RougeScorer(["rougeL"], use_stemmer=False)
    assert rouge_l(EN_HYP, EN_REF, "en").tolist() == pytest.approx(
        [en.score(r, h)["rougeL"].fmeasure for h, r in zip(EN_HYP, EN_REF)])
    ja = RougeScorer(["rougeL"], use_stemmer=False, tokenizer=CharTokenizer())
    got = rouge_l(JA_HYP, JA_REF, "ja")
    assert got.tolist() == pytest.approx([ja.score(r, h)["rougeL"].fmeasure for h, r in zip(JA_HYP, JA_REF)])
    assert got[0] == pytest.approx(1.0) and 0 < got[1] < 1 and got[4] == 0.0
    # the default rouge-score tokenizer drops Japanese entirely: why a character tokenizer is needed
    assert en.score(JA_REF[1], JA_HYP[1])["rougeL"].fmeasure == 0.0


def test_char_tokenizer_and_language_detection():
    assert CharTokenizer().tokenize("水は H2O") == ["水", "は", "h", "2", "o"]
    assert detect_lang("The capital of Japan is Tokyo.") == "en"
    assert detect_lang("「ありがとう」は英語で「Thank you」と言います。") == "ja"
    assert detect_lang("カタカナ") == "ja" and detect_lang("漢字") == "ja"


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_indices_match_a_per_resample_loop():
    rng = np.random.default_rng(7)
    loop = np.stack([rng.integers(0, 13, size=13) for _ in range(50)])
    assert np.array_equal(bootstrap_indices(13, 50, seed=7), loop)


def test_paired_bootstrap_matches_direct_numpy_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 0.2, 40), rng.normal(0.4, 0.2, 40)
    iv = paired_bootstrap(lambda r: float(a[r].mean() - b[r].mean()), bootstrap_indices(40, 1000, 3), 0.9)
    # independent: a plain loop drawing indices with the same generator
    g = np.random.default_rng(3)
    diffs = []
    for _ in range(1000):
        i = g.integers(0, 40, size=40)
        diffs.append(a[i].mean() - b[i].mean())
    lo, hi = np.percentile(diffs, [5, 95])
    assert iv.estimate == pytest.approx(a.mean() - b.mean())
    assert (iv.low, iv.high) == pytest.approx((lo, hi))
    assert iv.confidence == 0.9 and iv.n_resamples == 1000


def test_bleu_bootstrap_matches_sacrebleu_on_each_resample():
    hyp_a, hyp_b = EN_HYP, ["The cat is on a mat.", "France's capital is Paris.", "Nothing.", "Six sides.", "Water."]
    sa, sb = bleu_stats(hyp_a, EN_REF, "13a"), bleu_stats(hyp_b, EN_REF, "13a")
    idx = bootstrap_indices(5, 100, 1)
    iv = paired_bootstrap(lambda r: bleu_from_stats(sa[r]) - bleu_from_stats(sb[r]), idx, 0.95)
    direct = []
    for r in idx:
        bleu = sacrebleu.BLEU(tokenize="13a")
        refs = [[EN_REF[i] for i in r]]
        direct.append(bleu.corpus_score([hyp_a[i] for i in r], refs).score
                      - bleu.corpus_score([hyp_b[i] for i in r], refs).score)
    assert (iv.low, iv.high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])), abs=1e-9)


def test_interval_significance_and_undefined_samples():
    assert not percentile_interval(0.0, np.zeros(100), 0.95).significant
    assert percentile_interval(1.0, np.linspace(0.5, 1.5, 101), 0.95).significant
    ratio = percentile_interval(1.0, np.linspace(0.9, 1.1, 101), 0.95, null_value=1.0)
    assert not ratio.significant
    iv = percentile_interval(0.1, np.array([np.nan, 0.1, 0.2, np.nan]), 0.95)
    assert iv.n_resamples == 2
    assert percentile_interval(None, np.array([np.nan]), 0.95).low is None


# ----------------------------------------------------------------------------- McNemar
def _hand_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("both,a_only,b_only,neither", [(5, 0, 0, 3), (1, 2, 5, 0), (0, 1, 5, 2), (10, 0, 6, 1),
                                                        (3, 4, 4, 3), (0, 9, 1, 0)])
def test_mcnemar_against_hand_computation(both, a_only, b_only, neither):
    ca = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, bool)
    cb = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, bool)
    res = mcnemar_exact(ca, cb)
    assert (res.both_correct, res.a_only, res.b_only, res.both_wrong) == (both, a_only, b_only, neither)
    assert res.p_value == pytest.approx(_hand_mcnemar(a_only, b_only), rel=1e-12)


def test_mcnemar_small_tables_by_hand():
    # b=1, c=5: 2 * (1 + 6) / 64
    assert mcnemar_exact(np.array([1, 0, 0, 0, 0, 0], bool), np.array([0, 1, 1, 1, 1, 1], bool)).p_value == \
        pytest.approx(14 / 64)
    # b=0, c=6: 2 / 64
    assert mcnemar_exact(np.zeros(6, bool), np.ones(6, bool)).p_value == pytest.approx(2 / 64)


# ----------------------------------------------------------------------------- comparisons
def test_self_comparison_has_no_difference():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 3))
    y = rng.integers(0, 3, 60)
    y[:2] = [0, 2]
    s = compare_safety(y, z, z.copy(), None, None, bootstrap_indices(60, 200, 0), 0.95)
    for iv in (s.far_diff, s.fdr_diff, s.macro_f1_diff, s.accuracy_diff):
        assert iv.estimate == 0.0 and iv.low == 0.0 and iv.high == 0.0 and not iv.significant
    assert s.mcnemar.p_value == 1.0
    q = compare_quality(EN_REF + JA_REF, ["en"] * 5 + ["ja"] * 5, EN_HYP + JA_HYP, EN_HYP + JA_HYP, 200, 0, 0.95)
    for g in [q.overall, *q.by_lang.values()]:
        assert g.bleu_diff.low == g.bleu_diff.high == 0.0 and g.rouge_l_diff.low == g.rouge_l_diff.high == 0.0
    assert q.by_lang["ja"].bleu_a == pytest.approx(sacrebleu.BLEU(tokenize="char").corpus_score(JA_HYP, [JA_REF]).score)
    assert q.by_lang["en"].bleu_a == pytest.approx(sacrebleu.BLEU(tokenize="13a").corpus_score(EN_HYP, [EN_REF]).score)


def test_calibrated_decision_rule():
    z = np.log(np.array([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.5, 0.3]]))
    assert decisions(z, None).tolist() == [0, 0, 1]
    cal = Calibration(temperature=1.0, tau_deny=0.35, tau_escalate=0.55, source="x")
    # row 0: p_DENY 0.1 < 0.35, p_ALLOW 0.6 >= 0.55 -> ALLOW; row 1: p_DENY 0.4 -> DENY; row 2: ESCALATE
    assert decisions(z, cal).tolist() == [0, 2, 1]
