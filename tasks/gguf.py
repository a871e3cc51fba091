"""convert_task and quantize_task: ``so8t.export.gguf.run_conversion`` (F16, then the quant types).

Conversion is split in two tasks so that the UI shows the two runbook steps and a new quant type
re-uses the verified F16 file: the library's plan reuses any output whose provenance sidecar
still matches its input and tool.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from release.layout import convert_f16, quantize_gguf
from so8t.export.gguf import ConversionResult, ConvertConfig
from tasks.caching import ContentHash


def _convert_inputs(params: dict) -> list[str]:
    return [params["cfg"].model_dir]


def _files_table(result: ConversionResult, key: str, description: str) -> None:
    create_table_artifact(
        [{"file": f.file, "quant": f.quant, "MB": round(f.size_bytes / 1e6, 2), "fallbacks": f.fallback_count,
          "mean_kl": f.fidelity.mean_kl if f.fidelity else None,
          "top1_agreement": f.fidelity.top1_agreement if f.fidelity else None, "reused": f.reused}
         for f in result.files],
        key=key, description=description,
    )






@task(name="convert-gguf", retries=1, retry_delay_seconds=5,
      cache_policy=ContentHash(input_paths=_convert_inputs), persist_result=True)
def convert_task(cfg: ConvertConfig) -> ConversionResult:
    """Convert the baked model to ``{name}_f16.gguf`` (llama.cpp's converter) and verify it."""
    result = convert_f16(cfg)
    _files_table(result, "gguf-convert", f"F16 GGUF from {cfg.model_dir}")
    return result


@task(name="quantize-gguf", retries=1, retry_delay_seconds=5,
      cache_policy=ContentHash(input_paths=_convert_inputs), persist_result=True)
def quantize_task(cfg: ConvertConfig) -> ConversionResult:
    """Quantize the verified F16 GGUF to ``cfg.quants`` and write the Ollama Modelfile beside them."""
    result = quantize_gguf(cfg)
    _files_table(result, "gguf-files", f"GGUF files in {result.out_dir} (report: {Path(result.report_path).name})")
    return result
