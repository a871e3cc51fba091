"""The decision rule of a calibrated model, read from its ``calibration_results.json``: ``p = softmax(z / T)``;
DENY if ``p_DENY >= tau_deny``, else ALLOW if ``p_ALLOW >= tau_escalate``, else ESCALATE
(:func:`so8t.calibrate.metrics.decide`). Read by ``so8t evaluate``, ``so8t decide`` / ``serve`` and ``so8t ab``.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from so8t.errors import DataError
from so8t.jsonfile import read_json_object

__all__ = ["Calibration", "load_calibration", "read_calibration_file"]


class Calibration(BaseModel):
    """The decision rule of a calibrated model (read from ``calibration_results.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(description="T of p = softmax(z / T).")
    tau_deny: float = Field(description="DENY if p_DENY >= tau_deny.")
    tau_escalate: float = Field(description="Else ALLOW if p_ALLOW >= tau_escalate, else ESCALATE.")
    source: str = Field(description="The file it came from.")


def read_calibration_file(path: str | Path) -> dict:
    """The JSON object of a calibration results file, read with one-line errors (missing, unreadable, not an object).

    Raises:
        DataError: The file is missing or unreadable, not JSON, or not a JSON object.
    """
    return read_json_object(path, "calibration file", hint=": pass the calibration_results.json of so8t calibrate")


def load_calibration(path: str | Path) -> Calibration:
    """Read temperature and thresholds from a calibration results JSON (top-level keys).

    Raises:
        DataError: Missing/unreadable file, missing key, or a value that is not a valid number.
    """
    p = Path(path).expanduser()
    obj = read_calibration_file(p)
    vals: dict[str, float] = {}
    for key in ("temperature", "tau_deny", "tau_escalate"):
        v = obj.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(f"{p}: '{key}' is {v!r}: calibration results need finite numbers temperature, tau_deny "
                            "and tau_escalate at the top level (so8t calibrate writes them)")
        vals[key] = float(v)
    if vals["temperature"] <= 0:
        raise DataError(f"{p}: temperature {vals['temperature']} must be > 0")
    return Calibration(**vals, source=str(p))
