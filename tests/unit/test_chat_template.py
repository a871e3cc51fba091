"""so8t.chat_template: renders as an independently built jinja2 sandbox does, compiles each template once."""

from __future__ import annotations

import jinja2
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from so8t.chat_template import compile_chat_template, render_chat, render_chat_template
from so8t.errors import ModelError

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
         "[INST] {{ m['content'] }} [/INST]{{ eos_token }}\n{% endfor %}")


def _independent(template: str, **kw) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    return env.from_string(template).render(**kw)


@pytest.mark.parametrize("template", [CHATML, LLAMA])
@pytest.mark.parametrize("gen", [True, False])
def test_renders_like_a_fresh_sandbox(template, gen):
    msgs = [{"role": "system", "content": "policy"}, {"role": "user", "content": "判定して: rm -rf /"}]
    got = render_chat_template(template, msgs, bos_token="<s>", eos_token="</s>", add_generation_prompt=gen)
    assert got == _independent(template, messages=msgs, bos_token="<s>", eos_token="</s>", add_generation_prompt=gen)


def test_each_template_is_compiled_once():
    template = CHATML + "{# unique to this test #}"
    before = compile_chat_template.cache_info()
    for i in range(5):
        render_chat_template(template, [{"role": "user", "content": str(i)}])
    after = compile_chat_template.cache_info()
    assert after.misses - before.misses == 1 and after.hits - before.hits == 4


def test_errors_are_raised_every_time_never_cached():
    for _ in range(2):
        with pytest.raises(jinja2.TemplateSyntaxError):
            render_chat_template("{% for m in messages %}", [])
        with pytest.raises(jinja2.TemplateError, match="no system"):
            render_chat_template("{{ raise_exception('no system') }}", [])
        with pytest.raises(jinja2.exceptions.SecurityError):
            render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", [{"role": "user", "content": "x"}])


def test_strftime_now_is_available():
    assert render_chat_template("{{ strftime_now('%Y') }}", []).isdigit()


def test_render_chat_is_the_library_renderer():
    """The one renderer of scoring, decide, A/B generation, `so8t run` and the Modelfile: same text, one-line errors."""
    msgs = [{"role": "user", "content": "x"}]
    for gen in (True, False):
        assert render_chat(LLAMA, msgs, bos_token="<s>", eos_token="</s>", add_generation_prompt=gen) == \
            _independent(LLAMA, messages=msgs, bos_token="<s>", eos_token="</s>", add_generation_prompt=gen)
    with pytest.raises(ModelError, match=r"^the chat template failed to render \(no system\)$"):
        render_chat("{{ raise_exception('no system') }}", [])
    with pytest.raises(ModelError, match=r"failed to render \(.*unsafe.*\); pass --raw$"):
        render_chat("{{ messages.__class__.__mro__[1].__subclasses__() }}", msgs, advice="; pass --raw")
    with pytest.raises(ModelError, match="failed to render"):
        render_chat("{% for m in messages %}", [])
    from so8t.ab import perf as abperf
    from so8t.serving import inference
    from so8t.calibrate import scoring

    assert scoring.render_chat is render_chat and inference.render_chat is render_chat and abperf.render_chat is render_chat
