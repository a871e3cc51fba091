"""llama.cpp through llama-cpp-python: the one loader, its thread policy, and token-level helpers.

Every GGUF the library evaluates is opened by :func:`open_llama`: scoring and ``so8t decide`` /
``so8t serve`` (through :func:`so8t.calibrate.scoring._load_model`), the A/B generations
(:class:`so8t.ab.perf.GreedyGenerator`), the GGUF fidelity check and ``so8t run``.

Threads (:func:`thread_counts`): ggml's worker threads spin while they wait, so more threads than
free cores slows a model down several-fold (measured: 45 vs 5 tokens/s with 1 vs 2 threads on a busy
2-core machine). A positive ``n_threads`` is always used as given. What ``0`` means is one of two
documented defaults, chosen by the caller:

- ``"half"`` (scoring, decide, serve, A/B): half the logical cores (about the physical ones), at
  least 1, and the *same* count for batch decoding: llama-cpp-python's own default puts batches on
  every logical core, whose spin barriers stall badly when the machine is shared or oversubscribed.
- ``"all"`` (``so8t run --threads``, ``so8t gguf convert``'s fidelity check, both documented as
  "0: all cores"): every logical core for single-token decoding, and every core for batches
  whatever ``n_threads`` is (llama-cpp-python's default, which these two commands have always used).

Extra buffer types (:func:`configure_llama_cpp`): llama.cpp repacks weights into "extra" CPU buffers
(its AMX buffer on Intel CPUs with AMX, repacked Q4_0/IQ4_NL layouts elsewhere). The AMX path crashes
with a segmentation fault in ``ggml_backend_amx_mul_mat`` on the first decode on our models (seen here on
an AMX Xeon; upstream llama.cpp issue #20824, open), so every model this process loads gets
``use_extra_bufts = false`` unless ``SO8T_LLAMA_EXTRA_BUFFERS=1``. Weights then stay in llama.cpp's
plain CPU buffer: same kernels for every quantization type, on every CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from so8t.errors import ModelError

__all__ = ["EXTRA_BUFFERS_ENV", "N_BATCH", "ThreadDefault", "VocabOnly", "configure_llama_cpp", "default_threads",
           "diagnosed_message", "extra_buffers_enabled", "load_hint", "next_token_logits", "open_llama", "open_vocab",
           "special_token_text", "template_token_ids", "thread_counts"]

#: Tokens per llama.cpp decode call unless a caller asks otherwise.
N_BATCH = 512

ThreadDefault = Literal["half", "all"]


def default_threads() -> int:
    """Half the logical cores (about the physical ones), at least 1."""
    return max(1, (os.cpu_count() or 2) // 2)


def thread_counts(n_threads: int, default: ThreadDefault = "half") -> tuple[int, int]:
    """``(n_threads, n_threads_batch)`` for llama.cpp (see the module docstring).

    Args:
        n_threads: Threads asked for; 0 (or less) means ``default``.
        default: ``"half"``: :func:`default_threads`, batches on as many; ``"all"``: every logical
            core, batches on every core.
    """
    if default == "half":
        threads = n_threads if n_threads > 0 else default_threads()
        return threads, threads
    if default == "all":
        cores = os.cpu_count() or 1
        return (n_threads if n_threads > 0 else cores), cores
    raise ValueError(f"thread default {default!r} is unknown: use 'half' or 'all'")


#: Set to 1 to let llama.cpp use its extra CPU buffer types (AMX, repacked layouts): see the module docstring.
EXTRA_BUFFERS_ENV = "SO8T_LLAMA_EXTRA_BUFFERS"


def extra_buffers_enabled() -> bool:
    """Whether models are loaded with llama.cpp's extra buffer types (``SO8T_LLAMA_EXTRA_BUFFERS=1``)."""
    return os.environ.get(EXTRA_BUFFERS_ENV, "0").strip() == "1"


def configure_llama_cpp(llama_cpp: Any | None = None) -> Any:
    """Apply the process-wide load policy to llama-cpp-python (idempotent) and return the module.

    llama-cpp-python builds every model's parameters from ``llama_model_default_params()`` and has no
    argument for ``use_extra_bufts``; the default is wrapped once so every load in this process, ours and
    any direct ``llama_cpp.Llama(...)`` (tests' independent oracles, benchmarks), gets the policy.
    """
    if llama_cpp is None:
        import llama_cpp
    low = llama_cpp.llama_cpp
    current = low.llama_model_default_params
    if getattr(current, "_so8t_policy", False):
        return llama_cpp
    original = current  # the unwrapped function, kept by the closure

    def llama_model_default_params():  # the same name and signature as the function it wraps
        params = original()
        if hasattr(params, "use_extra_bufts") and not extra_buffers_enabled():
            params.use_extra_bufts = False
        return params

    llama_model_default_params._so8t_policy = True  # type: ignore[attr-defined]
    low.llama_model_default_params = llama_model_default_params
    llama_cpp.llama_model_default_params = llama_model_default_params
    return llama_cpp


def _complete_gguf_message(path: Path, e: BaseException) -> str:
    return f"{path}: llama.cpp could not load the model ({e}): is it a complete, supported GGUF?"


