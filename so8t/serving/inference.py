"""Inference on a GGUF file: chat-templated, streamed generation and Ollama Modelfiles.

``generate`` renders the chat template stored in the GGUF (``tokenizer.chat_template``) with the
same Jinja semantics as transformers, tokenizes with llama.cpp and streams text pieces.
``build_modelfile`` translates that template into Ollama's Go-template syntax: the Jinja template
is rendered on sentinel conversations and split into per-role prefixes and suffixes, which works
for every per-turn template (ChatML, Phi-3, Llama-3, Zephyr-style role tags); the translation is
then rendered back and must reproduce the Jinja output exactly, otherwise it is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from so8t.chat_template import render_chat
from so8t.llama import open_vocab
from so8t.errors import ConfigError, DataError, ModelError

logger = logging.getLogger(__name__)

#: The runbook's Modelfile parameters (temperature comes from calibration when given).
MODELFILE_DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "num_ctx": 4096}
#: A calibrated temperature is used for sampling only inside this range: the calibration fits the
#: decision logits, and a value at its fitting bound (e.g. 20 for an untrained model) would make
#: generation noise.
SAMPLING_TEMPERATURE_RANGE = (0.1, 2.0)
_RAW_ADVICE = "; pass --raw to send the prompt as is"


@dataclass(frozen=True)
class GgufChatInfo:
    """What inference needs from a GGUF's metadata."""

    path: Path
    architecture: str
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    context_length: int


def read_chat_info(path: str | Path) -> GgufChatInfo:
    """Read architecture, chat template and special tokens from a GGUF's metadata (through llama.cpp).

    Raises:
        ModelError: missing file, not a GGUF, or a file llama.cpp cannot read.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"GGUF file {str(path)!r} does not exist: pass a file made by so8t convert")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{p}: not a readable GGUF file (starts with {magic!r}, not b'GGUF'); pass a file made by so8t convert")
    model = open_vocab(p)
    try:
        meta = model.metadata()
        arch = meta.get("general.architecture", "unknown")

        def text(token: int) -> str:
            return model.token_get_text(token) if 0 <= token < model.n_vocab() else ""

        return GgufChatInfo(
            path=p.resolve(), architecture=arch, chat_template=meta.get("tokenizer.chat_template"),
            bos_token=text(model.token_bos()), eos_token=text(model.token_eos()), add_bos=model.add_bos_token(),
            context_length=int(meta.get(f"{arch}.context_length", 4096)),
        )
    finally:
        model.close()


def build_prompt(info: GgufChatInfo, prompt: str, *, system: str | None = None, raw: bool = False) -> tuple[str, bool]:
    """The text to tokenize, and whether llama.cpp should add BOS itself.

    Raises:
        ModelError: no chat template in the GGUF (and not ``raw``).
    """
    if raw:
        return prompt, True
    if not info.chat_template:
        raise ModelError(f"{info.path.name} has no chat template in its metadata: pass --raw to send the prompt as is")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = render_chat(info.chat_template, messages, bos_token=info.bos_token, eos_token=info.eos_token, advice=_RAW_ADVICE)
    # The template may write BOS itself; llama.cpp must not add a second one.
    return text, not (info.bos_token and text.startswith(info.bos_token))


def generate(gguf: str | Path, prompt: str, *, n_predict: int = 1024, threads: int = 0, temperature: float = 0.7,
             repeat_penalty: float = 1.1, top_k: int = 40, top_p: float = 0.95, seed: int | None = None,
             raw: bool = False, system: str | None = None, n_ctx: int = 0) -> Iterator[str]:
    """Stream the model's answer to ``prompt`` piece by piece (stops at end-of-turn or ``n_predict``).

    Args:
        gguf: The GGUF file.
        prompt: The user's message (or the whole prompt with ``raw``).
        n_predict: Most tokens to generate.
        threads: CPU threads (0: all cores).
        temperature: Sampling temperature; 0 is greedy.
        repeat_penalty: llama.cpp's repetition penalty.
        top_k: Top-k sampling.
        top_p: Nucleus sampling.
        seed: Sampling seed (None: random).
        raw: Send ``prompt`` as is, without the chat template.
        system: Optional system message.
        n_ctx: Context size (0: prompt + n_predict, capped at the model's training context).

    Raises:
        ModelError: unreadable GGUF, no chat template, or a prompt longer than the context.
        ConfigError: bad sampling values.
    """
    from so8t.llama import diagnosed_message, open_llama

    problems = []
    if n_predict < 1:
        problems.append(f"n_predict {n_predict} must be >= 1")
    if temperature < 0:
        problems.append(f"temp {temperature} must be >= 0 (0 is greedy)")
    if repeat_penalty <= 0:
        problems.append(f"repeat_penalty {repeat_penalty} must be > 0 (1.0 disables it)")
    if problems:
        raise ConfigError("; ".join(problems))
    info = read_chat_info(gguf)
    text, add_bos = build_prompt(info, prompt, system=system, raw=raw)
    ids = tokenize(info.path, text, add_bos=add_bos, special=not raw)
    ctx = n_ctx or min(info.context_length, len(ids) + n_predict)
    if len(ids) >= ctx:
        raise ModelError(f"the prompt has {len(ids)} tokens but the context holds {ctx}: shorten the prompt "
                         f"(the model was trained for {info.context_length})")
    # `so8t run --threads 0` means all cores (its documented default), batches on every core.
    llm = open_llama(info.path, ctx, n_threads=threads, default="all", n_batch=min(ctx, 2048), seed=seed,
                     message=diagnosed_message)
    try:
        stream = llm.create_completion(ids, max_tokens=min(n_predict, ctx - len(ids)), temperature=temperature,
                                       repeat_penalty=repeat_penalty, top_k=top_k, top_p=top_p, seed=seed, stream=True)
        for chunk in stream:
            piece = chunk["choices"][0]["text"]
            if piece:
                yield piece
    finally:
        llm.close()


def tokenize(gguf: str | Path, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
    """Token ids of ``text`` by the GGUF's own tokenizer (loads the vocabulary only, no context)."""
    model = open_vocab(Path(gguf))
    try:
        return model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)
    finally:
        model.close()


