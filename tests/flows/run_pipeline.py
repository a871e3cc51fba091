"""Run so8t-pipeline from a JSON file of PipelineParams (used by the kill-and-resume test).

    python -m tests.flows.run_pipeline params.json [tag]
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from prefect import tags

    from release.params import PipelineParams
    from flows.pipeline import pipeline

    params = PipelineParams.model_validate_json(Path(argv[0]).read_text())
    with tags(*(argv[1:2] or ["so8t-subprocess"])):
        pipeline(params)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
