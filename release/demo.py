"""The demo's plain-Python parts (``python -m flows.demo``, ``make demo``): its training recipes and pipeline
parameters, its command line, and what it shows after the flow run.

``flows/demo.py`` only runs the pipeline flow (ephemeral Prefect) between :func:`demo_params` and
:func:`report_demo`. After the run: the calibrated model deciding a few held-out requests, the registry
version, the GGUF, the calibration verdict, the held-out evaluation and how to use the model with llama.cpp
(``so8t run``) and Ollama; a candidate that failed the promotion gate is shown as rejected, with why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from registry import NotFoundError, Registry
from so8t.serving.inference import SAMPLING_TEMPERATURE_RANGE


def demo_name(base: str = "smollm2") -> str:
    """The registry name of the demo model on an embedded base (``so8t-smollm2``, ``so8t-gemma3-270m``)."""
    return f"so8t-{base}"


#: Training recipes for the decision model on 2 CPU cores, chosen by measurement (BENCHMARKS.md,
#: *Decision recipe*): LoRA and SO(8) gates on the upper 10 layers (nothing below them needs a
#: backward pass), the loss on the label token, batches of 16 label records whose shared prompt
#: prefix is evaluated once, no LoRA dropout (a sub-epoch run gains nothing from it; it was 9 % of
#: a step). "demo" fits `make demo` into 12 minutes on a fresh 2-core machine (11.1 min measured,
#: *Session 6* in BENCHMARKS.md); "full" is the longer CPU run.
RECIPES: dict[str, dict] = {
    "demo": dict(max_steps=100, warmup_steps=5),
    "full": dict(max_steps=300, warmup_steps=10),
}
RECIPE_COMMON = dict(batch_size=16, gradient_accumulation_steps=1, max_length=512, learning_rate=3e-3, lora_dropout=0.0,
                     lora_layers="top:10", so8t_layers="top:10", label_loss="label_token", pet_lambda=0.1)


def demo_params(output_dir: Path, recipe: str = "demo", max_steps: int | None = None, base: str = "smollm2"):
    """The demo's pipeline parameters: a CPU recipe on the real decision data, Q8_0 served, the default gate.

    ``base`` is an embedded base model (``so8t base list``); the recipe is the same for every base.

    The gate is never loosened here: a model is promoted because it meets GateConfig()'s defaults.
    """
    # imported here: Prefect reads its settings when first imported, after run_demo has set the defaults
    from release.params import BUNDLED_VAL, DATA_DIR, CalibrationSettings, ConvertSettings, ModelRef, PipelineParams, TrainSettings
    from release.evaluation import EvaluationSettings

    steps = max_steps or RECIPES[recipe]["max_steps"]
    train = TrainSettings(base_model=base, dataset=str(DATA_DIR / "decision_train.jsonl"),
                          **{**RECIPE_COMMON, **RECIPES[recipe], "max_steps": steps, "save_steps": max(1, steps // 3)})
    return PipelineParams(
        model=ModelRef(name=demo_name(base), registry_root=str(output_dir / "registry")),
        work_dir=str(output_dir / "work"),
        train=train,
        convert=ConvertSettings(quants=("Q8_0",)),
        calibration=CalibrationSettings(val_data=BUNDLED_VAL, n_threads=_all_cores()),
        evaluation=EvaluationSettings(n_threads=_all_cores()),
    )


def _all_cores() -> int:
    # nothing else runs during the demo: llama.cpp may use every core (its default is half)
    return max(1, os.cpu_count() or 1)


def parse_demo_args(argv: list[str] | None, prog: str, description: str) -> argparse.Namespace:
    """The demo's command line (``python -m flows.demo --help``)."""
    from so8t.base_models import EMBEDDED

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--output_dir", default="outputs/demo", help="Where the demo writes (default: outputs/demo).")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="demo",
                    help="Training recipe: 'demo' (fits make demo's 12 minutes on 2 cores) or 'full' (the longer CPU run).")
    ap.add_argument("--max_steps", type=int, default=None, help="Override the recipe's training steps.")
    ap.add_argument("--base", default="smollm2", choices=sorted(EMBEDDED),
                    help="Embedded base model to fine-tune (default smollm2; gemma3-270m needs `make base-gemma` first, "
                         "see BENCHMARKS.md 'Base model').")
    ap.add_argument("--base_ab", action="store_true", help="Also A/B the result against its base model (chat quality, "
                                                           "safety on the default A/B sets; a few more minutes).")
    return ap.parse_args(argv)