# ---------------------------------------------------------------- Ollama Modelfile

_S, _U1, _A1, _U2, _BOS = "S0S8TSYSTEM", "S0S8TUSER1", "S0S8TASSISTANT", "S0S8TUSER2", "S0S8TBOS"


@dataclass(frozen=True)
class TemplateTranslation:
    """A chat template as Ollama Go-template pieces."""

    family: str
    template: str
    stops: tuple[str, ...]
    default_system: str | None
    lead: str  # text the Jinja template writes before the first turn (usually BOS)


def template_family(template: str) -> str:
    """A label for a chat template's style, by the markers of its rendered turns."""
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "<|user|>" in template and "<|end|>" in template:
        return "phi3"
    if "<|user|>" in template:
        return "zephyr"
    return "per-turn"


def translate_template(template: str, bos_token: str = "", eos_token: str = "", add_bos: bool = True) -> TemplateTranslation:
    """Translate a per-turn Jinja chat template into an Ollama TEMPLATE over ``.Messages``.

    Raises:
        ModelError: the template is not a per-turn template (names the reason and the fix).
    """
    family = template_family(render_chat(template, [{"role": "user", "content": "x"}], bos_token=bos_token,
                                         eos_token=eos_token, advice=_RAW_ADVICE) if "messages" in template else template)

    def fail(reason: str) -> ModelError:
        return ModelError(f"chat template family {family!r} cannot be translated to an Ollama TEMPLATE ({reason}): "
                          f"known per-turn families are ChatML, Phi-3, Llama-3 and Zephyr-style; write TEMPLATE by hand")

    def r(msgs: list[dict], gen: bool, bos: str = _BOS) -> str:
        # BOS is rendered as a sentinel so that a template starting with a token equal to BOS's text
        # (SmolLM2's BOS is <|im_start|>) is not mistaken for one that writes BOS.
        try:
            return render_chat(template, msgs, bos_token=bos, eos_token=eos_token, add_generation_prompt=gen,
                               advice=_RAW_ADVICE)
        except ModelError as e:
            raise fail(f"it does not render {[m['role'] for m in msgs]}: {e}") from None

    conv = [{"role": "system", "content": _S}, {"role": "user", "content": _U1},
            {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}]
    rendered = [r(conv[:k], False) for k in range(1, 5)]
    for a, b in zip(rendered, rendered[1:]):
        if not b.startswith(a):
            raise fail("adding a turn rewrites earlier turns")
    lead = _BOS if rendered[0].startswith(_BOS) else ""
    segments = [rendered[0][len(lead):]] + [b[len(a):] for a, b in zip(rendered, rendered[1:])]
    parts = []
    for seg, sentinel in zip(segments, (_S, _U1, _A1, _U2)):
        if seg.count(sentinel) != 1:
            raise fail("a turn does not contain its message exactly once")
        pre, post = seg.split(sentinel)
        parts.append((pre, post))
    (pre_s, post_s), (pre_u, post_u), (pre_a, post_a), user2 = parts
    if user2 != (pre_u, post_u):
        raise fail("the first and later user turns are written differently")
    with_gen = r(conv, True)
    if not with_gen.startswith(rendered[-1]):
        raise fail("the generation prompt rewrites earlier turns")
    gen = with_gen[len(rendered[-1]):]
    default_system = _default_system(r([conv[1]], False), lead, (pre_s, post_s), (pre_u, post_u), fail)
    pre_s, post_s, pre_u, post_u, pre_a, post_a, gen = pieces = [
        x.replace(_BOS, bos_token) for x in (pre_s, post_s, pre_u, post_u, pre_a, post_a, gen)]
    if default_system is not None:
        default_system = default_system.replace(_BOS, bos_token)
    lead = lead.replace(_BOS, bos_token)
    if any("{{" in p or "}}" in p for p in pieces):
        raise fail("its literal text contains '{{' or '}}'")
    go = ("{{ range .Messages }}"
          f'{{{{ if eq .Role "system" }}}}{pre_s}{{{{ .Content }}}}{post_s}'
          f'{{{{ else if eq .Role "user" }}}}{pre_u}{{{{ .Content }}}}{post_u}'
          f'{{{{ else if eq .Role "assistant" }}}}{pre_a}{{{{ .Content }}}}{post_a}'
          "{{ end }}{{ end }}" + gen)
    if lead and not add_bos:
        go = lead + go  # the tokenizer will not add BOS, so the template must write it
    stops = tuple(dict.fromkeys(s for s in (post_a.strip(), eos_token) if s))
    translation = TemplateTranslation(family, go, stops, default_system, lead)
    check = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]
    for msgs in (check[:2], check):
        want = r(msgs, True, bos_token)
        got = render_ollama_template(go, msgs)
        if (lead if add_bos else "") + got != want:
            raise fail("its Ollama rendering differs from the Jinja rendering")
    return translation


