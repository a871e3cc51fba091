"""A/B evaluation of two GGUF models: quality, safety, performance, and a non-inferiority verdict.

The runbook's "A/Bテスト" compares model A (the SO8T-baked candidate) with model B (the base
model, or production). :func:`run_ab` does all of it and returns an :class:`ABReport`; it writes
nothing. :func:`write_ab_report` writes ``ab_report.json`` and ``ab_report.md`` atomically; the
``so8t ab`` command and the Prefect ``ab_evaluate`` task call both.

1. Quality: greedy answers of A and B to each instruction (chat template, own end-of-turn, token
   limit), BLEU and ROUGE-L against the reference per language (:mod:`so8t.ab.stats`), with paired
   bootstrap intervals of A - B.
2. Safety: label scores of the decision prompt from :func:`so8t.calibrate.scoring.score_gguf`; decisions by
   the calibrated rule (``p = softmax(z / T)``; DENY if ``p_DENY >= tau_deny``, else ALLOW if
   ``p_ALLOW >= tau_escalate``, else ESCALATE) when a model has calibration results, else argmax;
   false-allow rate, false-deny rate, macro F1 (:mod:`so8t.calibrate.metrics`), bootstrap intervals of A - B
   and McNemar's exact test on paired correctness.
3. Performance: the quality generations, A and B interleaved (order alternating per item, after
   one warm-up each) so that load on a shared machine hits both alike (:mod:`so8t.ab.perf`).
4. Verdict: A passes when it is not worse than B beyond the configured margins.

Every input is checked (and all problems reported in one line) before any model runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from so8t.atomic import atomic_write_bytes
from so8t.ab.compare import Calibration, compare_quality, compare_safety, load_calibration, throughput_ratio
from so8t.ab.perf import (GreedyGenerator, check_fits, generate_pairs, generate_sharded, measure_peak_rss,
                          resolve_threads, summarize)
# ABConfig and ABReport live with the other result models in so8t.ab.results (the report embeds its
# config, and the markdown renders both); they stay importable from here, as docs/abtest.md shows.
from so8t.ab.results import (DEFAULT_QUALITY_DATA, DEFAULT_SAFETY_DATA, ABConfig, ABReport, Check, ModelInfo,
                            PerfComparison, QualityItem, QualityReport, SafetyComparison, Verdict)
from so8t.ab.stats import bootstrap_indices, detect_lang
from so8t.decision import DEFAULT_DECISION_PROMPT, DecisionPrompt, resolve_prompt
from so8t.errors import ConfigError, DataError, So8tError
from so8t.shards import ShardExecutor, executor_context

__all__ = ["ABConfig", "ABReport", "Calibration", "EvalSets", "load_calibration", "load_eval_sets", "run_ab",
           "write_ab_report", "DEFAULT_QUALITY_DATA", "DEFAULT_SAFETY_DATA"]

logger = logging.getLogger(__name__)

REPORT_JSON = "ab_report.json"
REPORT_MD = "ab_report.md"


# ----------------------------------------------------------------------------- inputs
class EvalSets(BaseModel):
    """The evaluation data after reading and ``limit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instructions: tuple[str, ...] = Field(description="Quality prompts.")
    references: tuple[str, ...] = Field(description="Reference answers, one per prompt.")
    langs: tuple[str, ...] = Field(description="'en' or 'ja' per quality item (detected from the reference).")
    safety_texts: tuple[str, ...] = Field(description="Safety requests.")
    safety_labels: tuple[str, ...] = Field(description="Their labels (ALLOW/ESCALATE/DENY).")


def _read_quality(path: str | Path) -> tuple[list[str], list[str]]:
    from so8t.training.data import InstructionRecord, read_jsonl

    p = Path(path).expanduser()
    records = read_jsonl(p)
    for i, r in enumerate(records):
        if not isinstance(r, InstructionRecord):
            raise DataError(f"{p}: record {i + 1} has no reference: quality data needs {{\"instruction\", \"output\"}} "
                            "records (output = reference answer)")
    return [r.instruction for r in records], [r.output for r in records]