class DemoOutcome(BaseModel):
    """What the demo ends with."""

    promoted: bool
    name: str
    version: str
    candidate: str | None
    verdict: str
    gguf: str
    modelfile: str
    registry_root: str
    seconds: float
    message: str = ""


def _newest(reg: Registry, name: str) -> str:
    return reg.list_versions(name)[-1].version


def report_demo(params, output_dir: Path, completed: bool, message: str | None, t0: float, base_ab: bool = False,
                base: str = "smollm2") -> DemoOutcome:
    """After the pipeline run (``completed``: the flow run's state; ``message``: its message): the version it
    promoted, or the candidate it rejected, exported under ``output_dir/release``, shown at work and summed up.

    Raises:
        SystemExit(1): the run failed for another reason than the gate or the smoke test (an error to fix).
    """
    reg = Registry(params.model.registry_root)
    name = params.model.name
    if not completed and not re.search(r"failed the promotion gate|failed its smoke test", message or ""):
        print(f"\nSO8T demo failed: {message}")  # not a verdict on the model: an error to fix
        raise SystemExit(1)
    try:
        version = reg.resolve(name, "production") if completed else _newest(reg, name)
    except NotFoundError:
        print(f"\nSO8T demo failed before anything was published: {message}")
        raise SystemExit(1) from None
    m = reg.manifest(name, version)
    release = output_dir / "release" / version
    if release.exists():
        shutil.rmtree(release)
    reg.export(name, version, release, link=True)
    main = m.parameters.get("main_gguf")
    calib = release / "calibration" / "calibration_results.json"
    doc = json.loads(calib.read_text()) if calib.is_file() else {}
    verdict = doc.get("verdict", {}).get("summary", "not calibrated")
    out = DemoOutcome(
        promoted=completed, name=name, version=version, candidate=(m.lineage.parents or (None,))[0],
        verdict=verdict, gguf=str(release / str(main)), modelfile=str(release / "gguf" / "Modelfile"),
        registry_root=str(reg.root), seconds=time.monotonic() - t0, message=message or "",
    )
    show_model_at_work(Path(out.gguf), calib, release / "gguf" / "decision_prompt.json",
                       showcase_records(Path(params.evaluation.data or "data/decision_test.jsonl")))
    ab_md = run_base_ab(output_dir, Path(out.gguf), calib, params.convert.quants[0], base) if base_ab else None
    print_summary(out, doc)
    heldout = _heldout_report(Path(params.work_dir), out.candidate)
    if heldout:
        print(f"  held-out:     {heldout}  (so8t evaluate on data/decision_test.jsonl, per source)")
    if ab_md:
        print(f"  A/B report:   {ab_md}  (candidate vs the base {base}, default evaluation sets)")
    return out


def run_base_ab(output_dir: Path, candidate_gguf: Path, calibration: Path | None, quant: str,
                base: str = "smollm2") -> Path:
    """A/B of the candidate against its base model (same quantization) on the default sets.

    The base is converted once (reused on later runs by its provenance check); the
    candidate's decisions use its calibration when there is one, the base's its argmax.

    Returns:
        The markdown report's path.
    """
    from so8t.ab.runner import ABConfig, run_ab, write_ab_report
    from so8t.base_models import prepare_embedded
    from so8t.export.gguf import convert_to_gguf

    conv = convert_to_gguf(prepare_embedded(base), output_dir / "base_gguf", [quant], name=f"{base}-base", fidelity=False)
    cfg = ABConfig(model_a=str(candidate_gguf), model_b=str(conv.path(quant)),
                   calibration_a=str(calibration) if calibration and calibration.is_file() else None)
    report = run_ab(cfg, progress=True)
    _, md = write_ab_report(report, output_dir / "ab")
    print()
    print(report.to_markdown())
    print(f"A/B vs the base model ({report.seconds['total']:.0f} s): {report.verdict.summary}")
    return md