def _default_system(rendered: str, lead: str, sys_parts: tuple[str, str], user_parts: tuple[str, str], fail) -> str | None:
    """The system message the template inserts when the conversation has none (e.g. SmolLM2's)."""
    user = user_parts[0] + _U1 + user_parts[1]
    if rendered == lead + user:
        return None
    head = lead + sys_parts[0]
    tail = sys_parts[1] + user
    if rendered.startswith(head) and rendered.endswith(tail) and len(rendered) >= len(head) + len(tail):
        return rendered[len(head): len(rendered) - len(tail)]
    raise fail("a conversation without a system message is rendered in an unexpected way")


def render_ollama_template(template: str, messages: list[dict]) -> str:
    """Render the subset of Go-template syntax that :func:`translate_template` emits.

    Supports ``{{ range .Messages }}...{{ end }}`` with ``{{ if eq .Role "x" }}`` /
    ``{{ else if eq .Role "y" }}`` / ``{{ end }}`` and ``{{ .Content }}``; anything else is literal.
    """
    import re

    m = re.fullmatch(r"(?s)(.*?)\{\{ range \.Messages \}\}(.*)\{\{ end \}\}\{\{ end \}\}(.*)", template)
    if not m:
        raise ModelError("not a template made by translate_template")
    before, body, after = m.groups()
    branches = dict(re.findall(r'(?s)\{\{ (?:else )?if eq \.Role "(\w+)" \}\}(.*?)(?=\{\{ else if|\Z)', body))
    out = [before]
    for msg in messages:
        branch = branches.get(msg["role"], "")
        out.append(branch.replace("{{ .Content }}", msg["content"]))
    return "".join(out) + after


