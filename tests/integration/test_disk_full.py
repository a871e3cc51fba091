"""A full disk is one line, exit 2, and nothing a later step could mistake for a result.

A real full disk: a small tmpfs mounted for the test (root only; skipped where mounting is not
allowed). Training must leave no checkpoint that ``--resume_from_checkpoint latest`` could pick and
no half-written final adapter; ``so8t modelfile`` and ``so8t registry export`` leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from so8t.cli import main as so8t_main


@pytest.fixture()
def small_disk(tmp_path):
    """A mounted tmpfs of a chosen size (KiB); unmounted afterwards."""
    mounted: list[Path] = []

    def make(kib: int) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


def _train_data(path: Path) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"add {i} and 1", "output": str(i + 1)}) + "\n"
                            for i in range(8)), encoding="utf-8")
    return path


def _used(where: Path) -> int:
    st = os.statvfs(where)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_training_on_a_full_disk_leaves_no_checkpoint_latest_could_pick(tiny_llama, tmp_path, small_disk, capsys):
    from so8t.training.train import list_checkpoints, resolve_resume

    data = _train_data(tmp_path / "train.jsonl")
    # room for the run's small files, not for a checkpoint (adapter + optimizer state)
    disk = small_disk(64)
    out = disk / "run"
    rc = so8t_main(["train", "--base_model", str(tiny_llama), "--dataset", str(data), "--output_dir", str(out),
                    "--max_steps", "2", "--save_steps", "1", "--batch_size", "4", "--max_length", "96"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "no space left on device" in line.lower() and "resume_from_checkpoint latest" in line, line
    assert list_checkpoints(out, complete_only=False) == []  # the unfinished one was removed
    assert resolve_resume("latest", out) is None
    assert not any(p.name.startswith("adapter_model") for p in out.iterdir())
    assert _used(disk) < 32 * 1024  # the space came back


def test_training_keeps_complete_checkpoints_and_resumes_after_space_is_freed(tiny_llama, tmp_path, small_disk, capsys):
    from so8t.training.train import list_checkpoints, resolve_resume

    data = _train_data(tmp_path / "train.jsonl")
    args = ["train", "--base_model", str(tiny_llama), "--dataset", str(data), "--max_steps", "2", "--save_steps", "1",
            "--batch_size", "4", "--max_length", "96"]
    # measure one complete run's checkpoint on a roomy disk, then size a disk for exactly one of them
    roomy = tmp_path / "roomy"
    assert so8t_main([*args, "--output_dir", str(roomy)]) == 0
    ck1 = list_checkpoints(roomy)[0]
    one = sum(p.stat().st_size for p in ck1.rglob("*") if p.is_file())
    extra = sum(p.stat().st_size for p in roomy.iterdir() if p.is_file())
    kib = (one + extra) // 1024 + 4 + one // 1024 // 2  # one checkpoint and the small files fit; two do not
    capsys.readouterr()
    disk = small_disk(kib)
    out = disk / "run"
    rc = so8t_main([*args, "--output_dir", str(out)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2, line
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]
    assert [p.name for p in list_checkpoints(out, complete_only=False)] == ["checkpoint-1"]
    assert resolve_resume("latest", out) == out / "checkpoint-1"
    # space freed (a bigger disk): the run resumes from the complete checkpoint and finishes
    bigger = tmp_path / "moved"
    shutil.copytree(out, bigger)
    assert so8t_main([*args, "--output_dir", str(bigger), "--resume_from_checkpoint", "latest",
                      "--save_total_limit", "1"]) == 0
    assert json.loads((bigger / "so8t_train_config.json").read_text())["resumed_from"].endswith("checkpoint-1")


def test_modelfile_and_registry_export_on_a_full_disk_leave_nothing(tmp_path, small_disk, capsys):
    from registry import Registry

    reg = Registry(tmp_path / "reg")
    reg.publish("m", {"model.gguf": os.urandom(256 * 1024), "calibration_results.json": b"{}"})
    disk = small_disk(64)
    rc = so8t_main(["registry", "--root", str(tmp_path / "reg"), "export", "m", "v1", str(disk / "exported")])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "no space left on device" in line.lower(), line
    assert sorted(p.name for p in disk.iterdir()) == []
    # modelfile: the disk is full to the last block
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    from so8t.base_models import embedded_gguf

    rc = so8t_main(["modelfile", "--model", str(embedded_gguf("smollm2")), "--output", str(disk / "Modelfile")])
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert rc == 2 and "no space left on device" in line.lower(), err
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
