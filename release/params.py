"""Flow parameters: pydantic models, so the Prefect UI renders typed forms with descriptions.

The stage settings reuse the library's own config fields (descriptions, bounds and defaults come
from :class:`so8t.config.TrainConfig` and :class:`so8t.calibrate.stage.CalibrateCommandConfig`),
minus the fields the flow decides itself (output directories, the model file to score, resume).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from so8t.calibrate.stage import CalibrateCommandConfig
from so8t.config import TrainConfig
from so8t.calibrate.promotion_gate import GateConfig
from release import DATA_DIR
from release.ab import ABSettings
from release.evaluation import EvaluationSettings
from release.smoke import SmokeSettings

# The real, licensed decision data (data/README.md) and the think-format instruction records that keep
# the model a chat model; calibration on the real data's validation split.
BUNDLED_TRAIN = ",".join(str(DATA_DIR / f) for f in ("decision_train.jsonl", "instructions_train.jsonl"))
BUNDLED_VAL = str(DATA_DIR / "decision_val.jsonl")

_FROZEN = ConfigDict(extra="forbid", frozen=True)
ENV_WORK_DIR = "SO8T_WORK_DIR"  # a worker's own stage outputs and cache records (deployments/stack.py)


def _settings_model(name: str, source: type[BaseModel], drop: set[str], defaults: dict[str, Any],
                    doc: str, **extra: Any) -> type[BaseModel]:
    """A model with ``source``'s fields (descriptions and bounds kept), minus ``drop``, new defaults."""
    fields: dict[str, Any] = {}
    for key, info in source.model_fields.items():
        if key in drop:
            continue
        info = copy.copy(info)
        if key in defaults:
            info.default = defaults[key]
        fields[key] = (info.annotation, info)
    fields.update(extra)
    model = create_model(name, __config__=_FROZEN, __module__=__name__, **fields)
    model.__doc__ = doc
    return model


TrainSettings = _settings_model(
    "TrainSettings", TrainConfig, {"output_dir", "resume_from_checkpoint"},
    {"base_model": "smollm2", "dataset": BUNDLED_TRAIN},
    "SO8T training settings (the output directory is chosen by the flow, keyed by content).",
)

CalibrationSettings = _settings_model(
    "CalibrationSettings", CalibrateCommandConfig,
    {"model", "output_dir", "no_cache", "fail_on_gate", *GateConfig.model_fields},
    {"val_data": BUNDLED_VAL},
    "Calibration settings; the targets come from the gate settings so calibration and gate agree.",
)


class ModelRef(BaseModel):
    """Which model, in which registry."""

    model_config = _FROZEN

    name: str = Field("so8t-smollm2", description="Registry model name (one Hub repository per name).")
    registry_root: str | None = Field(None, description="Registry root; None: $SO8T_REGISTRY or ~/.cache/so8t/registry.")


class ConvertSettings(BaseModel):
    """GGUF conversion and quantization."""

    model_config = _FROZEN

    quants: tuple[str, ...] = Field(("Q4_K_M",), min_length=1, description="Quantization types; the first is the one served (Modelfile, smoke test).")
    fidelity: bool = Field(True, description="Measure each GGUF's next-token fidelity to the baked HF model.")
    publish_f16: bool = Field(False, description="Also publish the F16 GGUF in the registry version (large).")


class MirrorSettings(BaseModel):
    """Hugging Face Hub mirror (skipped when no repository is configured)."""

    model_config = _FROZEN

    repo_id: str | None = Field(None, description="Hub repository 'owner/name'; None: $SO8T_HF_REPO, and no mirroring when unset.")
    endpoint: str | None = Field(None, description="Hub URL; None: $SO8T_HF_ENDPOINT / $HF_ENDPOINT / huggingface.co.")


MIRROR_DESCRIPTION = ("Hugging Face Hub mirror: versions are pushed after a publish, promotion or rollback, and a "
                      "version missing from the local registry is pulled from it.")


class ServiceSettings(BaseModel):
    """A decision service (``so8t serve``) that follows the alias: after a promotion or rollback the flow waits
    until it serves the new version (skipped when no URL is configured; the alias itself is the contract)."""

    model_config = _FROZEN

    url: str | None = Field(None, description="Base URL of the service, e.g. http://127.0.0.1:8080; None: do not wait.")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Fail the run when the service does not serve the new "
                                                              "version within this many seconds.")
    api_key_env: str = Field("SO8T_API_KEY", description="Environment variable holding the service's bearer token "
                                                         "(never a parameter: parameters are stored by Prefect).")


