"""The Hailo-10H backend: HailoRT's GenAI API (``hailo_platform.genai.LLM``),
imported only here, only when used. The one seam to the NPU: everything
else in the agent is the same on the CPU and on the box."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from appliance.agent import templates
from appliance.agent.backends import AnswerForm, Generation, Raw, checked, strip_stops
from appliance.agent.errors import ModelError
from appliance.agent.models import Manifest, require_sha256, verify


class GenAiLLM(Protocol):
    """What the agent uses of ``hailo_platform.genai.LLM`` (HailoRT 5.1.1,
    ``hailo_platform/pyhailort/pyhailort.py``). Tests stand a recorded model in
    its place; on the box it is the real class."""

    def generate_all(
        self,
        prompt: str,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        frequency_penalty: float | None = None,
        max_generated_tokens: int | None = None,
        do_sample: bool | None = None,
        seed: int | None = None,
    ) -> str: ...

    def generate(
        self,
        prompt: str,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        frequency_penalty: float | None = None,
        max_generated_tokens: int | None = None,
        do_sample: bool | None = None,
        seed: int | None = None,
    ) -> AbstractContextManager[Iterator[str]]:
        """The token stream (``LLMGeneratorCompletion``): a context manager
        whose iteration yields each token's text."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def max_context_capacity(self) -> int: ...

    def get_context_usage_size(self) -> int: ...

    def clear_context(self) -> None: ...

    def release(self) -> None: ...


class _VDevice(Protocol):
    def release(self) -> None: ...


def _hailo_runtime() -> tuple[Callable[[], _VDevice], Callable[[_VDevice, str], GenAiLLM]]:
    try:
        from hailo_platform import VDevice
        from hailo_platform.genai import LLM
    except ImportError as e:
        raise ModelError(
            "the Hailo backend needs HailoRT's Python package (hailo_platform with genai), "
            "which comes from Hailo's Debian packages on the Raspberry Pi, not from PyPI: "
            f"{e}"
        ) from None
    return VDevice, LLM


def _sampling(manifest: Manifest) -> dict[str, Any]:
    """HailoRT's generation keywords for the manifest's options: greedy
    (``do_sample=False``) unless ``options.temperature`` asks for sampling.
    HailoRT refuses a temperature of 0 (it must be above 0), so greedy never
    sends one."""
    seed = int(manifest.options.get("seed", 7))
    temperature = manifest.options.get("temperature")
    if temperature is None:
        return {"do_sample": False, "seed": seed}
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ModelError(f"{manifest.name}: options.temperature must be a number")
    if temperature <= 0:
        raise ModelError(
            f"{manifest.name}: HailoRT refuses temperature {temperature}; leave "
            "options.temperature out for greedy decoding"
        )
    return {"do_sample": True, "temperature": float(temperature), "seed": seed}