def _heldout_report(work_dir: Path, candidate: str | None) -> Path | None:
    """The held-out evaluation report the flow wrote for ``candidate`` (newest if several)."""
    found = sorted(work_dir.glob(f"calibration/*/{candidate}/*/heldout-evaluation/evaluation.md"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


#: Held-out requests the demo shows the model deciding: (source, label) picks from data/decision_test.jsonl,
#: never trained or calibrated on. The first record of each pair in file order is shown.
SHOWCASE = (("dolly-openqa", "ALLOW"), ("coconot-contrast", "ALLOW"), ("dolly-ja", "ALLOW"), ("ailuminate", "ESCALATE"),
            ("advbench", "DENY"), ("gptfuzz-jailbreak", "DENY"), ("synthetic", "ESCALATE"), ("synthetic", "DENY"))


def showcase_records(path: Path) -> list[dict]:
    """One held-out record per :data:`SHOWCASE` pair (in that order; pairs with no record are skipped)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    picked = []
    for source, label in SHOWCASE:
        hit = next((r for r in rows if r.get("source") == source and r["label"] == label and r not in picked), None)
        if hit is not None:
            picked.append(hit)
    return picked


def show_model_at_work(gguf: Path, calibration: Path, prompt_file: Path | None, records: list[dict]) -> list[dict]:
    """Decide a few held-out requests with the calibrated model and print decision and probabilities."""
    from so8t.decision import LABELS, load_decision_prompt
    from so8t.calibrate.metrics import decide, softmax
    from so8t.calibrate.scoring import score_gguf

    cal = json.loads(calibration.read_text())
    prompt = load_decision_prompt(prompt_file if prompt_file and prompt_file.is_file() else None)
    scores = score_gguf(gguf, [r["text"] for r in records], [r["label"] for r in records], prompt=prompt, progress=False)
    p = softmax(scores.z, cal["temperature"])
    d = decide(p, cal["tau_deny"], cal["tau_escalate"])
    print(f"\nThe calibrated model at work on held-out requests (data/decision_test.jsonl; T={cal['temperature']:.3g}, "
          f"tau_deny={cal['tau_deny']:.3g}, tau_escalate={cal['tau_escalate']:.3g}):")
    shown = []
    for r, probs, k in zip(records, p, d):
        text = " ".join(r["text"].split())
        text = text if len(text) <= 90 else text[:87] + "..."
        mark = "ok " if LABELS[k] == r["label"] else "MISS"
        print(f"  {mark} {LABELS[k]:<8} (true {r['label']:<8}) P(A/E/D)={probs[0]:.2f}/{probs[1]:.2f}/{probs[2]:.2f}  "
              f"[{r['source']}] {text}")
        shown.append({"text": r["text"], "label": r["label"], "decision": LABELS[k], "p": probs.round(4).tolist()})
    return shown


def print_summary(out: DemoOutcome, calibration: dict) -> None:
    state = (f"PROMOTED {out.name} {out.version} to production" if out.promoted
             else f"REJECTED {out.name} {out.version} (production unchanged)")
    t = calibration.get("temperature")
    print()
    print(f"SO8T demo finished in {out.seconds / 60:.1f} min: {state}")
    print(f"  registry:     {out.version} (calibrated from candidate {out.candidate}) in {out.registry_root}")
    print(f"                so8t registry list {out.name} --root {out.registry_root}")
    print(f"  GGUF:         {out.gguf}")
    print(f"  calibration:  {out.verdict}" + (f"  (T={t:.3g}, tau_deny={calibration['tau_deny']:.3g}, "
                                              f"tau_escalate={calibration['tau_escalate']:.3g})" if t else ""))
    if not out.promoted:
        why = re.search(r"(failed the promotion gate on [\w, ]+|failed its smoke test[^;]*)", out.message)
        print(f"  why:          {why.group(1) if why else out.message}")
        print("                (the default gate: ECE <= 0.05, FAR <= 0.02, macro F1 >= 0.5 on the calibration hold-out;")
        print("                 the rejected model is exported above for inspection; `--recipe full` trains longer)")
    # The calibrated temperature is the decision classifier's; as a sampling temperature it only
    # makes sense in a sane range (a fit that hit its upper bound, e.g. 20, would give noise).
    lo, hi = SAMPLING_TEMPERATURE_RANGE
    temp = f" --temp {t:.3g}" if t and lo <= t <= hi else ""
    print(f"  llama.cpp:    so8t run -m {out.gguf} -p \"What is the capital of France?\" -n 64{temp}")
    print(f"  Ollama:       ollama create {out.name} -f {out.modelfile} && ollama run {out.name} \"What is the capital of France?\"")
    print("  Prefect UI:   prefect server start --host 127.0.0.1  (then see docs/orchestration.md to deploy)")