def load_eval_sets(cfg: ABConfig) -> EvalSets:
    """Read both evaluation sets and apply ``cfg.limit``.

    Raises:
        DataError: A file problem (file:line: field), or a safety set without ALLOW or without
            ESCALATE/DENY labels (false-allow and false-deny rates need both).
    """
    from so8t.calibrate.scoring import read_labelled

    ins, refs = _read_quality(cfg.quality_data)
    texts, labels = read_labelled(cfg.safety_data)
    if cfg.limit is not None:
        ins, refs, texts, labels = ins[:cfg.limit], refs[:cfg.limit], texts[:cfg.limit], labels[:cfg.limit]
    if "ALLOW" not in labels or all(lab == "ALLOW" for lab in labels):
        raise DataError(f"{cfg.safety_data}: the first {len(labels)} safety prompts have labels "
                        f"{sorted(set(labels))}: false-allow and false-deny rates need ALLOW and ESCALATE/DENY "
                        "prompts; add them or raise limit")
    return EvalSets(instructions=tuple(ins), references=tuple(refs), langs=tuple(detect_lang(r) for r in refs),
                    safety_texts=tuple(texts), safety_labels=tuple(labels))


def _check_inputs(cfg: ABConfig) -> tuple[EvalSets, Calibration | None, Calibration | None, DecisionPrompt]:
    """Validate every input, gathering all problems into one error."""
    from so8t.calibrate.scoring import check_gguf

    problems: list[So8tError] = []
    for path in (cfg.model_a, cfg.model_b):
        try:
            check_gguf(path)
        except So8tError as e:
            problems.append(e)
    cals: list[Calibration | None] = []
    for path in (cfg.calibration_a, cfg.calibration_b):
        try:
            cals.append(None if path is None else load_calibration(path))
        except So8tError as e:
            problems.append(e)
    sets = None
    try:
        sets = load_eval_sets(cfg)
    except So8tError as e:
        problems.append(e)
    prompt = DEFAULT_DECISION_PROMPT
    try:
        prompt = resolve_prompt(cfg.decision_prompt, cfg.model_a)
    except So8tError as e:
        problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigError("; ".join(str(e) for e in problems))
    return sets, cals[0], cals[1], prompt


# ----------------------------------------------------------------------------- verdict
def verdict(cfg: ABConfig, quality: QualityReport, safety: SafetyComparison, perf: PerfComparison) -> Verdict:
    """Non-inferiority of A against B: every enabled check must pass (an undefined value fails)."""
    checks: list[Check] = []

    def add(name: str, statistic: str, value: float | None, threshold: float, ok_if: Literal[">=", "<="]) -> None:
        passed = value is not None and (value >= threshold if ok_if == ">=" else value <= threshold)
        checks.append(Check(name=name, statistic=statistic, value=value, rule=f"{ok_if} {threshold:g}", passed=passed))

    q = quality.overall
    add("bleu", f"lower {cfg.confidence:.0%} bound of BLEU(A) - BLEU(B)", q.bleu_diff.low, -cfg.margin_bleu, ">=")
    add("rouge_l", f"lower {cfg.confidence:.0%} bound of ROUGE-L(A) - ROUGE-L(B)", q.rouge_l_diff.low,
        -cfg.margin_rouge_l, ">=")
    if cfg.far_statistic == "upper":
        add("false_allow_rate", f"upper {cfg.confidence:.0%} bound of FAR(A) - FAR(B)", safety.far_diff.high,
            cfg.margin_far, "<=")
    else:
        add("false_allow_rate", "FAR(A) - FAR(B)", safety.far_diff.estimate, cfg.margin_far, "<=")
    add("false_deny_rate", "FDR(A) - FDR(B)", safety.fdr_diff.estimate, cfg.margin_fdr, "<=")
    add("macro_f1", "macro F1(A) - macro F1(B)", safety.macro_f1_diff.estimate, -cfg.margin_macro_f1, ">=")
    add("throughput", "generation tokens/s A / B", perf.throughput_ratio.estimate, cfg.min_throughput_ratio, ">=")
    failed = [c.name for c in checks if not c.passed]
    summary = "A is non-inferior to B on every check" if not failed else "A fails: " + ", ".join(failed)
    return Verdict(passed=not failed, summary=summary, checks=tuple(checks))


# ----------------------------------------------------------------------------- the run
def _model_info(path: str, cal: Calibration | None, sha: str) -> ModelInfo:
    return ModelInfo(path=str(Path(path).expanduser()), name=Path(path).name, size_bytes=Path(path).expanduser().stat().st_size,
                     sha256=sha, calibration=None if cal is None else cal.model_dump())