class _Target(BaseModel):
    """Which model a recipe works on, and where its outputs go."""

    model_config = _FROZEN

    model: ModelRef = Field(default_factory=ModelRef, description="Registry model and root.")
    work_dir: str = Field(default_factory=lambda: os.environ.get(ENV_WORK_DIR) or "outputs/so8t",
                          description="Where stage outputs, exports and their cache records go (one sub-directory per "
                                      "input digest); default: $SO8T_WORK_DIR, else outputs/so8t.")
    mirror: MirrorSettings = Field(default_factory=MirrorSettings, description=MIRROR_DESCRIPTION)


class _Build(BaseModel):
    """How a candidate is built."""

    model_config = _FROZEN

    train: TrainSettings = Field(default_factory=TrainSettings, description="Training settings.")  # type: ignore[valid-type]
    convert: ConvertSettings = Field(default_factory=ConvertSettings, description="GGUF settings.")


class _Promotion(BaseModel):
    """How a candidate is calibrated, judged and promoted, and who hears of it."""

    model_config = _FROZEN

    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings, description="Calibration settings.")  # type: ignore[valid-type]
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion gate targets (also the calibration targets).")
    ab: ABSettings = Field(default_factory=ABSettings, description="A/B comparison with production.")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings, description="Held-out evaluation of the calibrated candidate.")
    smoke: SmokeSettings = Field(default_factory=SmokeSettings, description="Post-promotion smoke test.")
    service: ServiceSettings = Field(default_factory=ServiceSettings, description="Decision service to wait for.")


class RetrainParams(_Build, _Target):
    """so8t-retrain: train, bake, convert, quantize, publish a candidate."""

    emit_event: bool = Field(True, description="Emit so8t.candidate.published (triggers calibrate-and-promote on a server).")


class CalibrateAndPromoteParams(_Promotion, _Target):
    """so8t-calibrate-and-promote: calibrate, A/B, gate, promote with smoke test and rollback."""

    version: str | None = Field(None, description="Version to calibrate: 'vN', 'production', or None for the newest candidate awaiting calibration.")


class PipelineParams(_Promotion, _Build, _Target):
    """so8t-pipeline: retrain, then calibrate-and-promote the new candidate, then mirror (the two recipes' parameters,
    composed: :meth:`retrain` and :meth:`promotion` give each half its own)."""

    def retrain(self) -> RetrainParams:
        """The build half (no event: the pipeline calibrates its candidate itself)."""
        return RetrainParams(**_fields(self, RetrainParams), emit_event=False)

    def promotion(self, version: str) -> CalibrateAndPromoteParams:
        """The calibrate-and-promote half, on ``version``."""
        return CalibrateAndPromoteParams(**_fields(self, CalibrateAndPromoteParams), version=version)


def _fields(params: BaseModel, cls: type[BaseModel]) -> dict:
    return {k: getattr(params, k) for k in cls.model_fields if k in type(params).model_fields}


class RollbackParams(BaseModel):
    """so8t-rollback: move production back by hand."""

    model_config = _FROZEN

    model: ModelRef = Field(default_factory=ModelRef, description="Registry model and root.")
    to: str | None = Field(None, description="Version to restore ('vN'); None: the previous production version.")
    reason: str = Field("manual rollback", description="Why (recorded in the registry history).")
    mirror: MirrorSettings = Field(default_factory=MirrorSettings, description=MIRROR_DESCRIPTION)
    service: ServiceSettings = Field(default_factory=ServiceSettings, description="Decision service to wait for.")


def train_config(settings: BaseModel, output_dir: str | Path) -> TrainConfig:
    """The library's TrainConfig for these settings and output directory."""
    return TrainConfig(**settings.model_dump(), output_dir=str(output_dir))


def calibrate_config(settings: BaseModel, gate: GateConfig, model: str | Path, output_dir: str | Path) -> CalibrateCommandConfig:
    """The library's calibration config; its targets are the gate's, so both verdicts agree."""
    return CalibrateCommandConfig(
        **settings.model_dump(), model=str(model), output_dir=str(output_dir),
        **gate.model_dump(),
    )
