"""smoke_test_task: load a registry version's GGUF with llama.cpp and answer a few prompts.

Run right after a promotion, on what the ``production`` alias now resolves to: blobs re-hashed,
the GGUF loads, every prompt gets an answer within the time budget and contains the expected text
(when one is given). Any failure raises :class:`SmokeTestFailed`, which rolls the promotion's
transaction back.
"""

from __future__ import annotations


from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from release.smoke import SmokeReport, SmokeSettings, raise_if_failed, run_smoke_test
















@task(name="smoke-test", cache_policy=NO_CACHE)
def smoke_test_task(root: str | None, name: str, ref: str, settings: SmokeSettings) -> SmokeReport:
    """Resolve ``ref``, verify its blobs, load its GGUF and answer the prompts; raise on any failure."""
    report = run_smoke_test(root, name, ref, settings)
    create_table_artifact(report.answers, key="smoke-test",
                          description=f"Smoke test of {name} {ref} = {report.version} ({report.gguf}): "
                                      + ("passed" if report.passed else "FAILED: " + "; ".join(report.problems)))
    raise_if_failed(report, name)
    get_run_logger().info("smoke test of %s %s passed (%d prompts)", name, report.version, len(report.answers))
    return report
