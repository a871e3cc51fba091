"""The file layout inside a registry version, owned here once (release builds versions, evaluate/decide/serve
read them)::

    gguf/<name>_<QUANT>.gguf   gguf/Modelfile (FROM ./<name>_<QUANT>.gguf)   gguf/decision_prompt.json
    adapter/...                reports/...
    calibration/calibration_results.json   calibration/reliability_diagram.png   (calibrated versions)

Which GGUF of a version is served is :func:`so8t.calibrate.evaluate.served_gguf`'s rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from so8t.decision import PROMPT_FILE


@dataclass(frozen=True)
class VersionLayout:
    """Relative paths (POSIX) of a version's files."""

    gguf_dir: str = "gguf"
    adapter_dir: str = "adapter"
    reports_dir: str = "reports"
    calibration_dir: str = "calibration"

    @property
    def modelfile(self) -> str:
        return f"{self.gguf_dir}/Modelfile"

    @property
    def decision_prompt(self) -> str:
        """Where a version carries the decision prompt it was trained and calibrated with."""
        return f"{self.gguf_dir}/{PROMPT_FILE}"

    @property
    def calibration(self) -> str:
        return f"{self.calibration_dir}/calibration_results.json"

    @property
    def reliability_diagram(self) -> str:
        return f"{self.calibration_dir}/reliability_diagram.png"

    def gguf(self, filename: str) -> str:
        return f"{self.gguf_dir}/{filename}"

    def adapter(self, filename: str) -> str:
        return f"{self.adapter_dir}/{filename}"

    def report(self, filename: str) -> str:
        return f"{self.reports_dir}/{filename}"

    def kind(self, rel: str) -> str | None:
        """The registry kind of ``rel`` that its name alone would not give (None: let the registry infer it)."""
        if rel.startswith(self.adapter_dir + "/"):
            return "adapter"
        if rel.startswith(self.reports_dir + "/"):
            return "report"
        if rel.startswith(self.calibration_dir + "/"):
            return "calibration"
        if rel.endswith("/" + PROMPT_FILE):
            return "config"
        return None


#: The layout every version of this project has.
LAYOUT = VersionLayout()
