"""Flow tests: one Prefect test harness (temporary SQLite server) per session, tiny models, tmp registries.

PREFECT_HOME is a temporary directory for the whole test session (set before Prefect is imported),
and the ephemeral server gets a generous start-up timeout: on 2 shared cores its first start with
fresh migrations takes 20-30 s.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="so8t-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "so8t,registry")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows.prefect_defaults import apply_ephemeral_defaults  # noqa: E402

apply_ephemeral_defaults()  # the test harness's server runs with what `make demo` gets

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

HARNESS_STARTUP_S = 180
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect test harness for the session; yields the API URL (subprocesses can use it too)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=HARNESS_STARTUP_S):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def flow_data(tmp_path_factory) -> dict[str, Path]:
    """Tiny training data (short, so a 512-token vocabulary keeps answers inside max_length) and
    validation data (the bundled safety_val.jsonl, first 60 records: every label present)."""
    d = tmp_path_factory.mktemp("flow_data")
    train = [{"instruction": f"add {i} and {i + 1}", "output": f"{2 * i + 1}"} for i in range(12)]
    train += [{"instruction": f"repeat the word gate {i}", "output": "gate " * (i % 3 + 1)} for i in range(4)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    repo = Path(__file__).resolve().parents[2]
    lines = (repo / "data" / "safety_val.jsonl").read_text(encoding="utf-8").splitlines()
    (d / "val.jsonl").write_text("\n".join(lines[:60]) + "\n", encoding="utf-8")
    (d / "test.jsonl").write_text("\n".join(lines[60:84]) + "\n", encoding="utf-8")  # held out: never calibrated on
    return {"train": d / "train.jsonl", "val": d / "val.jsonl", "test": d / "test.jsonl"}


def tiny_params(base_model: Path, data: dict[str, Path], root: Path, *, max_steps: int = 4, save_steps: int = 2,
                name: str = "tiny-so8t", loose_gate: bool = True, **overrides):
    """Pipeline parameters for a tiny model: a few steps, Q8_0 served (Q4_0 also made), loose or default gate."""
    from release.params import CalibrationSettings, ConvertSettings, ModelRef, PipelineParams, TrainSettings
    from so8t.calibrate.promotion_gate import GateConfig
    from release.evaluation import EvaluationSettings

    values = dict(
        model=ModelRef(name=name, registry_root=str(root / "registry")), work_dir=str(root / "work"),
        train=TrainSettings(base_model=str(base_model), dataset=str(data["train"]), batch_size=2,
                            gradient_accumulation_steps=1, max_steps=max_steps, save_steps=save_steps, max_length=64,
                            lora_r=4, lora_alpha=8, learning_rate=1e-3),
        convert=ConvertSettings(quants=("Q8_0", "Q4_0")),
        calibration=CalibrationSettings(val_data=str(data["val"])),
        evaluation=EvaluationSettings(data=str(data["test"])),
        gate=GateConfig(ece_max=1.0, far_max=1.0, macro_f1_min=0.0) if loose_gate else GateConfig(),
    )
    values.update(overrides)
    return PipelineParams(**values)


def copy_registry(src: Path, dst: Path) -> Path:
    """A private copy of a registry root (blobs are read-only files: copy them as they are)."""
    shutil.copytree(src, dst)
    return dst


def _wait_for_checkpoint(root: Path, pattern: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 240) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"pipeline subprocess exited early with {proc.returncode}; log: {log_path}")
        time.sleep(0.05)
    raise AssertionError("no training checkpoint appeared")


@pytest.fixture(scope="session")
def pipeline_scenario(prefect_api, tiny_llama, flow_data, tmp_path_factory):
    """The pipeline on a tiny Llama: killed in training (subprocess), resumed, re-run (all cached)."""
    from prefect import tags

    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("pipeline")
    params = tiny_params(tiny_llama, flow_data, root, max_steps=16, save_steps=2)
    pfile = root / "params.json"
    pfile.write_text(params.model_dump_json())
    tag = f"scenario-{uuid.uuid4().hex[:8]}"

    # 1. killed during training
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    log = (root / "killed-run.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.flows.run_pipeline", str(pfile), f"{tag}-1"], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        marker = _wait_for_checkpoint(root, "work/tiny-so8t-*/train/checkpoint-*/so8t_checkpoint.json", proc,
                                      root / "killed-run.log")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    train_dir = marker.parent.parent
    finished_before_kill = (train_dir / "so8t_train_config.json").exists()

    # 2. resumed, completes;  3. everything cached
    with tags(f"{tag}-2"):
        second = pipeline(params)
    with tags(f"{tag}-3"):
        third = pipeline(params)
    return {"root": root, "params": params, "tag": tag, "train_dir": train_dir, "killed_at": marker.parent.name,
            "finished_before_kill": finished_before_kill, "second": second, "third": third}
