"""``make demo``: so8t-pipeline on the embedded SmolLM2-135M-Instruct and the bundled data.

Runs in Prefect's ephemeral mode (no server to start; a temporary API starts inside the process),
then shows the calibrated model deciding a few held-out requests and prints the registry version,
the GGUF, the calibration verdict, the held-out evaluation and how to use the model with llama.cpp
(``so8t run``) and Ollama. A candidate that fails the promotion gate is rejected: the demo then says
so and shows what was rejected and why. The gate is always the default one.

The recipe settings, the command line and what is shown after the run are plain Python in
:mod:`release.demo`; this module runs the flow between them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from release.demo import DemoOutcome, demo_params, parse_demo_args, report_demo


def run_demo(output_dir: Path, recipe: str = "demo", max_steps: int | None = None, base_ab: bool = False,
             base: str = "smollm2") -> DemoOutcome:
    """Run the pipeline flow (ephemeral Prefect) and print how to use the result."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "so8t,registry")
    from flows.prefect_defaults import apply_ephemeral_defaults

    apply_ephemeral_defaults()  # before the ephemeral API server starts (it inherits the environment)
    from flows.pipeline import pipeline

    t0 = time.monotonic()
    output_dir = Path(output_dir).resolve()
    params = demo_params(output_dir, recipe, max_steps, base)
    state = pipeline(params, return_state=True)
    return report_demo(params, output_dir, state.is_completed(), state.message, t0, base_ab=base_ab, base=base)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.demo`` (what ``make demo`` runs)."""
    args = parse_demo_args(argv, prog="python -m flows.demo", description=__doc__.split("\n\n")[0])
    run_demo(Path(args.output_dir), recipe=args.recipe, max_steps=args.max_steps, base_ab=args.base_ab, base=args.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
