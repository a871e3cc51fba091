"""`so8t train --num_processes 2`: two real DDP processes (torchrun + gloo on the CPU) on the tiny model, killed
and resumed like a single-process run; their errors as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from so8t.cli import main
from so8t.training.train import list_checkpoints, read_loss_log

REPO = Path(__file__).resolve().parents[2]
DDP_YAML = REPO / "deployments" / "accelerate" / "ddp.yaml"


def _args(model, data, out, steps) -> list[str]:
    return ["--base_model", str(model), "--dataset", str(data), "--output_dir", str(out), "--batch_size", "2",
            "--gradient_accumulation_steps", "2", "--max_steps", str(steps), "--save_steps", "2",
            "--save_total_limit", "2", "--max_length", "96", "--learning_rate", "5e-3", "--pet_lambda", "0.5",
            "--seed", "11", "--lora_r", "4", "--lora_alpha", "8"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "SO8T_LOG_DIR": str(tmp_path / "logs"),
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


SO8T_TRAIN = [sys.executable, "-m", "so8t.cli", "train"]


@pytest.mark.slow
def test_two_processes_killed_then_resumed_latest_equal_an_uninterrupted_run(tiny_llama, tiny_dataset, tmp_path):
    steps, env = 8, _env(tmp_path)
    # the reference: ddp.yaml, whose num_processes (2) applies
    ref = tmp_path / "ref"
    r = subprocess.run([*SO8T_TRAIN, *_args(tiny_llama, tiny_dataset, ref, steps), "--accelerate_config", str(DDP_YAML)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (r.stdout + r.stderr).count("trained SO8T adapter and gates:") == 1  # reported once, by the launching process
    resolved = json.loads((ref / "so8t_train_config.json").read_text())
    assert resolved["world_size"] == 2 and resolved["distributed_type"] == "MULTI_CPU" and resolved["global_step"] == steps

    # killed: --num_processes 2 (no file), the whole process group SIGKILLed after checkpoint-4
    out = tmp_path / "killed"
    proc = subprocess.Popen([*SO8T_TRAIN, *_args(tiny_llama, tiny_dataset, out, steps), "--num_processes", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-4" / "so8t_checkpoint.json").exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "so8t_gates.safetensors").exists(), "the run finished before the kill"

    r = subprocess.run([*SO8T_TRAIN, *_args(tiny_llama, tiny_dataset, out, steps), "--num_processes", "2",
                        "--resume_from_checkpoint", "latest"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = json.loads((out / "so8t_train_config.json").read_text())
    assert resolved["resumed_from"] is not None and resolved["global_step"] == steps and resolved["world_size"] == 2

    for fname in ("adapter_model.safetensors", "so8t_gates.safetensors"):
        a, b = load_file(str(ref / fname)), load_file(str(out / fname))
        assert set(a) == set(b) and a
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    gates = load_file(str(out / "so8t_gates.safetensors"))
    assert all(t.abs().max() > 0 for t in gates.values())
    assert [p.name for p in list_checkpoints(out, complete_only=False)] == [f"checkpoint-{steps - 2}", f"checkpoint-{steps}"]
    assert [row["step"] for row in read_loss_log(out)] == list(range(1, steps + 1))  # each step once


@pytest.mark.slow
def test_bad_data_under_two_processes_is_one_line_exit_2_nothing_written(tiny_llama, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "ok"}\n{"text": \n')
    out = tmp_path / "out"
    r = subprocess.run([*SO8T_TRAIN, *_args(tiny_llama, data, out, 2), "--num_processes", "2"], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("so8t: error:")]
    assert errors == [r.stderr.strip().splitlines()[-1]]  # one line, the last, though both processes refused the file
    assert "train.jsonl:2: malformed JSON" in errors[0]
    assert "ChildFailedError" not in r.stderr  # the launcher's report of the failed processes stays in the log
    assert not out.exists()


def test_an_fsdp_config_is_refused_in_one_line_before_anything_starts(tiny_llama, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", *_args(tiny_llama, tiny_dataset, out, 2), "--accelerate_config",
               str(REPO / "deployments" / "accelerate" / "fsdp-8b.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("so8t: error: accelerate_config ") and "FSDP training is not supported yet" in err[-1]
    assert not out.exists()
