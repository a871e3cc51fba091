"""so8t.training.launch: the flags a launched `so8t train` gets, when a launch happens, and how its failures map."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from so8t.cli import build_parser, config_values
from so8t.config import TrainConfig, build_config
from so8t.errors import ConfigError, So8tError
from so8t.training import launch as L

REPO = Path(__file__).resolve().parents[2]
REPO_DDP = str(REPO / "deployments" / "accelerate" / "ddp.yaml")


def _parse(argv: list[str]) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    return build_config(TrainConfig, config_values(args, TrainConfig))


@pytest.mark.parametrize("fields", [
    {},
    dict(num_processes=2, share_prompt_prefix=False, sparse_lm_head=False, load_in_4bit=True, precision="fp32",
         learning_rate=1e-3, num_epochs=0.5, lora_alpha=7.5, resume_from_checkpoint="latest"),
    dict(gradient_checkpointing=True, batch_size=1, so8t_layers="0,2-3", lora_layers="top:2", max_steps=-1,
         output_dir="-odd/dir name", decision_prompt="p.json", trust_remote_code=True, accelerate_config=REPO_DDP),
])
def test_config_argv_gives_back_the_same_config(fields):
    cfg = TrainConfig(**{"base_model": "smollm2", "dataset": "a.jsonl,b.jsonl", "output_dir": "out", **fields})
    argv = L.config_argv(cfg)
    assert _parse(argv) == cfg
    assert all(a.startswith("--") for a in argv)  # every value travels as --name=value, none as a bare word


def test_config_argv_leaves_defaults_out_and_names_turned_off_flags():
    cfg = TrainConfig(base_model="m", dataset="d", output_dir="o", share_prompt_prefix=False)
    assert L.config_argv(cfg) == ["--base_model=m", "--dataset=d", "--output_dir=o", "--no-share_prompt_prefix"]


def test_launch_command_default_and_with_a_config_file(tmp_path):
    cfg = TrainConfig(base_model="m", dataset="d", output_dir="o", num_processes=3)
    cmd = L.launch_command(cfg, python="py")
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert cmd[3:3 + len(L.DEFAULT_LAUNCH_FLAGS)] == list(L.DEFAULT_LAUNCH_FLAGS)
    i = cmd.index("--module")
    assert cmd[i - 2:i] == ["--num_processes", "3"]
    assert cmd[i + 1:i + 3] == ["so8t.cli", "train"] and cmd[-2:] == ["--oom_retries", "0"]
    assert "--num_processes=3" in cmd  # the launched processes check the world size against it
    with_file = L.launch_command(cfg.model_copy(update={"accelerate_config": REPO_DDP, "num_processes": 1}), python="py")
    assert with_file[3] == "--config_file" and with_file[4].endswith(REPO_DDP)
    assert "--num_processes" not in with_file[:with_file.index("--module")]  # 1 with a file: the file's number
    assert "--multi_gpu" not in with_file


def test_needs_launch_only_outside_a_launched_process(monkeypatch):
    one = TrainConfig(base_model="m", dataset="d", output_dir="o")
    two = one.model_copy(update={"num_processes": 2})
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not L.needs_launch(one) and L.needs_launch(two)
    assert L.needs_launch(one.model_copy(update={"accelerate_config": REPO_DDP}))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not L.needs_launch(two)  # the launched processes train in place
    L.check_world(two)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match=r"num_processes 2: this run was launched with 4 processes"):
        L.check_world(two)
    L.check_world(one)  # 1: whatever the launcher started (accelerate launch by hand, a config file's number)


def _feed(lines: list[str]) -> tuple[L.LaunchReport, list[str]]:
    report, shown = L.LaunchReport(), []
    for ln in lines:
        if report.read(ln):
            shown.append(ln)
    return report, shown


def test_a_user_error_of_the_launched_processes_is_one_line_exit_2():
    report, shown = _feed([
        "INFO so8t.training.train: loading\n",
        "so8t: error: train.jsonl:2: malformed JSON (Expecting value)\n",
        "so8t: error: train.jsonl:2: malformed JSON (Expecting value)\n",  # the other rank
        "E1207 torch.distributed.elastic.multiprocessing.api: failed (exitcode: 2)\n",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n",
    ])
    assert shown == ["INFO so8t.training.train: loading\n"]  # the error once, at the end; the launcher's report: log only
    err = report.error(1)
    assert type(err) is So8tError and err.exit_code == 2 and str(err) == "train.jsonl:2: malformed JSON (Expecting value)"


def test_a_cuda_oom_in_a_launched_process_is_raised_as_one():
    import torch

    report, shown = _feed([
        "[rank1]: Traceback (most recent call last):\n",
        "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity\n",
        "E1207 failed (exitcode: 1) local_rank: 1\n",
    ])
    assert len(shown) == 3
    err = report.error(1)
    assert isinstance(err, torch.cuda.OutOfMemoryError)
    assert str(err).startswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    from so8t.training.runs import _is_cuda_oom

    assert _is_cuda_oom(err)  # so train_with_remedies and the task record the next remedy


def test_a_crash_is_a_launch_error_exit_1_naming_the_cause():
    report, _ = _feed(["step 3\n", "RuntimeError: [../gloo/transport/tcp/pair.cc:534] Connection closed by peer\n",
                       "some trailing line\n"])
    err = report.error(1)
    assert isinstance(err, L.LaunchError) and err.exit_code == 1
    assert "exit code 1" in str(err) and "Connection closed by peer" in str(err)
    killed = L.LaunchReport().error(-signal.SIGKILL)
    assert "signal SIGKILL" in str(killed) and "\n" not in str(killed)


def test_progress_bars_are_echoed_as_they_come():
    """Pieces end at '\\r' as well as '\\n' (tqdm), so a bar moves while the run goes."""
    import io

    class Proc:
        stdout = io.BufferedReader(io.BytesIO(b"a\rb\rc\nso8t: error: bad\nlauncher noise\ntail"))

    report, echoed = L.LaunchReport(), []
    L._stream(Proc(), report, echoed.append)
    assert echoed == ["a\r", "b\r", "c\n"] and report.user_error == "bad"


@pytest.mark.parametrize("content, pattern", [
    (None, r"accelerate_config .*missing.yaml: no such file"),
    ("distributed_type: [\n", r"accelerate_config .*bad.yaml: "),
    ("distributed_type: MULTI_GPU\nnum_procesess: 2\n", r"accelerate_config .*bad.yaml: .*unknown keys \(\['num_procesess'\]\)"),
    ("distributed_type: SIDEWAYS\n", r"accelerate_config .*bad.yaml: .*SIDEWAYS"),
    ("distributed_type: DEEPSPEED\n", r"field 'distributed_type': 'DEEPSPEED': so8t train launches DDP"),
    ("compute_environment: AMAZON_SAGEMAKER\ndistributed_type: DATA_PARALLEL\nec2_instance_type: x\niam_role_name: y\n"
     "mixed_precision: 'no'\n", r"field 'compute_environment': 'AMAZON_SAGEMAKER'"),
])
def test_a_bad_accelerate_config_is_one_line(tmp_path, content, pattern):
    path = tmp_path / ("missing.yaml" if content is None else "bad.yaml")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=pattern) as e:
        L.check_accelerate_config(str(path))
    assert "\n" not in str(e.value)


def test_fsdp_is_refused_until_its_save_path_exists():
    """FSDP shards the gates and adapter, which so8t saves whole; accelerate applies FSDP on CUDA only."""
    with pytest.raises(ConfigError, match=r"fsdp-8b.yaml: field 'distributed_type': 'FSDP': FSDP training is not "
                                          r"supported yet .* --dry_run"):
        L.check_accelerate_config(str(REPO / "deployments" / "accelerate" / "fsdp-8b.yaml"))
    assert L.check_accelerate_config(REPO_DDP)["distributed_type"] == "MULTI_GPU"
