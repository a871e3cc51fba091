"""Every config-backed CLI: omitting a flag gives the config's default; every bool can be set both ways."""

from __future__ import annotations

import argparse

import pytest

from so8t.ab.cli import ABCommandConfig
from so8t.export.bake import BakeConfig
from so8t.calibrate.stage import CalibrateCommandConfig
from so8t.cli import add_config_flags, config_values
from so8t.config import TrainConfig
from so8t.calibrate.evaluate import EvaluateConfig

CONFIGS = [TrainConfig, BakeConfig, EvaluateConfig, ABCommandConfig, CalibrateCommandConfig]


def _required_argv(cls) -> list[str]:
    argv = []
    for name, field in cls.model_fields.items():
        if field.is_required():
            argv += [f"--{name}", "1" if field.annotation in (int, float) else "x"]
    return argv


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_omitted_flags_take_the_config_defaults(cls):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls)
    values = config_values(parser.parse_args(_required_argv(cls)), cls)
    for name, field in cls.model_fields.items():
        if not field.is_required():
            assert values[name] == field.default, name


def test_bool_flags_on_by_default_can_be_turned_off():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, TrainConfig)
    base = _required_argv(TrainConfig)
    on = [n for n, f in TrainConfig.model_fields.items() if f.annotation is bool and f.default is True]
    assert {"share_prompt_prefix", "sparse_lm_head"} <= set(on)
    for name in on:
        assert getattr(parser.parse_args(base), name) is True
        assert getattr(parser.parse_args(base + [f"--no-{name}"]), name) is False
    assert parser.parse_args(base + ["--load_in_4bit"]).load_in_4bit is True


def test_an_unwritable_log_dir_costs_the_log_file_not_the_command(tmp_path, monkeypatch, capsys):
    from so8t.cli import main

    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SO8T_LOG_DIR", str(blocker / "logs"))
    assert main(["base", "list"]) == 0
    err = capsys.readouterr().err
    assert "cannot write a log file in" in err and "Traceback" not in err
    monkeypatch.setenv("SO8T_LOG_DIR", str(tmp_path / "ok"))
    assert main(["base", "list"]) == 0
    assert list((tmp_path / "ok").glob("so8t-base-*.log"))
