"""The runbook's operational checklists (運用チェックリスト), checked automatically.

Each ``*_items`` function is pure (reads files, returns :class:`CheckItem` rows); a failed item is shown,
never silently dropped (the stages themselves raise on hard errors). ``tasks.checklists.show_checklist``
shows them as a Prefect artifact; :func:`checklist_markdown` renders one for anything else.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from pydantic import BaseModel

from so8t.config import TrainConfig
from so8t.digests import count_records, split_paths


class CheckItem(BaseModel):
    """One checklist line: the runbook's wording, whether it holds, and the evidence."""

    item: str
    ok: bool | None  # None: not applicable here (e.g. GPU checks on a CPU machine)
    detail: str = ""


def before_training_items(cfg: TrainConfig) -> list[CheckItem]:
    """学習前: data prepared, base model available, environment set up, GPU memory."""
    files = split_paths(cfg.dataset)
    missing = [f for f in files if not Path(f).is_file()]
    lines = count_records(cfg.dataset)
    base_ok, base_detail = True, cfg.base_model
    if Path(cfg.base_model).expanduser().exists():
        base_ok = (Path(cfg.base_model).expanduser() / "config.json").is_file()
        base_detail = f"{cfg.base_model} ({'config.json found' if base_ok else 'no config.json'})"
    else:
        from so8t.base_models import EMBEDDED

        base_ok = cfg.base_model in EMBEDDED
        base_detail = (f"embedded default {cfg.base_model!r} (prepared on first use)" if base_ok
                       else f"{cfg.base_model!r} is neither a directory nor one of {sorted(EMBEDDED)}")
    env = [m for m in ("torch", "transformers", "peft", "llama_cpp") if importlib.util.find_spec(m) is None]
    return [
        CheckItem(item="データセットが準備されている (dataset prepared)", ok=not missing and lines > 0,
                  detail=f"missing {missing}" if missing else f"{lines} records in {len(files)} file(s)"),
        CheckItem(item="ベースモデルがダウンロードされている (base model available)", ok=base_ok, detail=base_detail),
        CheckItem(item="環境がセットアップされている (environment set up)", ok=not env,
                  detail=f"missing modules {env}" if env else "torch, transformers, peft, llama_cpp importable"),
        gpu_memory_item(cfg),
    ]


def gpu_memory_item(cfg: TrainConfig) -> CheckItem:
    """GPU memory: the VRAM preflight's estimate (so8t.training.preflight, docs/vram.md) against the free memory.

    On a CUDA machine it holds when the estimated peak fits in the free memory, and says what to change
    first when not. Without CUDA it is not applicable, and shows what a GPU would need. Without an
    estimate (no readable config.json) it falls back to "more than 2 GB free".
    """
    import torch

    from so8t.errors import So8tError
    from so8t.training.preflight import plan_fit, read_model_shape

    item = "GPUメモリが十分にある (GPU memory)"
    cuda = torch.cuda.is_available()
    free, total = torch.cuda.mem_get_info() if cuda else (None, None)
    try:
        report = plan_fit(cfg, read_model_shape(cfg.base_model), free,
                          native_bf16=torch.cuda.is_bf16_supported() if cuda else True)
    except So8tError as e:
        if cuda:
            return CheckItem(item=item, ok=free > 2e9, detail=f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free "
                                                               f"(no VRAM estimate: {e})")
        return CheckItem(item=item, ok=None, detail="no CUDA device: training on CPU")
    if cuda:
        return CheckItem(item=item, ok=report.fits, detail=report.verdict("free"))
    return CheckItem(item=item, ok=None, detail=f"no CUDA device: training on CPU (on a CUDA GPU: {report.verdict()})")


def after_training_items(output_dir: str | Path) -> list[CheckItem]:
    """学習中/学習後: checkpoints saved, loss decreasing, final checkpoint and model saved, log present."""
    from so8t.training.train import CONFIG_FILE, list_checkpoints, read_loss_log

    out = Path(output_dir)
    ckpts = list_checkpoints(out)
    log = read_loss_log(out)
    first, last = (log[0]["ce_loss"], log[-1]["ce_loss"]) if log else (None, None)
    resolved = json.loads((out / CONFIG_FILE).read_text()) if (out / CONFIG_FILE).is_file() else {}
    saved = [f for f in ("adapter_model.safetensors", "adapter_config.json", "so8t_gates.safetensors") if (out / f).is_file()]
    return [
        CheckItem(item="チェックポイントが定期的に保存されている (checkpoints saved)", ok=bool(ckpts),
                  detail=", ".join(c.name for c in ckpts) or "none"),
        CheckItem(item="損失が減少している (loss decreasing)", ok=None if first is None else last <= first,
                  detail="no loss log" if first is None else f"CE {first:.4f} -> {last:.4f} over {len(log)} logged steps"),
        CheckItem(item="最終チェックポイントが保存されている (final checkpoint saved)",
                  ok=bool(ckpts) and resolved.get("global_step") == int(ckpts[-1].name.split("-")[1]) if ckpts else False,
                  detail=f"global step {resolved.get('global_step')}"),
        CheckItem(item="学習ログを確認 (training log)", ok=bool(log), detail=str(out / "loss_log.jsonl")),
        CheckItem(item="モデルが正しく保存されている (model saved)", ok=len(saved) == 3, detail=", ".join(saved)),
    ]