def _calibrated_temperature(path: str | Path, gguf: Path) -> float:
    from so8t.calibrate.decision_rule import read_calibration_file

    p = Path(path).expanduser()
    data = read_calibration_file(p)
    t = data.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 100:
        raise DataError(f"{p}: top-level 'temperature' is {t!r}, must be a number in (0, 100); pass calibration_results.json")
    scored = data.get("model_sha256")
    if scored:
        from so8t.base_models import sha256_file

        if scored != sha256_file(gguf):
            logger.warning("%s was calibrated on another model file (sha256 %s...), not %s", p.name, scored[:12], gguf.name)
    return float(t)


def build_modelfile(gguf: str | Path, *, calibration: str | Path | None = None, modelfile_dir: str | Path | None = None) -> str:
    """The text of an Ollama Modelfile for a GGUF file.

    Args:
        gguf: The GGUF file (its chat template and special tokens come from its metadata).
        calibration: ``calibration_results.json``; its top-level ``temperature`` becomes PARAMETER
            temperature (default 0.7).
        modelfile_dir: Where the Modelfile will live; FROM is relative to it when the GGUF is inside.

    Raises:
        ModelError: unreadable GGUF, no chat template, or an untranslatable template.
        DataError: unreadable calibration file or bad temperature.
    """
    info = read_chat_info(gguf)
    if not info.chat_template:
        raise ModelError(f"{info.path.name} has no chat template in its metadata: the Modelfile needs one to write TEMPLATE")
    tr = translate_template(info.chat_template, info.bos_token, info.eos_token, info.add_bos)
    params = dict(MODELFILE_DEFAULTS)
    notes = []
    if calibration is not None:
        t = _calibrated_temperature(calibration, info.path)
        lo, hi = SAMPLING_TEMPERATURE_RANGE
        if lo <= t <= hi:
            params["temperature"] = t
        else:
            logger.warning("calibrated temperature %g is outside the sampling range %g..%g: keeping %g", t, lo, hi, params["temperature"])
            notes.append(f"# calibrated temperature {t:g} is outside the sampling range {lo:g}..{hi:g}: "
                         f"PARAMETER temperature keeps {params['temperature']:g}")
    src = str(info.path)
    if modelfile_dir is not None:
        base = Path(modelfile_dir).expanduser().resolve()
        if info.path.is_relative_to(base):  # Ollama resolves FROM relative to the Modelfile
            src = "./" + info.path.relative_to(base).as_posix()
    lines = [f"# Ollama Modelfile for {info.path.name} (written by so8t modelfile; chat template: {tr.family})",
             *notes, f"FROM {src}", "", f'TEMPLATE """{tr.template}"""', ""]
    if tr.default_system:
        lines += [f'SYSTEM """{tr.default_system}"""', ""]
    lines += [f"PARAMETER {k} {v:g}" if isinstance(v, float) else f"PARAMETER {k} {v}" for k, v in params.items()]
    lines += [f'PARAMETER stop "{s}"' for s in tr.stops]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf: str | Path, output: str | Path = "Modelfile", *, calibration: str | Path | None = None) -> Path:
    """Write :func:`build_modelfile`'s text to ``output`` (nothing is written on error)."""
    from so8t.outpaths import check_output_file

    out = check_output_file(output, "--output")
    text = build_modelfile(gguf, calibration=calibration, modelfile_dir=out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    from so8t.atomic import atomic_write_text

    atomic_write_text(out, text)
    return out
