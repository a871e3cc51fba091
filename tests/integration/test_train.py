"""Training on tiny models: loss falls, gates move, PET logged, layout, bad input, 4-bit, resume."""

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
from so8t.config import TrainConfig
from so8t.training.train import list_checkpoints, read_loss_log, train
from tests.fixtures.required import require_module

REPO = Path(__file__).resolve().parents[2]


def _cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(base_model=str(model), dataset=str(data), output_dir=str(out), batch_size=2,
                gradient_accumulation_steps=2, max_steps=8, save_steps=4, max_length=96,
                learning_rate=5e-3, pet_lambda=0.5, seed=7, lora_r=4, lora_alpha=8)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_phi3"])
def test_short_run_learns_and_writes_layout(request, fixture, tiny_dataset, tmp_path):
    out = train(_cfg(request.getfixturevalue(fixture), tiny_dataset, tmp_path / "out", max_steps=10, save_steps=5))
    log = read_loss_log(out)
    assert len(log) == 10
    first = sum(r["ce_loss"] for r in log[:2]) / 2
    last = sum(r["ce_loss"] for r in log[-2:]) / 2
    assert last < first - 0.1, (first, last)
    assert all(r["pet_loss"] > 0 for r in log)
    gates = load_file(str(out / "so8t_gates.safetensors"))
    assert set(gates) == {"layers.0.generators", "layers.1.generators"}
    assert all(t.dtype == torch.float32 and t.abs().max() > 0 for t in gates.values())
    for name in ("adapter_model.safetensors", "adapter_config.json", "so8t_train_config.json", "loss_log.jsonl"):
        assert (out / name).is_file(), name
    resolved = json.loads((out / "so8t_train_config.json").read_text())
    assert resolved["global_step"] == 10 and resolved["gated_layers"] == [0, 1]
    expected = {"tiny_llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
                "tiny_phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}[fixture]
    assert set(resolved["lora_target_modules"]) == expected
    ckpt = list_checkpoints(out)[-1]
    for name in ("adapter_model.safetensors", "so8t_gates.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (ckpt / name).is_file(), name


def test_pet_off_logs_zero(tiny_llama, tiny_dataset, tmp_path):
    out = train(_cfg(tiny_llama, tiny_dataset, tmp_path / "o", max_steps=2, save_steps=2, pet_lambda=0.0))
    assert all(r["pet_loss"] == 0 for r in read_loss_log(out))


def test_4bit_qlora_on_cpu(tiny_llama, tiny_dataset, tmp_path):
    require_module("bitsandbytes")
    out = train(_cfg(tiny_llama, tiny_dataset, tmp_path / "q", max_steps=3, save_steps=3, load_in_4bit=True))
    log = read_loss_log(out)
    assert len(log) == 3 and all(r["ce_loss"] > 0 for r in log)
    gates = load_file(str(out / "so8t_gates.safetensors"))
    assert all(t.dtype == torch.float32 and t.abs().max() > 0 for t in gates.values())
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4


BAD_CASES = {
    "malformed": ('{"text": "ok"}\n{"text": \n', r"train.jsonl:2: malformed JSON"),
    "missing_field": ('{"instruction": "q"}\n', r"train.jsonl:1: field 'output': missing"),
    "unknown_label": ('{"text": "q", "label": "PERHAPS"}\n', r"train.jsonl:1: field 'label': 'PERHAPS'"),
    "empty": ("", r"train.jsonl: no records"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_is_one_line_exit_2_nothing_written(case, tiny_llama, tmp_path, capsys):
    content, pattern = BAD_CASES[case]
    data = tmp_path / "train.jsonl"
    data.write_text(content)
    out = tmp_path / "out"
    rc = main(["train", "--base_model", str(tiny_llama), "--dataset", str(data), "--output_dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) >= 1 and err[-1].startswith("so8t: error: ")
    import re

    assert re.search(pattern, err[-1]), err[-1]
    assert not out.exists()


@pytest.mark.parametrize("model_fixture, pattern", [
    ("missing", r"base model .* not found"),
    ("tiny_gpt2", r"has no attention o_proj"),
    ("odd_width", r"hidden width 60 .* not divisible by 8"),
])
def test_bad_model_is_one_line_exit_2_nothing_written(request, model_fixture, pattern, tiny_dataset, tmp_path, capsys, sp_model):
    if model_fixture == "missing":
        model = tmp_path / "no_such_model"
    elif model_fixture == "odd_width":
        from tests.fixtures.tiny_models import build_tiny_llama

        model = build_tiny_llama(tmp_path / "odd", sp_model, hidden=60, heads=5, kv_heads=5, layers=1)
    else:
        model = request.getfixturevalue(model_fixture)
    out = tmp_path / "out"
    rc = main(["train", "--base_model", str(model), "--dataset", str(tiny_dataset), "--output_dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    import re

    assert re.search(pattern, err[-1]), err[-1]
    assert not out.exists()


def test_console_script_exit_code_and_flag_errors(tmp_path):
    exe = Path(sys.executable).parent / "so8t"
    r = subprocess.run([str(exe), "train", "--base_model", str(tmp_path), "--dataset", str(tmp_path / "x.jsonl"),
                        "--output_dir", str(tmp_path / "o"), "--max_steps", "2", "--save_steps", "5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("so8t: error:")
    h = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0
    for flag in TrainConfig.model_fields:
        assert f"--{flag}" in h.stdout


def test_refuses_output_dir_with_checkpoints_without_resume(tiny_llama, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "o"
    train(_cfg(tiny_llama, tiny_dataset, out, max_steps=2, save_steps=2))
    rc = main(["train", "--base_model", str(tiny_llama), "--dataset", str(tiny_dataset), "--output_dir", str(out)])
    assert rc == 2
    assert "--resume_from_checkpoint latest" in capsys.readouterr().err


def _cli_args(model, data, out, steps):
    return ["--base_model", str(model), "--dataset", str(data), "--output_dir", str(out), "--batch_size", "2",
            "--gradient_accumulation_steps", "2", "--max_steps", str(steps), "--save_steps", "2",
            "--save_total_limit", "2", "--max_length", "96", "--learning_rate", "5e-3", "--pet_lambda", "0.5",
            "--seed", "11", "--lora_r", "4", "--lora_alpha", "8"]


def test_sigkill_then_resume_latest_equals_uninterrupted(tiny_llama, tiny_dataset, tmp_path):
    steps = 12
    shim = REPO / "scripts" / "training" / "train_so8t_lora.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(shim), *_cli_args(tiny_llama, tiny_dataset, ref, steps)],
                   check=True, env=env, capture_output=True, timeout=600)

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(shim), *_cli_args(tiny_llama, tiny_dataset, out, steps)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-4" / "so8t_checkpoint.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "so8t_gates.safetensors").exists(), "the run finished before the kill"

    subprocess.run([sys.executable, str(shim), *_cli_args(tiny_llama, tiny_dataset, out, steps),
                    "--resume_from_checkpoint", "latest"], check=True, env=env, capture_output=True, timeout=600)
    resolved = json.loads((out / "so8t_train_config.json").read_text())
    assert resolved["resumed_from"] is not None and resolved["global_step"] == steps

    for fname in ("adapter_model.safetensors", "so8t_gates.safetensors"):
        a, b = load_file(str(ref / fname)), load_file(str(out / fname))
        assert set(a) == set(b) and a
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    assert any(load_file(str(out / "so8t_gates.safetensors"))[k].abs().max() > 0 for k in a or [])
    assert [p.name for p in list_checkpoints(out, complete_only=False)] == ["checkpoint-10", "checkpoint-12"]
    # the loss log has each step once
    assert [r["step"] for r in read_loss_log(out)] == list(range(1, steps + 1))


def test_resuming_a_finished_run_takes_no_further_step(tiny_llama, tiny_dataset, tmp_path):
    out = tmp_path / "done"
    argv = ["train", *_cli_args(tiny_llama, tiny_dataset, out, 4)]
    assert main(argv) == 0
    first = {k: v.clone() for k, v in load_file(str(out / "adapter_model.safetensors")).items()}
    for _ in range(2):  # once more, and again: a finished run stays finished (was 4 -> 5 -> 6)
        (out / "adapter_model.safetensors").unlink()  # the final outputs are rewritten from the checkpoint
        assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0
        resolved = json.loads((out / "so8t_train_config.json").read_text())
        assert resolved["global_step"] == 4 and resolved["resumed_from"].endswith("checkpoint-4")
        assert [p.name for p in list_checkpoints(out, complete_only=False)] == ["checkpoint-2", "checkpoint-4"]
        again = load_file(str(out / "adapter_model.safetensors"))
        assert again.keys() == first.keys()
        for k in first:
            torch.testing.assert_close(again[k], first[k], atol=0, rtol=0)
    assert [r["step"] for r in read_loss_log(out)] == [1, 2, 3, 4]


def test_plain_lora_without_gates_trains_checkpoints_and_resumes(tiny_llama, tiny_dataset, tmp_path):
    """--so8t_layers none (the ablation's baseline) used to fail at its first checkpoint."""
    out = tmp_path / "lora"
    argv = ["train", *_cli_args(tiny_llama, tiny_dataset, out, 2), "--so8t_layers", "none"]
    assert main(argv) == 0
    assert (out / "adapter_model.safetensors").is_file() and not (out / "so8t_gates.safetensors").exists()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0


def test_a_diverging_run_stops_with_an_error_not_nan_weights(tiny_llama, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "diverged"
    args = _cli_args(tiny_llama, tiny_dataset, out, 6)
    args[args.index("--learning_rate") + 1] = "1e30"  # finite, so the flag is accepted; the weights are not
    assert main(["train", *args]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln.lower()]
    assert len(err) == 1 and "training diverged: the loss is" in err[0] and "--learning_rate" in err[0], err
    assert not (out / "adapter_model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launch_flags, world", [
    # accelerate 1.15's --cpu launcher starts one process unless given an MPI hostfile: same layout
    (["--cpu", "--num_processes", "2"], 1),
    # two real DDP processes on the CPU (torchrun + gloo): what --cpu --num_processes 2 means to users
    (["--multi_gpu", "--num_processes", "2"], 2),
])
def test_accelerate_launch_on_cpu(launch_flags, world, tiny_llama, tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    shim = REPO / "scripts" / "training" / "train_so8t_lora.py"
    acc = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([str(acc), "launch", *launch_flags, "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", str(shim), *_cli_args(tiny_llama, tiny_dataset, out, 4)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = json.loads((out / "so8t_train_config.json").read_text())
    assert resolved["world_size"] == world and resolved["global_step"] == 4
    for name in ("adapter_model.safetensors", "so8t_gates.safetensors", "loss_log.jsonl", "adapter_config.json"):
        assert (out / name).is_file()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    gates = load_file(str(out / "so8t_gates.safetensors"))
    assert all(t.abs().max() > 0 for t in gates.values())
    assert [r["step"] for r in read_loss_log(out)] == [1, 2, 3, 4]


def test_so8t_train_survives_cuda_oom_with_the_next_remedy_and_resumes(tiny_llama, tiny_dataset, tmp_path, monkeypatch,
                                                                       capsys):
    """`so8t train --oom_retries N`: a CUDA out-of-memory error (simulated at the second attempt's start: the
    first wrote a checkpoint) records the next remedy and trains again from the newest checkpoint."""
    import so8t.training.runs as tr

    calls = []

    def oom_once(cfg):
        calls.append(cfg)
        if len(calls) == 1:  # the first attempt trains 1 step (a checkpoint), then the GPU "runs out"
            train(cfg.model_copy(update={"max_steps": 1, "save_steps": 1}))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train(cfg)

    monkeypatch.setattr(tr, "train", oom_once)
    out = tmp_path / "out"
    argv = ["train", "--base_model", str(tiny_llama), "--dataset", str(tiny_dataset), "--output_dir", str(out),
            "--batch_size", "2", "--gradient_accumulation_steps", "1", "--max_steps", "2", "--save_steps", "1",
            "--max_length", "64", "--lora_r", "4", "--lora_alpha", "8", "--oom_retries", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "applied after CUDA out of memory (batch-1+accumulation): batch_size 2 -> 1, gradient_accumulation_steps 1 -> 2" in printed
    assert [(c.batch_size, c.gradient_accumulation_steps, c.resume_from_checkpoint) for c in calls] == [
        (2, 1, None), (1, 2, "latest")]
    assert json.loads((out / tr.OOM_FILE).read_text())[0]["step"] == "batch-1+accumulation"
    assert json.loads((out / "so8t_train_config.json").read_text())["global_step"] == 2
    monkeypatch.setattr(tr, "train", lambda cfg: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.cuda.OutOfMemoryError):  # --oom_retries 0: the first one is final
        tr.train_with_remedies(TrainConfig(base_model=str(tiny_llama), dataset=str(tiny_dataset),
                                           output_dir=str(tmp_path / "o2"), max_steps=1, save_steps=1), oom_retries=0)
