"""Chat templates: turn (system, user, ...) messages into the one prompt string
a model was trained on.

llama.cpp and HailoRT's ``generate_all`` both take a raw prompt here: the
agent renders it itself from the manifest's template, so both backends see
exactly the same text and the rendering is tested without a device.

Untrusted text (the request, file names, document contents) must not be able
to close its own turn and open a forged system or assistant turn by writing a
model's control tokens (``<|im_end|>``, ``<|start_header_id|>``,
``<｜User｜>``...). :func:`defang` breaks every such marker before rendering,
and the llama.cpp backend additionally tokenizes only the template's own
markers as special tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.agent.errors import ModelError
from appliance.agent.models import Manifest

NAMED: dict[str, str] = {
    # ChatML: SmolLM2, Qwen2, Qwen2.5 (their templates render exactly this
    # when a system message is given and no tools are).
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # Qwen3 with thinking switched off: an empty think block opens the answer.
    "qwen3-nothink": (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}"
        "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}"
    ),
    "deepseek-r1": (
        "{{ bos_token }}{% for m in messages if m.role == 'system' %}{{ m.content }}{% endfor %}"
        "{% for m in messages if m.role != 'system' %}"
        "{% if m.role == 'user' %}<｜User｜>{{ m.content }}"
        "{% else %}<｜Assistant｜>{{ m.content }}<｜end▁of▁sentence｜>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
    ),
}

# Control-token shapes of the supported families: <|...|> and the fullwidth
# <｜...｜> of DeepSeek.
_MARKER = re.compile(r"<\|[^<>|\n]{0,64}\|>|<｜[^<>｜\n]{0,64}｜>")


def defang(text: str) -> str:
    """Break anything in untrusted text that looks like a control token."""
    return _MARKER.sub(lambda m: m.group(0).replace("|", "¦").replace("｜", "¦"), text)


def _raise(message: str) -> None:
    raise TemplateError(message)


_ENV = ImmutableSandboxedEnvironment(keep_trailing_newline=True)
_ENV.globals["raise_exception"] = _raise


def template_source(manifest: Manifest) -> str:
    return NAMED.get(manifest.chat_template, manifest.chat_template)


_SENTINEL = re.compile(r"\x00(\d+)\x00")


def segments(
    manifest: Manifest,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> list[tuple[str, bool]]:
    """The rendered prompt as pieces: ``(text, True)`` written by the template
    (its control tokens are meant), ``(text, False)`` a message's content
    (defanged, and never to be read as control tokens)."""
    placeholders = [{"role": m["role"], "content": f"\x00{i}\x00"} for i, m in enumerate(messages)]
    try:
        template = _ENV.from_string(template_source(manifest))
        skeleton = template.render(
            messages=placeholders,
            add_generation_prompt=add_generation_prompt,
            bos_token=manifest.bos_token,
            eos_token=manifest.eos_token,
        )
    except TemplateError as e:
        raise ModelError(f"the chat template of {manifest.name} failed: {e}") from None
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in _SENTINEL.finditer(skeleton):
        if m.start() > pos:
            out.append((skeleton[pos : m.start()], True))
        out.append((defang(messages[int(m.group(1))]["content"]), False))
        pos = m.end()
    if pos < len(skeleton):
        out.append((skeleton[pos:], True))
    return out


def render(
    manifest: Manifest,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` (role/content) with the manifest's template. Every
    content is defanged: the template alone writes control tokens."""
    return "".join(
        t for t, _ in segments(manifest, messages, add_generation_prompt=add_generation_prompt)
    )


def chat(system: str, user: str, examples: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """System message, example turns (user, assistant), then the request."""
    messages = [{"role": "system", "content": system}]
    for asked, answered in examples:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    messages.append({"role": "user", "content": user})
    return messages


def render_chat(manifest: Manifest, system: str, user: str) -> str:
    return render(manifest, chat(system, user))
