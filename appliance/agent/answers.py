"""What every model backend shares: one answer (:class:`Generation`), the
seam (:class:`Backend`), and checking an answer against the plan schema with
one bounded repair prompt that quotes the validation errors back
(:func:`checked`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.agent import templates
from appliance.agent.errors import ModelError
from appliance.agent.jsonout import NoJson, extract_json, validate


@dataclass(frozen=True)
class Generation:
    """One answer. ``text`` is JSON that conforms to the schema asked for."""

    text: str
    tokens: int  # generated tokens (Hailo: the context's size after the answer)
    seconds: float
    cached_prefix: bool  # the system prompt's state came from the cache
    repaired: bool = False  # the first answer was invalid; the repair prompt's was not
    prompt_tokens: int = 0


class Backend(Protocol):
    model_id: str
    model_sha256: str
    context_tokens: int

    def generate(
        self,
        system: str,
        user: str,
        *,
        json_schema: dict[str, Any] | None,
        max_tokens: int,
        examples: Sequence[tuple[str, str]] = (),
    ) -> Generation: ...

    def close(self) -> None: ...


REPAIR_PROMPT = (
    "Your answer was not valid: {errors}\n"
    "Answer again with only the corrected JSON object, nothing else."
)


@dataclass
class Raw:
    text: str
    tokens: int
    cached_prefix: bool
    prompt_tokens: int = 0


def checked(
    raw: Callable[[list[dict[str, str]], dict[str, Any] | None], Raw],
    system: str,
    user: str,
    json_schema: dict[str, Any] | None,
    examples: Sequence[tuple[str, str]] = (),
) -> Generation:
    """Generate, parse, validate; one repair attempt with the errors quoted."""
    start = time.perf_counter()
    messages = templates.chat(system, user, examples)
    first = raw(messages, json_schema)
    if json_schema is None:
        return Generation(
            first.text, first.tokens, time.perf_counter() - start, first.cached_prefix
        )
    errors = _problems(first.text, json_schema)
    if not errors:
        return _done(first, first.text, start, repaired=False)
    shown = "; ".join(errors[:5])
    retry = [
        *messages,
        {"role": "assistant", "content": first.text[:2000]},
        {"role": "user", "content": REPAIR_PROMPT.format(errors=shown)},
    ]
    second = raw(retry, json_schema)
    again = _problems(second.text, json_schema)
    if again:
        raise ModelError(
            "the model's answer is not valid JSON for the plan schema, even after one repair "
            f"attempt: {'; '.join(again[:3])}"
        )
    second.tokens += first.tokens
    second.cached_prefix = first.cached_prefix
    return _done(second, second.text, start, repaired=True)


def _problems(text: str, schema: dict[str, Any]) -> list[str]:
    try:
        value = extract_json(text)
    except NoJson as e:
        return [str(e)]
    return validate(value, schema)


def _done(raw: Raw, text: str, start: float, *, repaired: bool) -> Generation:
    value = extract_json(text)
    return Generation(
        text=json.dumps(value, ensure_ascii=False),
        tokens=raw.tokens,
        seconds=time.perf_counter() - start,
        cached_prefix=raw.cached_prefix,
        repaired=repaired,
        prompt_tokens=raw.prompt_tokens,
    )


def strip_stops(text: str, stops: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]
