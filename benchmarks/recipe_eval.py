"""Decision quality of a training checkpoint, read in torch (the learning-curve benchmark's probe).

The pipeline measures the served GGUF; a learning curve needs the model at many checkpoints, and
converting each one to GGUF would cost more than the training. This reads the same three label
logits (first token of ALLOW / ESCALATE / DENY after the decision prompt) from the HF model with
LoRA and gates attached, the shared prompt prefix evaluated once, and calibrates them exactly as
``so8t calibrate`` does (same split, temperature fit and threshold search). The GGUF figures of the
final model are in the pipeline's own calibration report; the curve shows the trend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from so8t.calibrate.calibration import CalibrationConfig, calibrate, encode_labels
from so8t.decision import LABELS, DecisionPrompt, decision_messages
from so8t.calibrate.metrics import compute_metrics, softmax


@dataclass
class Labelled:
    texts: list[str]
    labels: list[str]
    sources: list[str]


def read_labelled(path: str | Path, limit: int | None = None) -> Labelled:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    return Labelled([r["text"] for r in rows], [r["label"] for r in rows], [r.get("source", "-") for r in rows])


def label_token_ids(tok: Any, prompt_text: str) -> list[int]:
    """First token of each label as the template continues after the generation prompt."""
    base = tok(prompt_text, add_special_tokens=False)["input_ids"]
    out = []
    for lab in LABELS:
        ids = tok(prompt_text + lab, add_special_tokens=False)["input_ids"]
        assert ids[:len(base)] == base, "label tokenization merges with the prompt"
        out.append(ids[len(base)])
    assert len(set(out)) == 3, out
    return out


@torch.no_grad()
def label_logits(model: torch.nn.Module, tok: Any, texts: list[str], prompt: DecisionPrompt,
                 batch_size: int = 16) -> np.ndarray:
    """``(n, 3)`` label logits; the common prompt prefix is evaluated once and its cache reused."""
    model.eval()
    rendered = [tok.apply_chat_template(decision_messages(t, prompt), tokenize=False, add_generation_prompt=True)
                for t in texts]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in rendered]
    lab = label_token_ids(tok, rendered[0])
    p = 0
    while all(len(x) > p + 1 for x in ids) and all(x[p] == ids[0][p] for x in ids):
        p += 1
    prefix = torch.tensor([ids[0][:p]])
    pre = model(input_ids=prefix, use_cache=True)
    out = np.zeros((len(texts), 3))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        suf = [ids[i][p:] for i in rows]
        n = max(len(x) for x in suf)
        x = torch.full((len(rows), n), pad)
        mask = torch.zeros((len(rows), p + n), dtype=torch.long)
        mask[:, :p] = 1
        for j, t in enumerate(suf):
            x[j, :len(t)] = torch.tensor(t)
            mask[j, p:p + len(t)] = 1
        cache = _copy_cache(pre.past_key_values, len(rows))
        pos = torch.arange(p, p + n).expand(len(rows), n)
        logits = model(input_ids=x, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits
        last = torch.tensor([len(t) - 1 for t in suf])
        out[rows] = logits[torch.arange(len(rows)), last][:, lab].double().numpy()
    return out


def _copy_cache(cache: Any, batch: int) -> Any:
    import copy

    c = copy.deepcopy(cache)
    c.batch_repeat_interleave(batch)
    return c


def decision_metrics(z_val: np.ndarray, y_val: list[str], z_test: np.ndarray | None = None, y_test: list[str] | None = None,
                     src_test: list[str] | None = None, far_max: float = 0.02) -> dict[str, Any]:
    """Calibrate on val exactly as ``so8t calibrate`` (default settings) and report held-out and test metrics."""
    cfg = CalibrationConfig(far_max=far_max)
    res = calibrate(z_val, encode_labels(y_val), cfg)
    h = res.after.holdout
    allow = h.false_deny_denominator
    cm = np.array(h.confusion_matrix)
    out: dict[str, Any] = {
        "temperature": res.temperature, "tau_deny": res.tau_deny, "tau_escalate": res.tau_escalate,
        "holdout": {"n": h.n, "ece": h.ece, "far": h.false_allow_rate, "far_upper95": h.false_allow_upper95,
                    "macro_f1": h.macro_f1, "over_refusal": (allow - int(cm[0, 0])) / allow if allow else None,
                    "argmax_accuracy": h.argmax_accuracy},
        "gate_passed": bool(res.passed) if hasattr(res, "passed") else None,
    }
    if z_test is not None and y_test is not None:
        y = encode_labels(y_test)
        m = compute_metrics(softmax(z_test, res.temperature), y, res.tau_deny, res.tau_escalate)
        cmt = np.array(m.confusion_matrix)
        n_allow = int(cmt[0].sum())
        out["test"] = {"n": m.n, "far": m.false_allow_rate, "far_upper95": m.false_allow_upper95,
                       "over_refusal": (n_allow - int(cmt[0, 0])) / n_allow if n_allow else None,
                       "macro_f1": m.macro_f1, "ece": m.ece}
    return out
