"""``make demo``: so8t-pipeline on the embedded SmolLM2-135M-Instruct and the bundled data.

Runs in Prefect's ephemeral mode (no server to start; a temporary API starts inside the process),
then prints the registry version, the GGUF, the calibration verdict and how to use the model with
llama.cpp (``so8t run``) and Ollama. A candidate that fails the promotion gate is a normal outcome
on a 12-step CPU run: the demo then says so and shows what was rejected and why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from registry import NotFoundError, Registry
from so8t.inference import SAMPLING_TEMPERATURE_RANGE

DEMO_NAME = "so8t-smollm2"


def demo_params(output_dir: Path, max_steps: int = 12):
    """The demo's pipeline parameters: a short CPU-sized run, Q8_0 served, the default gate."""
    from flows.params import ConvertSettings, ModelRef, PipelineParams, TrainSettings

    return PipelineParams(
        model=ModelRef(name=DEMO_NAME, registry_root=str(output_dir / "registry")),
        work_dir=str(output_dir / "work"),
        train=TrainSettings(batch_size=4, gradient_accumulation_steps=1, max_steps=max_steps,
                            save_steps=max(1, max_steps // 2), max_length=384, learning_rate=2e-4, pet_lambda=0.1),
        convert=ConvertSettings(quants=("Q8_0",)),
    )


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


def run_base_ab(output_dir: Path, candidate_gguf: Path, calibration: Path | None, quant: str) -> Path:
    """A/B of the candidate against the base model (same quantization) on the default sets.

    The base SmolLM2 is converted once (reused on later runs by its provenance check); the
    candidate's decisions use its calibration when there is one, the base's its argmax.

    Returns:
        The markdown report's path.
    """
    from so8t.abtest import ABConfig, run_ab, write_ab_report
    from so8t.base_models import prepare_embedded
    from so8t.gguf import convert_to_gguf

    base = convert_to_gguf(prepare_embedded("smollm2"), output_dir / "base_gguf", [quant], name="smollm2-base", fidelity=False)
    cfg = ABConfig(model_a=str(candidate_gguf), model_b=str(base.path(quant)),
                   calibration_a=str(calibration) if calibration and calibration.is_file() else None)
    report = run_ab(cfg, progress=True)
    _, md = write_ab_report(report, output_dir / "ab")
    print()
    print(report.to_markdown())
    print(f"A/B vs the base model ({report.seconds['total']:.0f} s): {report.verdict.summary}")
    return md


def run_demo(output_dir: Path, max_steps: int = 12) -> DemoOutcome:
    """Run the pipeline flow (ephemeral Prefect) and print how to use the result."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "so8t,registry")
    from flows.prefect_defaults import apply_ephemeral_defaults

    apply_ephemeral_defaults()  # before the ephemeral API server starts (it inherits the environment)
    from flows.pipeline import pipeline

    t0 = time.monotonic()
    output_dir = Path(output_dir).resolve()
    params = demo_params(output_dir, max_steps)
    state = pipeline(params, return_state=True)
    reg = Registry(params.model.registry_root)
    name = params.model.name
    if not state.is_completed() and not re.search(r"failed the promotion gate|failed its smoke test", state.message or ""):
        print(f"\nSO8T demo failed: {state.message}")  # not a verdict on the model: an error to fix
        raise SystemExit(1)
    try:
        version = reg.resolve(name, "production") if state.is_completed() else _newest(reg, name)
    except NotFoundError:
        print(f"\nSO8T demo failed before anything was published: {state.message}")
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
        promoted=state.is_completed(), name=name, version=version, candidate=(m.lineage.parents or (None,))[0],
        verdict=verdict, gguf=str(release / str(main)), modelfile=str(release / "gguf" / "Modelfile"),
        registry_root=str(reg.root), seconds=time.monotonic() - t0, message=state.message or "",
    )
    ab_md = run_base_ab(output_dir, Path(out.gguf), calib, params.convert.quants[0])
    print_summary(out, doc)
    print(f"  A/B report:   {ab_md}  (candidate vs the base SmolLM2, default evaluation sets)")
    return out


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
        print("                (12 CPU steps rarely meet the default gate: ECE <= 0.05, FAR <= 0.02, macro F1 >= 0.5;")
        print("                 the rejected model is exported above for inspection)")
    # The calibrated temperature is the decision classifier's; as a sampling temperature it only
    # makes sense in a sane range (a fit that hit its upper bound, e.g. 20, would give noise).
    lo, hi = SAMPLING_TEMPERATURE_RANGE
    temp = f" --temp {t:.3g}" if t and lo <= t <= hi else ""
    print(f"  llama.cpp:    so8t run -m {out.gguf} -p \"What is the capital of France?\" -n 64{temp}")
    print(f"  Ollama:       ollama create {out.name} -f {out.modelfile} && ollama run {out.name} \"What is the capital of France?\"")
    print("  Prefect UI:   prefect server start --host 127.0.0.1  (then see docs/orchestration.md to deploy)")


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.demo`` (what ``make demo`` runs)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output_dir", default="outputs/demo", help="Where the demo writes (default: outputs/demo).")
    ap.add_argument("--max_steps", type=int, default=12, help="Training steps of the short demo run (default: 12).")
    args = ap.parse_args(argv)
    run_demo(Path(args.output_dir), max_steps=args.max_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