class HailoBackend:
    """A HEF on the Hailo-10H through ``hailo_platform.genai.LLM``.

    Greedy by default (``do_sample=False``). Before each generation the
    rendered prompt is counted with the model's own tokenizer: HailoRT drops
    the oldest tokens without a word when the context is full, so the answer's
    budget is cut to what fits and a prompt that leaves no room is refused.
    ``llm`` replaces the device for replaying recorded outputs in tests.
    """

    def __init__(self, manifest: Manifest, *, llm: GenAiLLM | None = None):
        if manifest.backend != "hailo":
            raise ModelError(f"{manifest.name} is not a Hailo model")
        self.manifest = manifest
        self.model_id = manifest.model_id
        self.model_sha256 = require_sha256(manifest)
        self.context_tokens = manifest.context_tokens
        self.sampling = _sampling(manifest)
        self._vdevice: _VDevice | None = None
        if llm is None:
            path = verify(manifest)
            make_vdevice, make_llm = _hailo_runtime()
            try:
                vdevice = self._vdevice = make_vdevice()
                llm = make_llm(vdevice, str(path))
            except Exception as e:  # noqa: BLE001 - HailoRT raises its own exception types
                self._release_device()
                raise ModelError(f"HailoRT could not load {path}: {e}") from None
        self._llm: GenAiLLM | None = llm
        self._lock = threading.Lock()
        self._max_tokens = 0
        self._form: AnswerForm | None = None
        self.prompts: list[str] = []  # the last request's rendered prompts (for tests, debugging)

    def _budget(self, llm: GenAiLLM, prompt: str) -> tuple[int, int]:
        """(prompt tokens, answer budget) with prompt + budget within the context."""
        try:
            used = len(llm.tokenize(prompt))
            capacity = int(llm.max_context_capacity())
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"the Hailo-10H could not count the prompt: {e}") from None
        room = capacity - used
        if room <= 0:
            raise ModelError(
                f"the prompt is {used} tokens, over the model's {capacity}-token context on "
                "the Hailo-10H (HailoRT would silently drop its beginning)"
            )
        return used, min(self._max_tokens, room)

    def _raw(self, messages: list[dict[str, str]], schema: dict[str, Any] | None) -> Raw:
        llm = self._llm
        if llm is None:
            raise ModelError("the Hailo model is closed")
        prompt = templates.render(self.manifest, messages)
        self.prompts.append(prompt)
        # The GenAI LLM keeps a conversation between calls: each request
        # starts from an empty context so one task never sees another's.
        try:
            llm.clear_context()
        except Exception as e:  # noqa: BLE001 - HailoRT raises its own exception types
            raise ModelError(f"the Hailo-10H could not clear its context: {e}") from None
        prompt_tokens, budget = self._budget(llm, prompt)
        try:
            if self._form is not None:
                text = self._streamed(llm, prompt, self._form, budget)
            else:
                text = llm.generate_all(prompt=prompt, max_generated_tokens=budget, **self.sampling)
            used = int(llm.get_context_usage_size())
        except Exception as e:  # noqa: BLE001 - HailoRT raises its own exception types
            raise ModelError(f"the Hailo-10H generation failed: {e}{self._reset(llm)}") from None
        generated = max(0, used - prompt_tokens)
        return Raw(strip_stops(str(text), self.manifest.stop), generated, False, prompt_tokens)

    @staticmethod
    def _reset(llm: GenAiLLM) -> str:
        """After a failed generation: how full the context was, and empty it so
        the next request starts clean. Returns a note for the error message."""
        notes = []
        try:
            notes.append(f"{llm.get_context_usage_size()} tokens were in the context")
        except Exception as e:  # noqa: BLE001
            notes.append(f"the context size is unknown ({e})")
        try:
            llm.clear_context()
            notes.append("it was cleared")
        except Exception as e:  # noqa: BLE001
            notes.append(f"clearing it failed too ({e})")
        return " (" + "; ".join(notes) + ")"

    def generate(
        self,
        system: str,
        user: str,
        *,
        json_schema: dict[str, Any] | None,
        max_tokens: int,
        examples: Sequence[tuple[str, str]] = (),
        form: AnswerForm | None = None,
    ) -> Generation:
        with self._lock:
            self._max_tokens = max_tokens
            self.prompts = []
            self._form = form
            return checked(self._raw, system, user, json_schema, examples, form)

    def _streamed(self, llm: GenAiLLM, prompt: str, form: AnswerForm, budget: int) -> str:
        """The answer from HailoRT's token stream, ended as soon as the form
        says (a repeated step): a looping model costs one step, not minutes."""
        text = ""
        with llm.generate(prompt=prompt, max_generated_tokens=budget, **self.sampling) as stream:
            for token in stream:
                text += str(token)
                if "\n" in str(token) and form.stop(strip_stops(text, self.manifest.stop)):
                    break
        return text

    def _release_device(self) -> None:
        if self._vdevice is not None:
            try:
                self._vdevice.release()
            finally:
                self._vdevice = None

    def close(self) -> None:
        llm, self._llm = self._llm, None
        try:
            if llm is not None:
                llm.release()
        finally:
            self._release_device()
