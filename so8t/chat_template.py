"""Chat templates rendered the way Hugging Face renders them, each compiled once per process.

A sandboxed jinja2 environment (``ImmutableSandboxedEnvironment``, ``trim_blocks``,
``lstrip_blocks``, the ``loopcontrols`` extension, ``raise_exception`` and ``strftime_now``), as
transformers' ``apply_chat_template`` sets it up. Compiling a template costs about 10 ms of CPU
(more than rendering it), and scoring renders one per sample: the compiled template is kept,
keyed by its source.

:func:`render_chat` is what the library calls (scoring, decide, A/B generations, ``so8t run``, the
Ollama Modelfile): the same rendering, with a failure as a one-line :class:`so8t.errors.ModelError`.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=32)
def compile_chat_template(template: str) -> Any:
    """The compiled ``jinja2.Template`` for a template's source (cached; syntax errors are not).

    Raises:
        jinja2.TemplateError: the template does not compile.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env.from_string(template)


def render_chat_template(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "",
                         add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with a chat template.

    Raises:
        jinja2.TemplateError: the template does not compile, raises, or breaks the sandbox.
    """
    return compile_chat_template(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                                  add_generation_prompt=add_generation_prompt)


def render_chat(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True, advice: str = "") -> str:
    """Render ``messages`` with a chat template (see :func:`render_chat_template`).

    Args:
        template: The jinja source (``tokenizer.chat_template``, e.g. from a GGUF's metadata).
        messages: Chat messages.
        bos_token: Text of the BOS token (templates may print it).
        eos_token: Text of the EOS token.
        add_generation_prompt: End with the assistant's turn opened.
        advice: Appended to the error message (what the user can do instead).

    Raises:
        ModelError: The template does not compile, raises, or breaks the sandbox.
    """
    from jinja2 import TemplateError

    from so8t.errors import ModelError

    try:
        return render_chat_template(template, messages, bos_token=bos_token, eos_token=eos_token,
                                    add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise ModelError(f"the chat template failed to render ({e}){advice}") from None