def run_ab(cfg: ABConfig, progress: bool | None = None, executor: ShardExecutor | None = None) -> ABReport:
    """Run the whole A/B evaluation and return its report (writes nothing).

    Args:
        cfg: The configuration.
        progress: tqdm bar over the generations (None: only on a terminal).
        executor: Score the safety prompts and run the generations in contiguous shards on these workers
            (:mod:`so8t.shards`; each worker loads A and B); None: the plain dask cluster ``cfg.dask_workers`` /
            ``cfg.dask_scheduler`` ask for, else in this process. Greedy answers and scores are the same either way.

    Returns:
        The :class:`ABReport`; ``report.to_markdown()`` renders it.

    Raises:
        So8tError: Bad input (every problem in one line), before any model runs.
    """
    versions = _library_versions()  # a missing library fails here, before anything runs
    t_start = time.monotonic()
    sets, cal_a, cal_b, prompt = _check_inputs(cfg)
    threads = resolve_threads(cfg.n_threads)
    instructions, refs, langs = list(sets.instructions), list(sets.references), list(sets.langs)
    logger.info("A/B: %s vs %s on %d quality items (%s) and %d safety prompts, %d thread(s)",
                Path(cfg.model_a).name, Path(cfg.model_b).name, len(instructions),
                ", ".join(f"{lang} {langs.count(lang)}" for lang in sorted(set(langs))), len(sets.safety_texts), threads)
    runs = _run_models(cfg, sets, prompt, threads, progress, executor)
    threads = runs.threads
    t0 = time.monotonic()
    rss = {k: None if cfg.skip_memory else measure_peak_rss(m, cfg.n_ctx, threads)
           for k, m in (("a", cfg.model_a), ("b", cfg.model_b))}
    seconds = {**runs.seconds, "peak_memory": time.monotonic() - t0}

    sc, gens = runs.scores, runs.gens
    out_a, out_b = [g.text for g in gens["a"]], [g.text for g in gens["b"]]
    quality = compare_quality(refs, langs, out_a, out_b, cfg.n_bootstrap, cfg.seed, cfg.confidence)
    idx_s = bootstrap_indices(len(sc[0].y), cfg.n_bootstrap, cfg.seed + 1)
    safety = compare_safety(sc[0].y, sc[0].z, sc[1].z, cal_a, cal_b, idx_s, cfg.confidence,
                            scoring={"a": sc[0].info(), "b": sc[1].info()})
    perf = _compare_performance(cfg, gens, runs.load_seconds, rss, threads)
    report = ABReport(
        config=cfg, model_a=_model_info(cfg.model_a, cal_a, sc[0].model_sha256),
        model_b=_model_info(cfg.model_b, cal_b, sc[1].model_sha256), quality=quality, safety=safety,
        performance=perf, items=_quality_items(instructions, refs, langs, gens),
        verdict=verdict(cfg, quality, safety, perf),
        seconds={**seconds, "total": time.monotonic() - t_start}, versions=versions,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    logger.info("A/B verdict: %s (%.0f s)", report.verdict.summary, report.seconds["total"])
    return report


@dataclass
class _ModelRuns:
    """What the two loaded models produced: label scores, generations, and how long each part took."""

    scores: list  # [A, B]: so8t.calibrate.scoring.Scores of the safety set
    gens: dict[str, list]  # "a"/"b": one generation per quality item
    load_seconds: dict[str, float]
    seconds: dict[str, float]  # safety_scoring, generation
    threads: int  # llama.cpp threads per model instance


def _run_models(cfg: ABConfig, sets: EvalSets, prompt: DecisionPrompt, threads: int, progress: bool | None,
                executor: ShardExecutor | None = None) -> _ModelRuns:
    """The safety set scored by each model, then the greedy quality generations of A and B: both models loaded once
    here, or on every shard worker (the same per-item loop in contiguous shards)."""
    from so8t.calibrate.scoring import score_gguf

    instructions = list(sets.instructions)

    def score_safety(ex: ShardExecutor | None) -> tuple[list, float]:
        t0 = time.monotonic()
        sc = [score_gguf(m, list(sets.safety_texts), list(sets.safety_labels), n_ctx=cfg.n_ctx, n_threads=cfg.n_threads
                         if ex is not None else threads, use_cache=not cfg.no_cache, progress=progress, prompt=prompt,
                         executor=ex) for m in (cfg.model_a, cfg.model_b)]
        return sc, time.monotonic() - t0

    with executor_context(executor, cfg.dask_workers, cfg.dask_scheduler) as ex:
        if ex is None:
            with GreedyGenerator(cfg.model_a, cfg.n_ctx, threads, cfg.seed) as ga, \
                    GreedyGenerator(cfg.model_b, cfg.n_ctx, threads, cfg.seed) as gb:
                ga.check_fits(instructions, cfg.max_new_tokens)  # fail before minutes of work
                gb.check_fits(instructions, cfg.max_new_tokens)
                sc, t_safety = score_safety(None)
                t0 = time.monotonic()
                pairs = generate_pairs(ga, gb, instructions, cfg.max_new_tokens, progress=progress)
                t_gen = time.monotonic() - t0
                load = {"a": ga.load_seconds, "b": gb.load_seconds}
        else:
            for m in (cfg.model_a, cfg.model_b):
                check_fits(m, instructions, cfg.max_new_tokens, cfg.n_ctx)  # fail before minutes of work
            sc, t_safety = score_safety(ex)
            t0 = time.monotonic()
            pairs, parts = generate_sharded(ex, cfg.model_a, cfg.model_b, instructions, cfg.max_new_tokens,
                                            n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, seed=cfg.seed)
            t_gen = time.monotonic() - t0
            # each worker loaded both models: the mean load per model is what one load costs
            load = {k: sum(p.load_seconds[j] for p in parts) / len(parts) for j, k in enumerate("ab")}
            threads = parts[0].timing.threads
    gens: dict[str, list] = {"a": [a for a, _ in pairs], "b": [b for _, b in pairs]}
    return _ModelRuns(scores=sc, gens=gens, load_seconds=load, seconds={"safety_scoring": t_safety, "generation": t_gen},
                      threads=threads)


def _compare_performance(cfg: ABConfig, gens: dict[str, list], load: dict[str, float],
                         rss: dict[str, float | None], threads: int) -> PerfComparison:
    sizes = {k: Path(m).expanduser().stat().st_size for k, m in (("a", cfg.model_a), ("b", cfg.model_b))}
    perf_a = summarize(gens["a"], load["a"], sizes["a"], rss["a"])
    perf_b = summarize(gens["b"], load["b"], sizes["b"], rss["b"])
    idx_q = bootstrap_indices(len(gens["a"]), cfg.n_bootstrap, cfg.seed + 2)
    return PerfComparison(a=perf_a, b=perf_b, threads=threads, throughput_ratio=throughput_ratio(
        gens["a"], gens["b"], idx_q, cfg.confidence))


def _quality_items(instructions: list[str], refs: list[str], langs: list[str],
                   gens: dict[str, list]) -> tuple[QualityItem, ...]:
    return tuple(QualityItem(index=i, lang=langs[i], instruction=instructions[i], reference=refs[i],
                             output_a=gens["a"][i].text, output_b=gens["b"][i].text,
                             new_tokens_a=gens["a"][i].new_tokens, new_tokens_b=gens["b"][i].new_tokens,
                             stopped_a=gens["a"][i].stopped, stopped_b=gens["b"][i].stopped)
                 for i in range(len(instructions)))


def _library_versions() -> dict[str, str]:
    import llama_cpp
    import rouge_score
    import sacrebleu

    return {"llama_cpp_python": llama_cpp.__version__, "sacrebleu": sacrebleu.__version__,
            "rouge_score": getattr(rouge_score, "__version__", _dist_version("rouge-score"))}


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def write_ab_report(report: ABReport, output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``ab_report.json`` and ``ab_report.md`` (each atomically: temp file + rename; markdown first).

    Returns:
        The JSON and markdown paths.
    """
    out = Path(output_dir).expanduser()
    md, js = out / REPORT_MD, out / REPORT_JSON
    atomic_write_bytes(md, report.to_markdown().encode("utf-8"))
    atomic_write_bytes(js, (report.model_dump_json(indent=2) + "\n").encode("utf-8"))
    return js, md


def read_ab_report(path: str | Path) -> ABReport:
    """Load an ``ab_report.json`` back into an :class:`ABReport`."""
    return ABReport.model_validate_json(Path(path).read_text(encoding="utf-8"))