def open_llama(path: str | Path, n_ctx: int, *, n_threads: int = 0, default: ThreadDefault = "half",
               n_batch: int = N_BATCH, logits_all: bool = False, seed: int | None = 0,
               message: Callable[[Path, BaseException], str] = _complete_gguf_message) -> Any:
    """Open a GGUF with llama-cpp-python, quietly; the caller must ``close()`` it.

    Args:
        path: The ``.gguf`` file.
        n_ctx: Context size.
        n_threads: CPU threads (0: ``default``, see :func:`thread_counts`).
        default: What ``n_threads=0`` means.
        n_batch: Tokens per decode call.
        logits_all: Keep the logits of every position (``llm.scores``), not only the last.
        seed: llama.cpp's seed; None leaves llama-cpp-python's default.
        message: The error text for a file llama.cpp refuses (gets the path and the exception).

    Returns:
        The ``llama_cpp.Llama``.

    Raises:
        ModelError: llama-cpp-python is not installed, or llama.cpp cannot load the file.
    """
    try:
        import llama_cpp
    except ImportError as e:
        raise ModelError(f"llama-cpp-python is not importable ({e}): pip install -e '.[llama]'") from None
    configure_llama_cpp(llama_cpp)
    path = Path(path)
    threads, batch_threads = thread_counts(n_threads, default)
    kwargs: dict[str, Any] = dict(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, logits_all=logits_all,
                                  verbose=False, n_threads=threads, n_threads_batch=batch_threads)
    if seed is not None:
        kwargs["seed"] = seed
    try:
        return llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise ModelError(message(path, e)) from None


class VocabOnly:
    """llama.cpp's vocabulary alone (no weights, no context): the ``Llama`` members that render and tokenize prompts.

    ``metadata``, ``token_bos()``, ``token_eos()``, ``tokenize()`` and ``detokenize()`` answer as a loaded
    ``llama_cpp.Llama`` of the same file does (both call the same ``LlamaModel``); loading takes ~0.1 s. The
    sharded runs (:mod:`so8t.shards`) prepare their prompts with it before the workers load the model.

    Raises:
        ModelError: llama-cpp-python is missing, or llama.cpp cannot read the file.
    """

    def __init__(self, path: str | Path):
        self._model = open_vocab(Path(path), message=_complete_gguf_message)
        self.metadata: dict[str, str] = self._model.metadata()

    def token_bos(self) -> int:
        return self._model.token_bos()

    def token_eos(self) -> int:
        return self._model.token_eos()

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return self._model.detokenize(tokens, special=special)

    def close(self) -> None:
        self._model.close()

    def __enter__(self) -> VocabOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def diagnosed_message(path: Path, e: BaseException) -> str:
    """The error text for a GGUF llama.cpp refuses, with :func:`load_hint`'s diagnosis (for conversion outputs)."""
    return f"llama.cpp cannot load {path} ({e}){load_hint(path)}"


def load_hint(path: Path) -> str:
    """Why llama.cpp may have refused ``path``, as a suffix for an error message (reads the GGUF header)."""
    try:
        from gguf import GGUFReader

        r = GGUFReader(str(path))
        name = r.fields["general.name"].contents().lower() if "general.name" in r.fields else ""
        tokens = set(r.fields["tokenizer.ggml.tokens"].contents()) if "tokenizer.ggml.tokens" in r.fields else set()
    except Exception:
        return ": the file is not a valid GGUF; rebuild it with so8t convert"
    if ("phi3" in name or "phi-3" in name) and "<|endoftext|>" not in tokens:
        return (": llama.cpp applies Phi-3 vocabulary rules to models named 'phi3' and needs the token "
                "<|endoftext|>, which this tokenizer lacks; convert with a --name without 'phi3' or add the token")
    return ": run with --verbose to see llama.cpp's log"


def next_token_logits(llm: Any, copy: bool = True) -> np.ndarray:
    """The next-token logits after the last ``llm.eval`` (``(n_vocab,)`` float32).

    Args:
        llm: A loaded ``llama_cpp.Llama``.
        copy: Return a copy (``False``: a view of llama.cpp's buffer, valid until the next eval).
    """
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    view = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))
    return view.copy() if copy else view


def special_token_text(llm: Any, token: int) -> str:
    """Text of a special token (BOS, EOS) as templates print it; ``""`` for a model without one (``token < 0``)."""
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def template_token_ids(llm: Any, text: str, bos_text: str) -> list[int]:
    """Tokens of a chat-templated ``text`` with one BOS where the model uses one.

    A template that prints BOS itself (Llama's ``{{ bos_token }}``) is tokenized without adding
    another; otherwise the model's own rule (``tokenizer.ggml.add_bos_token``) decides. Asking
    llama.cpp for a second BOS and dropping it would give the same ids, plus a warning on stderr
    for every prompt.
    """
    printed = bool(bos_text) and text.startswith(bos_text)
    return llm.tokenize(text.encode("utf-8"), add_bos=not printed, special=True)


def _vocab_message(path: Path, e: BaseException) -> str:
    return f"llama.cpp cannot load {path} ({e}); pass a file made by so8t convert"


def open_vocab(path: Path, *, message: Callable[[Path, BaseException], str] = _vocab_message) -> Any:
    """llama.cpp's vocabulary-only model (quiet load, no context); the caller closes it.

    Raises:
        ModelError: llama-cpp-python is not installed, or llama.cpp cannot read the file (``message``'s text).
    """
    try:
        import llama_cpp
        from llama_cpp._internals import LlamaModel  # the wrapper Llama itself uses
    except ImportError as e:
        raise ModelError(f"llama-cpp-python is not importable ({e}): pip install -e '.[llama]'") from None
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    try:
        return LlamaModel(path_model=str(path), params=params, verbose=False)
    except ValueError as e:
        raise ModelError(message(path, e)) from None
