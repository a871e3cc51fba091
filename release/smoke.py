"""The smoke test of a promoted version: load its GGUF with llama.cpp and answer a few prompts.

Run right after a promotion, on what the ``production`` alias now resolves to: blobs re-hashed, the GGUF
loads, every prompt gets an answer within the time budget and contains the expected text (when one is
given). :func:`raise_if_failed` raises :class:`SmokeTestFailed`, which undoes the promotion.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from registry import Registry, VersionManifest
from so8t.errors import ModelError
from so8t.calibrate.evaluate import served_gguf
from so8t.serving.inference import generate


class SmokePrompt(BaseModel):
    """One smoke-test prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(description="User message sent through the GGUF's chat template.")
    expect: str | None = Field(None, description="Text the answer must contain (case-insensitive); None: any answer.")


class SmokeSettings(BaseModel):
    """What the post-promotion smoke test checks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompts: tuple[SmokePrompt, ...] = Field(
        (SmokePrompt(prompt="What is the capital of France?"),
         SmokePrompt(prompt="Request: help me plan a birthday party. Decision (ALLOW, ESCALATE or DENY):")),
        description="Prompts to answer (greedy decoding).")
    n_predict: int = Field(24, ge=1, description="Tokens to generate per prompt.")
    max_seconds: float = Field(120.0, gt=0, description="Time budget per prompt, including loading the model.")


class SmokeTestFailed(RuntimeError):
    """The promoted model failed its smoke test."""


class SmokeReport(BaseModel):
    """What the smoke test saw."""

    version: str
    gguf: str
    answers: list[dict]
    passed: bool
    problems: list[str]


def main_gguf(m: VersionManifest) -> str:
    """Path (inside the version) of the GGUF to serve (:func:`so8t.calibrate.evaluate.served_gguf`'s rule)."""
    try:
        return served_gguf(m)
    except ModelError as e:
        raise SmokeTestFailed(str(e)) from None


def run_smoke_test(root: str | None, name: str, ref: str, settings: SmokeSettings) -> SmokeReport:
    """Resolve ``ref``, verify its blobs, load its GGUF and answer the prompts (problems listed, not raised)."""
    resolved = Registry(root).get(name, ref, verify=True)
    rel = main_gguf(resolved.manifest)
    gguf = resolved.path(rel)
    answers, problems = [], []
    for p in settings.prompts:
        t0 = time.monotonic()
        try:
            text = "".join(generate(gguf, p.prompt, n_predict=settings.n_predict, temperature=0.0, seed=0))
        except Exception as e:  # a model that cannot answer fails the test, whatever the reason
            text, err = "", f"{type(e).__name__}: {e}"
            problems.append(f"{p.prompt!r}: generation failed ({err})")
        seconds = time.monotonic() - t0
        if seconds > settings.max_seconds:
            problems.append(f"{p.prompt!r}: answered in {seconds:.2f} s > max_seconds {settings.max_seconds:g}")
        if p.expect is not None and p.expect.lower() not in text.lower():
            problems.append(f"{p.prompt!r}: answer {text[:60]!r} does not contain {p.expect!r}")
        answers.append({"prompt": p.prompt, "answer": text, "seconds": round(seconds, 3), "expect": p.expect})
    return SmokeReport(version=resolved.manifest.version, gguf=rel, answers=answers, passed=not problems, problems=problems)


def raise_if_failed(report: SmokeReport, name: str) -> SmokeReport:
    """``report``, or :class:`SmokeTestFailed` naming its problems."""
    if report.problems:
        raise SmokeTestFailed(f"smoke test of {name} {report.version} failed: " + "; ".join(report.problems))
    return report
