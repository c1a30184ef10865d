"""Model backends behind one seam: ``generate(system, user, json_schema, max_tokens)``.

* :class:`LlamaCppBackend`: a GGUF on the CPU through llama-cpp-python, the
  development default and CPU fallback. JSON-schema-constrained decoding (a
  GBNF grammar built from the schema), greedy, seeded. The fixed system
  prompt's KV state is kept: after the first request with a given system
  prompt its evaluated state is saved, and later requests start from it.
* :class:`HailoBackend`: the Hailo-10H through HailoRT's GenAI API
  (``hailo_platform.genai.LLM``), imported only here, only when used. No
  constrained decoding there: the prompt is rendered from the manifest's
  template, the answer parsed and validated, and one bounded repair prompt
  quotes the validation errors back.
* :class:`OllamaBackend`: the Ollama-compatible HTTP API of ``hailo-ollama``,
  on loopback only; validated and repaired the same way.

Every backend loads a model only after :func:`appliance.agent.models.verify`
(or, for Ollama, after the manifest records the model's hash), and reports
the model id and sha256 that go into every plan result. What they share
(the answer, the seam, checking and repairing an answer) is in
``appliance.agent.answers``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from appliance.agent import templates
from appliance.agent.answers import Backend, Generation, Raw, checked, strip_stops
from appliance.agent.errors import ModelError
from appliance.agent.models import Manifest, require_sha256, verify

# ---------------------------------------------------------------- llama.cpp


def _threads(manifest: Manifest) -> int:
    """Generation threads: the manifest's ``options.threads``, else half the
    cores. llama.cpp's threads spin while they wait for each other, so taking
    every core on a box that also runs the broker makes a plan many times
    slower whenever anything else runs (measured: 100 s instead of 3 s)."""
    configured = manifest.options.get("threads")
    if isinstance(configured, int) and configured > 0:
        return configured
    return max(1, (os.cpu_count() or 2) // 2)


class LlamaCppBackend:
    """A GGUF model on the CPU; constrained decoding; system-prompt KV cache."""

    def __init__(
        self, manifest: Manifest, *, n_threads: int | None = None, prefix_cache: bool = True
    ):
        if manifest.backend != "llama_cpp":
            raise ModelError(f"{manifest.name} is not a llama.cpp model")
        path = verify(manifest)
        try:
            import llama_cpp
        except ImportError as e:
            raise ModelError(f"llama-cpp-python is not installed: {e}") from None
        self._llama_cpp = llama_cpp
        self.manifest = manifest
        self.model_id = manifest.model_id
        self.model_sha256 = manifest.sha256
        self.context_tokens = manifest.context_tokens
        self.seed = int(manifest.options.get("seed", 7))
        self.prefix_cache = prefix_cache
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=manifest.context_tokens,
                seed=self.seed,
                n_threads=n_threads or _threads(manifest),
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"llama.cpp could not load {path}: {e}") from None
        # Saved states of evaluated system prompts, by their tokens: the plan
        # and the extract prompts alternate, and each must not evict the other.
        self._states: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # one generation at a time per model

    def tokens(self, pieces: list[tuple[str, bool]]) -> list[int]:
        """Tokenize a rendered prompt: the template's own text may hold control
        tokens, message contents never do (they are tokenized as plain text)."""
        out: list[int] = []
        for text, trusted in pieces:
            if text:
                out.extend(self._llm.tokenize(text.encode(), add_bos=False, special=trusted))
        return out

    def _grammar(self, schema: dict[str, Any]) -> Any:
        # Not sort_keys: the grammar writes properties in the schema's order,
        # and the planner puts "verb" first on purpose.
        key = json.dumps(schema)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                grammar = self._llama_cpp.LlamaGrammar.from_json_schema(key, verbose=False)
            except Exception as e:  # noqa: BLE001 - the converter raises bare exceptions
                raise ModelError(f"cannot build a grammar from the schema: {e}") from None
            self._grammars[key] = grammar
            while len(self._grammars) > 8:
                self._grammars.popitem(last=False)
        return grammar

    def _start_from_prefix(self, prefix: list[int]) -> bool:
        """Make the context begin with ``prefix`` evaluated; True when that
        came from the cache (in the context already, or a saved state)."""
        llm = self._llm
        n = len(prefix)
        if llm.n_tokens >= n and list(llm.input_ids[:n]) == prefix:
            return True
        key = tuple(prefix)
        state = self._states.get(key)
        if state is not None:
            llm.load_state(state)
            self._states.move_to_end(key)
            return True
        llm.reset()
        llm.eval(prefix)
        self._states[key] = llm.save_state()
        while len(self._states) > 4:
            self._states.popitem(last=False)
        return False

    def _raw(self, messages: list[dict[str, str]], schema: dict[str, Any] | None) -> Raw:
        pieces = templates.segments(self.manifest, messages)
        prompt = self.tokens(pieces)
        if len(prompt) >= self.context_tokens:
            raise ModelError(
                f"the prompt is {len(prompt)} tokens, over the model's {self.context_tokens}"
            )
        cached = False
        if self.prefix_cache:
            # The fixed part: the system prompt and the example turns.
            fixed = messages[: self._fixed]
            head = self.tokens(
                templates.segments(self.manifest, fixed, add_generation_prompt=False)
            )
            if head and prompt[: len(head)] == head and len(head) < len(prompt):
                cached = self._start_from_prefix(head)
        else:
            self._llm.reset()
        max_tokens = min(self._max_tokens, self.context_tokens - len(prompt))
        out = self._llm.create_completion(
            prompt=prompt,
            grammar=self._grammar(schema) if schema is not None else None,
            temperature=0.0,
            max_tokens=max_tokens,
            seed=self.seed,
            stop=list(self.manifest.stop) or None,
        )
        assert isinstance(out, dict)  # not streamed: one response
        text = out["choices"][0]["text"]
        return Raw(text, int(out["usage"]["completion_tokens"]), cached, len(prompt))

    def generate(
        self,
        system: str,
        user: str,
        *,
        json_schema: dict[str, Any] | None,
        max_tokens: int,
        examples: Sequence[tuple[str, str]] = (),
    ) -> Generation:
        with self._lock:
            self._max_tokens = max_tokens
            self._fixed = 1 + 2 * len(examples)
            return checked(self._raw, system, user, json_schema, examples)

    def close(self) -> None:
        # Gone from the backend once closed (and absent if the load failed).
        llm = self.__dict__.pop("_llm", None)
        self._states.clear()
        if llm is not None:
            llm.close()


# ---------------------------------------------------------------- Hailo-10H


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
    ) -> Generation:
        with self._lock:
            self._max_tokens = max_tokens
            self.prompts = []
            return checked(self._raw, system, user, json_schema, examples)

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


# ---------------------------------------------------------------- Ollama (hailo-ollama)

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class OllamaBackend:
    """The Ollama-compatible ``/api/chat`` of hailo-ollama, on loopback only.

    No ``format`` is sent: hailo-ollama declares it a string and never reads
    it, so the answer is constrained by the prompt and checked (and repaired
    once) here, as the Hailo backend does. ``temperature`` 0 is hailo-ollama's
    way of asking for greedy decoding (it sends ``do_sample=False``)."""

    def __init__(self, manifest: Manifest, *, base_url: str | None = None, timeout_s: float = 300):
        if manifest.backend != "ollama" or not manifest.file.startswith("ollama:"):
            raise ModelError(f"{manifest.name} is not an Ollama model (file = 'ollama:NAME:TAG')")
        import httpx

        self.manifest = manifest
        self.model_id = manifest.model_id
        self.model_sha256 = require_sha256(manifest)
        self.context_tokens = manifest.context_tokens
        self.model = manifest.file[len("ollama:") :]
        self.seed = int(manifest.options.get("seed", 7))
        url = base_url or str(manifest.options.get("base_url", "http://127.0.0.1:8000"))
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname not in _LOOPBACK:
            raise ModelError(f"the Ollama backend talks to loopback only, not {url!r}")
        # trust_env=False: no proxy from the environment ever sees a prompt.
        self._http = httpx.Client(base_url=url, timeout=timeout_s, trust_env=False)
        self._httpx = httpx
        self._lock = threading.Lock()
        self._max_tokens = 0

    def _raw(self, messages: list[dict[str, str]], schema: dict[str, Any] | None) -> Raw:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": m["role"], "content": templates.defang(m["content"])} for m in messages
            ],
            "stream": False,
            "options": {"temperature": 0, "seed": self.seed, "num_predict": self._max_tokens},
        }
        try:
            r = self._http.post("/api/chat", json=body)
            r.raise_for_status()
            data = r.json()
            text = data["message"]["content"]
        except (self._httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"the Ollama server at {self._http.base_url} failed: {e}") from None
        return Raw(
            str(text),
            int(data.get("eval_count") or 0),
            False,
            int(data.get("prompt_eval_count") or 0),
        )

    def generate(
        self,
        system: str,
        user: str,
        *,
        json_schema: dict[str, Any] | None,
        max_tokens: int,
        examples: Sequence[tuple[str, str]] = (),
    ) -> Generation:
        with self._lock:
            self._max_tokens = max_tokens
            return checked(self._raw, system, user, json_schema, examples)

    def close(self) -> None:
        self._http.close()


def make_backend(manifest: Manifest) -> Backend:
    """The backend a manifest names, loaded and verified."""
    if manifest.backend == "llama_cpp":
        return LlamaCppBackend(manifest)
    if manifest.backend == "hailo":
        return HailoBackend(manifest)
    return OllamaBackend(manifest)
