"""Training on several processes: ``so8t train --num_processes N`` (and the Prefect train task) re-executes
``so8t train`` under ``accelerate launch``.

- :func:`needs_launch`: ``num_processes > 1`` or an ``accelerate_config`` asks for it, unless this process is
  one of a launched run already (torchrun's ``LOCAL_RANK``/``WORLD_SIZE`` are set): then it trains in place.
- :func:`launch_command`: ``python -m accelerate.commands.launch <launch flags> --module so8t.cli train
  <the same flags> --oom_retries 0``. Without a config file the launch flags are
  :data:`DEFAULT_LAUNCH_FLAGS` (DDP through torchrun: NCCL on CUDA GPUs, gloo on the CPU; the same launch
  as ``deployments/accelerate/ddp.yaml``); with ``--accelerate_config FILE`` the file decides (DDP only:
  an FSDP file, ``deployments/accelerate/fsdp-8b.yaml``, is refused until the gates can be saved from shards;
  docs/multi-gpu.md).
- :func:`launch_train`: runs it, echoes its output as it comes, and turns a failure into what the
  in-process path raises: the processes' own one-line error (:class:`~so8t.errors.So8tError`, exit 2), a
  ``torch.cuda.OutOfMemoryError`` (so :mod:`so8t.training.runs` records the next memory remedy and launches
  again, resumed), or :class:`LaunchError` (a crash: exit code 1, retried by the Prefect task).

Checkpoints, ``latest`` resume and the output layout are the single-process ones: the main process
writes them (:mod:`so8t.training.train`), the launched processes read the same output directory.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable

from so8t.config import TrainConfig
from so8t.errors import ConfigError, So8tError

logger = logging.getLogger(__name__)

LAUNCHER_MODULE = "accelerate.commands.launch"

#: ``accelerate launch`` flags without a config file: one machine, DDP through torchrun (``--multi_gpu`` is
#: accelerate's name for it; on a machine without CUDA the processes join over gloo), precision left to
#: ``--precision`` (the Trainer's autocast), no torch.compile, a free rendezvous port (several runs on one
#: machine do not collide on 29500).
DEFAULT_LAUNCH_FLAGS: tuple[str, ...] = (
    "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    "--main_process_port", "0",
)

#: ``distributed_type`` values ``so8t train`` launches with. FSDP is planned (docs/multi-gpu.md) but refused:
#: the SO(8) gates and the adapter are saved, checkpointed and resumed from whole parameters, and under FSDP
#: they are shards; and accelerate applies FSDP on CUDA GPUs only, so no CPU test can cover it.
TRAINABLE_DISTRIBUTED_TYPES = ("MULTI_GPU",)
FSDP_NOT_YET = ("FSDP training is not supported yet (the gates and adapter are saved from whole parameters, not "
                "FSDP shards): use it to plan with --dry_run (docs/multi-gpu.md), train with ddp.yaml or --num_processes")

#: Set in the launched processes' environment: the launching process reports the result, they do not.
LAUNCHED_ENV = "SO8T_LAUNCHED"

#: What a launched process prints for a user error (:func:`so8t.cli.main`).
_USER_ERROR = re.compile(r"^so8t: error: (.*)$")
#: The last line of a CUDA out-of-memory traceback (``torch.OutOfMemoryError`` since torch 2.5).
_CUDA_OOM = re.compile(r"(?:torch\.(?:cuda\.)?)?OutOfMemoryError: (CUDA out of memory.*)$")


class LaunchError(So8tError):
    """A launched training process failed without a user error of its own (a crash, a signal, a lost peer).

    Exit code 1, not 2: nothing in the input is known to be wrong, and the Prefect task retries it."""

    exit_code = 1


def in_launched_process() -> bool:
    """Whether this process is one of a launched run (torchrun sets ``LOCAL_RANK`` and ``WORLD_SIZE``)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def needs_launch(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` trains through ``accelerate launch`` from this process."""
    return (cfg.num_processes > 1 or cfg.accelerate_config is not None) and not in_launched_process()


def check_world(cfg: TrainConfig) -> None:
    """In a launched process: refuse a world size that is not the ``num_processes`` asked for.

    Raises:
        ConfigError: ``num_processes N`` but the launcher started M processes.
    """
    if not in_launched_process() or cfg.num_processes <= 1:
        return
    world = int(os.environ["WORLD_SIZE"])
    if world != cfg.num_processes:
        raise ConfigError(f"num_processes {cfg.num_processes}: this run was launched with {world} processes; "
                          f"launch with --num_processes {cfg.num_processes} (or give the same number to both)")


def config_argv(cfg: TrainConfig) -> list[str]:
    """``so8t train`` flags that give back ``cfg`` (every field that is not at its default; booleans as
    ``--flag`` / ``--no-flag``, the way :func:`so8t.cli.add_config_flags` declares them)."""
    argv: list[str] = []
    for name, field in TrainConfig.model_fields.items():
        value = getattr(cfg, name)
        if field.annotation is bool:
            if value != field.default:
                argv.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None and (field.is_required() or value != field.default):
            argv.append(f"--{name}={value}")  # '=': a value that starts with '-' stays a value
    return argv


def check_accelerate_config(path: str) -> dict[str, Any]:
    """Load an accelerate config file as ``accelerate launch`` will (its own classes), or refuse it in one line.

    Returns:
        The config as a dict (``ClusterConfig.to_dict``).

    Raises:
        ConfigError: ``accelerate_config FILE: <problem>``.
    """
    from accelerate.commands.config.config_args import load_config_from_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"accelerate_config {path}: no such file (an accelerate YAML, e.g. deployments/accelerate/ddp.yaml)")
    try:
        cfg = load_config_from_file(str(p))
    except Exception as e:  # noqa: BLE001 - yaml, enum and unknown-key errors: all a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"accelerate_config {path}: {first}") from None
    values = cfg.to_dict()
    if values.get("compute_environment") != "LOCAL_MACHINE":
        raise ConfigError(f"accelerate_config {path}: field 'compute_environment': "
                          f"{values.get('compute_environment')!r}; so8t train launches on this machine (LOCAL_MACHINE)")
    kind = values.get("distributed_type")
    if kind not in TRAINABLE_DISTRIBUTED_TYPES:
        why = FSDP_NOT_YET if kind == "FSDP" else "so8t train launches DDP (MULTI_GPU) only"
        raise ConfigError(f"accelerate_config {path}: field 'distributed_type': {kind!r}: {why}")
    return values


def launch_command(cfg: TrainConfig, python: str = sys.executable) -> list[str]:
    """The command that trains ``cfg`` under ``accelerate launch`` (:func:`needs_launch` must hold)."""
    cmd = [python, "-m", LAUNCHER_MODULE]
    if cfg.accelerate_config is not None:
        cmd += ["--config_file", str(Path(cfg.accelerate_config).resolve())]
    else:
        cmd += list(DEFAULT_LAUNCH_FLAGS)
    if cfg.num_processes > 1 or cfg.accelerate_config is None:  # 1 with a config file: the file's number
        cmd += ["--num_processes", str(cfg.num_processes)]
    return [*cmd, "--module", "so8t.cli", "train", *config_argv(cfg), "--oom_retries", "0"]


class LaunchReport:
    """What the launched processes said that matters for the outcome (filled while their output streams)."""

    def __init__(self, tail_lines: int = 40) -> None:
        self.user_error: str | None = None
        self.oom: str | None = None
        self.tail: deque[str] = deque(maxlen=tail_lines)

    def read(self, line: str) -> bool:
        """Take one line; True when it is to be shown (a user error is shown once, by the caller, at the end)."""
        text = line.strip()
        if not text:
            return self.user_error is None
        self.tail.append(text)
        m = _USER_ERROR.match(text)
        if m:
            if self.user_error is None:
                self.user_error = m.group(1)
            return False
        m = _CUDA_OOM.search(text)
        if m and self.oom is None:
            self.oom = m.group(1)
        # after a user error, the rest is the launcher's report of the failed processes: log file only
        return self.user_error is None

    def error(self, returncode: int) -> Exception:
        """The exception of a launch that exited with ``returncode`` (not 0)."""
        if self.user_error is not None:
            return So8tError(self.user_error)
        if self.oom is not None:
            import torch

            return torch.cuda.OutOfMemoryError(self.oom)
        cause = next((t for t in reversed(self.tail) if re.search(r"(Error|Exception|exitcode|Signal)", t)), None)
        what = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        return LaunchError(f"training under accelerate launch failed ({what})"
                           + (f": {cause}" if cause else "") + "; each process's log is in the log directory "
                           f"({os.environ.get('SO8T_LOG_DIR', 'logs')}); resume with --resume_from_checkpoint latest")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the launcher gets SIGTERM when this process dies, even by SIGKILL (it then stops its workers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stream(proc: subprocess.Popen, report: LaunchReport, echo: Callable[[str], None]) -> None:
    """Echo the launcher's output as it comes (progress bars too: pieces end at '\\r' or '\\n')."""
    assert proc.stdout is not None
    pending = b""
    while True:
        chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
        if not chunk:
            break
        pending += chunk
        pieces = re.split(rb"(?<=[\r\n])", pending)
        pending = pieces.pop()  # not ended yet
        for piece in pieces:
            text = piece.decode("utf-8", errors="replace")
            if report.read(text):
                echo(text)
    if pending:
        text = pending.decode("utf-8", errors="replace")
        if report.read(text):
            echo(text + "\n")


def _echo_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def launch_train(cfg: TrainConfig, echo: Callable[[str], None] = _echo_stderr) -> Path:
    """Train ``cfg`` under ``accelerate launch`` (as :func:`so8t.training.train.train` trains in this process).

    Returns:
        The output directory.

    Raises:
        So8tError: a launched process's user error (its one line), or a bad ``accelerate_config``.
        torch.cuda.OutOfMemoryError: a launched process ran out of CUDA memory.
        LaunchError: any other failure (exit code 1).
    """
    if cfg.accelerate_config is not None:
        check_accelerate_config(cfg.accelerate_config)
    cmd = launch_command(cfg)
    logger.info("training on %s processes: %s", cfg.num_processes if cfg.num_processes > 1 else "the config file's",
                " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, LAUNCHED_ENV: "1"},
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    report = LaunchReport()
    previous = None
    if threading.current_thread() is threading.main_thread():  # pass a SIGTERM on (Prefect's cancellation, a pod)
        def _forward(signum: int, frame: Any) -> None:
            proc.send_signal(signum)
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, _forward)
    try:
        _stream(proc, report, echo)
        returncode = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if returncode != 0:
        raise report.error(returncode)
    return Path(cfg.output_dir)
