"""llama.cpp quantization types: names, families (what counts as a fallback), inspection, quantizing.

Quantization runs through llama.cpp's C API in llama-cpp-python (``llama_model_quantize``), no
binary. Its per-tensor log goes to a ctypes callback: shown with ``verbose``, otherwise summarised
as progress lines, and scanned for llama.cpp's own fallback count.

Fallback (also in docs/gguf.md): a tensor with two or more non-trivial dimensions whose type in
the file is outside the requested quant's family (:func:`quant_family`). 1-D tensors (norms) stay
F32 by design and never count.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections import Counter
from pathlib import Path

from so8t.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

PARTIAL_TAG = ".partial-"
K_TYPES = frozenset({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"})
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


def quant_types() -> dict[str, int]:
    """llama.cpp's file types by name (``LLAMA_FTYPE_MOSTLY_*`` of the installed binding)."""
    import llama_cpp

    types = {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32}
    for attr in dir(llama_cpp):
        if attr.startswith("LLAMA_FTYPE_MOSTLY_"):
            types[attr.removeprefix("LLAMA_FTYPE_MOSTLY_")] = int(getattr(llama_cpp, attr))
    return dict(sorted(types.items(), key=lambda kv: kv[1]))


def normalize_quant(name: str) -> str:
    """Upper-case a quant name ('q5_k_m' -> 'Q5_K_M'; 'f16' -> 'F16')."""
    return name.strip().upper()


def validate_quants(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Normalise quant names, dropping duplicates and F16 (always made).

    Raises:
        ConfigError: an unknown name; the message lists every valid one.
    """
    valid = quant_types()
    out: list[str] = []
    bad = [n for n in names if normalize_quant(n) not in valid]
    if bad:
        raise ConfigError(
            f"unknown quantization type {', '.join(repr(b) for b in bad)}: llama.cpp knows "
            f"{', '.join(valid)}; pick one of these (e.g. Q5_K_M)"
        )
    for n in names:
        q = normalize_quant(n)
        if q != "F16" and q not in out:
            out.append(q)
    return tuple(out)


def quant_family(quant: str) -> frozenset[str]:
    """Tensor types a file of ``quant`` contains by design (for 2-D tensors).

    K-quants (``*_K*``): any K type (llama.cpp mixes Q4_K/Q5_K/Q6_K by tensor role). IQ types: IQ and
    K types. Legacy 32-block types (Q4_0, Q4_1, Q5_0, Q5_1): the type itself plus Q6_K (llama.cpp
    puts output.weight in Q6_K). Q8_0 and float types: the type itself. Anything else: the type, Q6_K
    and Q8_0. A 2-D tensor outside the family is a fallback (e.g. Q5_1 or Q8_0 in a Q5_K_M file).
    """
    q = normalize_quant(quant)
    if q in FLOAT_TYPES:
        return frozenset({q})
    if q.startswith("IQ"):
        return frozenset({t for t in _ggml_type_names() if t.startswith("IQ")}) | K_TYPES
    if "_K" in q:
        return K_TYPES
    if q in {"Q4_0", "Q4_1", "Q5_0", "Q5_1"}:
        return frozenset({q, "Q6_K"})
    if q == "Q8_0":
        return frozenset({"Q8_0"})
    return frozenset({q, "Q6_K", "Q8_0"})


def _ggml_type_names() -> list[str]:
    from gguf import GGMLQuantizationType

    return [t.name for t in GGMLQuantizationType]


def inspect_gguf(path: str | Path, quant: str) -> dict:
    """Tensor-type histogram and fallbacks of a GGUF file (read with ``gguf.GGUFReader``).

    Returns:
        ``{"n_tensors", "tensor_types", "fallback_count", "fallback_tensors", "family"}``.

    Raises:
        ModelError: the file is not a readable GGUF.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # GGUFReader raises ValueError/struct errors on foreign files
        raise ModelError(f"{path}: not a readable GGUF file ({e}); rebuild it with so8t convert") from None
    family = quant_family(quant)
    hist: Counter[str] = Counter()
    fallbacks: dict[str, str] = {}
    for t in reader.tensors:
        tname = t.tensor_type.name
        hist[tname] += 1
        if sum(int(d) > 1 for d in t.shape) >= 2 and tname not in family:
            fallbacks[t.name] = tname
    return {"n_tensors": len(reader.tensors), "tensor_types": dict(sorted(hist.items())),
            "fallback_count": len(fallbacks), "fallback_tensors": fallbacks, "family": sorted(family)}


_PROGRESS_RE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")
_FALLBACK_RE = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback")


def quantize_gguf(src: str | Path, dst: str | Path, quant: str, *, threads: int = 0, verbose: bool = False,
                  output_tensor_type: str | None = None, token_embedding_type: str | None = None) -> int | None:
    """Quantize ``src`` (F16 GGUF) to ``dst`` through llama.cpp's C API; atomic (temp + rename).

    llama.cpp's per-tensor log goes to a callback: shown with ``verbose``, otherwise summarised as
    progress lines.

    ``output_tensor_type`` / ``token_embedding_type`` are llama-quantize's ``--output-tensor-type`` /
    ``--token-embedding-type``: a ggml tensor type name (``F16``, ``Q8_0``, ...) for ``output.weight``
    / ``token_embd.weight``; None keeps llama.cpp's choice for the file type. On tied-embedding models
    (no ``output.weight``) ``token_embd`` follows ``output_tensor_type``. Not exposed by ``so8t convert``:
    used by ``benchmarks/bench_gguf.py`` for the tied-embedding ablation (docs/gguf.md).

    Returns:
        The fallback count llama.cpp itself logged (0 when it logged none), or None if unknown.

    Raises:
        ConfigError: unknown quant name or tensor type.
        ModelError: llama.cpp failed (non-zero return).
    """
    import sys

    import llama_cpp

    q = normalize_quant(quant)
    validate_quants([q])
    ftype = quant_types()[q]
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}{PARTIAL_TAG}{os.getpid()}")
    seen: list[str] = []
    state = {"next": 0.25}

    def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        s = text.decode("utf-8", "replace")
        seen.append(s)
        if verbose:
            sys.stderr.write(s)
            return
        m = _PROGRESS_RE.search(s)
        if m and int(m.group(2)) and int(m.group(1)) / int(m.group(2)) >= state["next"]:
            logger.info("quantize %s: %s/%s tensors", q, m.group(1), m.group(2))
            state["next"] += 0.25

    callback = llama_cpp.llama_log_callback(on_log)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    if output_tensor_type is not None:
        params.output_tensor_type = _ggml_type(output_tensor_type)
    if token_embedding_type is not None:
        params.token_embedding_type = _ggml_type(token_embedding_type)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            tail = "".join(seen).strip().splitlines()[-1:] or ["no log"]
            raise ModelError(f"llama.cpp could not quantize {src} to {q} (return code {rc}: {tail[0]}); "
                             f"check the F16 file, or try another type such as Q5_K_M")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
        _restore_llama_log()
    m = _FALLBACK_RE.search("".join(seen))
    return int(m.group(1)) if m else 0


def _ggml_type(name: str) -> int:
    """ggml tensor type number by name ('F16' -> 1).

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    from gguf import GGMLQuantizationType

    try:
        return int(GGMLQuantizationType[normalize_quant(name)])
    except KeyError:
        raise ConfigError(f"unknown ggml tensor type {name!r}: use one of {', '.join(_ggml_type_names())}") from None


def _restore_llama_log() -> None:
    """Give llama.cpp's log back to llama-cpp-python's own handler."""
    import llama_cpp
    from llama_cpp import _logger

    llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