def after_conversion_items(baked_dir: str | Path, gguf_report: str | Path, quants: list[str] | tuple[str, ...]) -> list[CheckItem]:
    """焼き込み・変換後: baked model, GGUF files, quantization done, file sizes plausible."""
    baked = Path(baked_dir)
    bake = json.loads((baked / "bake_report.json").read_text()) if (baked / "bake_report.json").is_file() else {}
    rep = json.loads(Path(gguf_report).read_text()) if Path(gguf_report).is_file() else {"files": []}
    files = {f["quant"]: f for f in rep["files"]}
    out_dir = Path(gguf_report).parent
    exists = {q: (out_dir / f["file"]).is_file() for q, f in files.items()}
    f16 = files.get("F16", {}).get("size_bytes")
    sizes_ok = bool(f16) and all(0 < files[q]["size_bytes"] < f16 for q in quants if q in files)
    return [
        CheckItem(item="焼き込み済みモデルが生成されている (baked model)", ok=bool(bake.get("passed")),
                  detail=f"{baked}: max |delta logit| {bake.get('max_abs_logit_delta', float('nan')):.2e}" if bake else f"{baked}: no bake_report.json"),
        CheckItem(item="GGUFファイルが生成されている (GGUF written)", ok=bool(files.get("F16")) and exists.get("F16", False),
                  detail=files.get("F16", {}).get("file", "no F16 file")),
        CheckItem(item="量子化が完了している (quantization done)", ok=all(q in files and exists[q] for q in quants),
                  detail=", ".join(f"{q}: {files[q]['file']}" if q in files else f"{q}: missing" for q in quants)),
        CheckItem(item="ファイルサイズが適切である (file sizes plausible)", ok=sizes_ok,
                  detail=", ".join(f"{q} {f['size_bytes'] / 1e6:.1f} MB" for q, f in files.items())),
    ]


def after_calibration_items(results_path: str | Path, ece: float, ece_max: float, far: float | None,
                            far_max: float) -> list[CheckItem]:
    """較正後: results saved, ECE and False Allow Rate under target, parameters recorded."""
    p = Path(results_path)
    doc = json.loads(p.read_text()) if p.is_file() else {}
    params = {k: doc.get(k) for k in ("temperature", "tau_deny", "tau_escalate")}
    return [
        CheckItem(item="較正結果が保存されている (results saved)", ok=p.is_file(), detail=str(p)),
        CheckItem(item="ECEが目標値以下である (ECE <= target)", ok=ece <= ece_max, detail=f"{ece:.4f} vs {ece_max}"),
        CheckItem(item="False Allow Rateが目標値以下である (FAR <= target)", ok=far is not None and far <= far_max,
                  detail=f"{'undefined' if far is None else f'{far:.4f}'} vs {far_max}"),
        CheckItem(item="パラメータが記録されている (parameters recorded)", ok=all(v is not None for v in params.values()),
                  detail=", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())),
    ]


def before_inference_items(gguf: str | Path | None, modelfile_text: str | None, temperature: float | None) -> list[CheckItem]:
    """推論前: GGUF present, calibrated parameters set, inference environment ready."""
    calibrated = (modelfile_text is not None and temperature is not None
                  and f"PARAMETER temperature {temperature:g}" in modelfile_text)
    why = "Modelfile lacks the calibrated temperature"
    note = [ln[1:].strip() for ln in (modelfile_text or "").splitlines() if ln.startswith("# calibrated temperature")]
    if note:  # written by build_modelfile when the fitted T is no sampling temperature
        why += f" ({note[0]})"
    return [
        CheckItem(item="GGUFファイルが存在する (GGUF present)", ok=gguf is not None and Path(gguf).is_file(), detail=str(gguf)),
        CheckItem(item="較正パラメータが設定されている (calibrated parameters set)", ok=calibrated,
                  detail=f"Modelfile temperature {temperature:g}" if calibrated else why),
        CheckItem(item="推論環境が準備されている (inference environment ready)",
                  ok=importlib.util.find_spec("llama_cpp") is not None, detail="llama-cpp-python importable"),
    ]


def checklist_markdown(title: str, items: list[CheckItem]) -> str:
    """One checklist as a Markdown section."""
    mark = {True: "[x]", False: "[ ] **FAILED**", None: "[ ] n/a"}
    return f"## {title}\n\n" + "\n".join(f"- {mark[i.ok]} {i.item} — {i.detail}" for i in items) + "\n"
