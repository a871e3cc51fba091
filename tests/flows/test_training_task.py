"""train_task: CUDA out-of-memory remedies in runbook order, retries, no retry on user errors."""

from __future__ import annotations

import json

import pytest

from so8t.config import TrainConfig
from so8t.training.runs import OOM_FILE, apply_remedies, next_oom_remedy, read_remedies


def _cfg(**kw) -> TrainConfig:
    base = dict(base_model="smollm2", dataset="d.jsonl", output_dir="out", batch_size=4, gradient_accumulation_steps=2,
                max_length=256, load_in_4bit=False)
    return TrainConfig(**{**base, **kw})


def test_oom_remedies_follow_the_runbook_order():
    cfg, seen = _cfg(), []
    while (r := next_oom_remedy(cfg)) is not None:
        seen.append((r.step, r.changes))
        cfg = apply_remedies(cfg, [r])
    assert seen == [
        ("batch-1+accumulation", {"batch_size": (4, 1), "gradient_accumulation_steps": (2, 8)}),
        ("gradient-checkpointing", {"gradient_checkpointing": (False, True)}),
        ("4-bit", {"load_in_4bit": (False, True)}),
        ("max-length", {"max_length": (256, 128)}),
        ("max-length", {"max_length": (128, 64)}),
    ]
    assert cfg.batch_size * cfg.gradient_accumulation_steps == 8  # the effective batch is kept


def test_oom_remedies_skip_what_is_already_applied():
    assert next_oom_remedy(_cfg(batch_size=1)).step == "gradient-checkpointing"
    assert next_oom_remedy(_cfg(batch_size=1, gradient_checkpointing=True)).step == "4-bit"
    done = dict(batch_size=1, gradient_checkpointing=True, load_in_4bit=True)
    assert next_oom_remedy(_cfg(**done, max_length=100)).changes == {"max_length": (100, 64)}
    assert next_oom_remedy(_cfg(**done, max_length=64)) is None


def test_oom_retry_and_dry_run_advise_the_same_order():
    """The retry's remedies are the preflight's (so8t.training.preflight.next_memory_remedy), step for step."""
    from so8t.training.preflight import next_memory_remedy

    cfg = _cfg()
    while (r := next_oom_remedy(cfg, "x")) is not None:
        same = next_memory_remedy(cfg)
        assert (r.step, r.changes) == (same.step, same.changes)
        cfg = apply_remedies(cfg, [r])
    assert next_memory_remedy(cfg) is None


def _run_train(cfg, retries=3):
    from prefect import flow

    from tasks.training import train_task

    @flow(name="so8t-test-train")
    def f():
        return train_task.with_options(retry_delay_seconds=0, retries=retries)(cfg)

    return f(return_state=True)


def test_cuda_oom_retry_applies_the_next_remedy_and_records_it(prefect_api, tiny_llama, flow_data, tmp_path, monkeypatch):
    import torch

    import tasks.training as tt

    calls = []
    real_train = tt.train

    def flaky_train(cfg):
        calls.append(cfg)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(cfg)

    monkeypatch.setattr(tt, "train", flaky_train)
    cfg = TrainConfig(base_model=str(tiny_llama), dataset=str(flow_data["train"]), output_dir=str(tmp_path / "out"),
                      batch_size=2, gradient_accumulation_steps=1, max_steps=2, save_steps=2, max_length=64,
                      lora_r=4, lora_alpha=8)
    state = _run_train(cfg)
    assert state.is_completed(), state.message
    result = state.result()
    assert [(c.batch_size, c.gradient_accumulation_steps) for c in calls] == [(2, 1), (1, 2)]
    assert [r.step for r in result.oom_remedies] == ["batch-1+accumulation"]
    assert "CUDA out of memory" in result.oom_remedies[0].reason
    assert result.effective_config["batch_size"] == 1 and result.effective_config["gradient_accumulation_steps"] == 2
    assert [r.step for r in read_remedies(tmp_path / "out")] == ["batch-1+accumulation"]
    assert json.loads((tmp_path / "out" / "so8t_train_config.json").read_text())["config"]["batch_size"] == 1
    assert (tmp_path / "out" / OOM_FILE).is_file()


def test_user_errors_are_not_retried(prefect_api, tmp_path, monkeypatch):
    import tasks.training as tt
    from so8t.errors import DataError

    calls = []

    def bad(cfg):
        calls.append(cfg)
        raise DataError("d.jsonl:3: field 'output': missing")

    monkeypatch.setattr(tt, "train", bad)
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x"}\n')
    state = _run_train(_cfg(dataset=str(data), output_dir=str(tmp_path / "o")))
    assert state.is_failed() and len(calls) == 1
    with pytest.raises(DataError):
        state.result()


@pytest.mark.slow
def test_train_task_with_two_processes_trains_through_accelerate_launch(prefect_api, tiny_llama, flow_data, tmp_path,
                                                                       monkeypatch):
    """`train.num_processes: 2` in a flow: the task launches two DDP processes (gloo here) on the same output
    directory; its result and outputs are those of one process."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = TrainConfig(base_model=str(tiny_llama), dataset=str(flow_data["train"]), output_dir=str(tmp_path / "out"),
                      batch_size=2, gradient_accumulation_steps=1, max_steps=4, save_steps=2, max_length=64,
                      lora_r=4, lora_alpha=8, num_processes=2)
    state = _run_train(cfg, retries=0)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.world_size == 2 and result.global_step == 4 and result.resumed_from is None
    resolved = json.loads((tmp_path / "out" / "so8t_train_config.json").read_text())
    assert resolved["world_size"] == 2 and resolved["config"]["num_processes"] == 2
    from so8t.training.train import list_checkpoints, read_loss_log

    assert [r["step"] for r in read_loss_log(tmp_path / "out")] == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-2", "checkpoint-4"]
