"""deployments/accelerate/*.yaml, read by accelerate's own launcher code and plugin classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from so8t.training.launch import DEFAULT_LAUNCH_FLAGS

REPO = Path(__file__).resolve().parents[2]
ACC = REPO / "deployments" / "accelerate"


def _launch(argv: list[str], monkeypatch) -> tuple[object, dict[str, str]]:
    """What `accelerate launch <argv> train.py` decides: its arguments after the config file is merged, and the
    environment it gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser, prepare_multi_gpu_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    args = launch_command_parser().parse_args([*argv, "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_ddp_yaml_is_the_launch_without_a_config_file(monkeypatch):
    """`--accelerate_config ddp.yaml` and plain `--num_processes N` start the same processes with the same
    environment (so8t.training.launch.DEFAULT_LAUNCH_FLAGS)."""
    by_file, env_file = _launch(["--config_file", str(ACC / "ddp.yaml"), "--num_processes", "3"], monkeypatch)
    by_flags, env_flags = _launch([*DEFAULT_LAUNCH_FLAGS, "--num_processes", "3"], monkeypatch)
    keys = ("multi_gpu", "use_fsdp", "use_deepspeed", "cpu", "num_machines", "num_processes", "mixed_precision",
            "dynamo_backend", "rdzv_backend")
    assert {k: getattr(by_file, k) for k in keys} == {k: getattr(by_flags, k) for k in keys}
    assert by_file.multi_gpu and not by_file.use_fsdp and by_file.num_processes == 3
    assert env_file == env_flags and env_file["ACCELERATE_MIXED_PRECISION"] == "no"
    assert "ACCELERATE_USE_FSDP" not in env_file
    by_file_default_n, _ = _launch(["--config_file", str(ACC / "ddp.yaml")], monkeypatch)
    assert by_file_default_n.num_processes == 2


def test_fsdp_8b_yaml_is_full_shard_per_decoder_layer_bf16_with_activation_checkpointing(monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment

    cfg = load_config_from_file(str(ACC / "fsdp-8b.yaml"))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type.value == "FSDP" and cfg.mixed_precision == "bf16" and cfg.num_machines == 1
    fsdp = cfg.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True

    args, env = _launch(["--config_file", str(ACC / "fsdp-8b.yaml")], monkeypatch)
    assert args.use_fsdp and args.num_processes == 8
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with patch_environment(**env):
        plugin = FullyShardedDataParallelPlugin()  # what accelerate builds in each training process
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # full shard: parameters resharded after each unit's forward
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.activation_checkpointing is True
    assert plugin.cpu_offload.__class__.__name__ == "OffloadPolicy"  # no CPU offload
    assert plugin.cpu_ram_efficient_loading is True


def test_the_wrapped_class_is_the_decoder_layer_of_the_planned_8b_base():
    import transformers

    arch = json.loads((REPO / "so8t" / "model_configs" / "llama-3.1-8b.json").read_text())["architectures"][0]
    model_cls = getattr(transformers, arch)
    from transformers.models.llama import modeling_llama

    assert model_cls is modeling_llama.LlamaForCausalLM
    assert hasattr(modeling_llama, "LlamaDecoderLayer")  # the class fsdp_transformer_layer_cls_to_wrap names


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp-8b.yaml"])
def test_shipped_configs_pick_a_free_port(name):
    import yaml

    assert yaml.safe_load((ACC / name).read_text())["main_process_port"] == 0
