"""Model backends behind one seam: ``generate(system, user, json_schema, max_tokens)``.

* :class:`LlamaCppBackend`: a GGUF on the CPU through llama-cpp-python, the
  development default and CPU fallback. JSON-schema-constrained decoding (a
  GBNF grammar built from the schema), greedy, seeded. The fixed system
  prompt's KV state is kept: after the first request with a given system
  prompt its evaluated state is saved, and later requests start from it.
* :class:`~appliance.agent.hailo.HailoBackend`: the Hailo-10H through HailoRT's GenAI API
  (``hailo_platform.genai.LLM``), imported only here, only when used. No
  constrained decoding there: the prompt is rendered from the manifest's
  template, the answer parsed and validated, and one bounded repair prompt
  quotes the validation errors back.
* :class:`OllamaBackend`: the Ollama-compatible HTTP API of ``hailo-ollama``,
  on loopback only; validated and repaired the same way.

Every backend loads a model only after :func:`appliance.agent.models.verify`
(or, for Ollama, after the manifest records the model's hash), and reports
the model id and sha256 that go into every plan result.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from appliance.agent import templates
from appliance.agent.errors import ModelError
from appliance.agent.greedy import GreedyGrammar
from appliance.agent.jsonout import NoJson, extract_json, validate
from appliance.agent.models import Manifest, require_sha256, verify
from appliance.agent.threads import ThreadGovernor


@dataclass(frozen=True)
class Generation:
    """One answer. ``text`` is JSON that conforms to the schema asked for, or
    an answer its :class:`AnswerForm` accepts."""

    text: str
    tokens: int  # generated tokens (Hailo: the context's size after the answer)
    seconds: float
    cached_prefix: bool  # the system prompt's state came from the cache
    repaired: bool = False  # the first answer was invalid; the repair prompt's was not
    prompt_tokens: int = 0
    # Each generated piece of text with the model's log-probability of it
    # (llama.cpp only: the unconstrained distribution, before the grammar).
    logprobs: tuple[tuple[str, float], ...] = ()


class AnswerForm(Protocol):
    """An answer that is not JSON (the planner's compact plans): a GBNF
    grammar for a backend that constrains decoding, a check for those that
    validate and repair, and when a streamed answer should stop early."""

    @property
    def gbnf(self) -> str: ...

    def problems(self, text: str) -> list[str]:
        """What is wrong with a whole answer (empty: nothing)."""
        ...

    def stop(self, text: str) -> bool:
        """True when the answer so far should end here (e.g. a repeated step)."""
        ...


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
        form: AnswerForm | None = None,
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
    logprobs: tuple[tuple[str, float], ...] = ()


def checked(
    raw: Callable[[list[dict[str, str]], dict[str, Any] | None], Raw],
    system: str,
    user: str,
    json_schema: dict[str, Any] | None,
    examples: Sequence[tuple[str, str]] = (),
    form: AnswerForm | None = None,
) -> Generation:
    """Generate, parse, validate; one repair attempt with the errors quoted."""
    start = time.perf_counter()
    messages = templates.chat(system, user, examples)
    first = raw(messages, json_schema)
    if json_schema is None and form is None:
        return Generation(
            first.text, first.tokens, time.perf_counter() - start, first.cached_prefix
        )
    errors = _problems(first.text, json_schema, form)
    if not errors:
        return _done(first, start, repaired=False, form=form)
    shown = "; ".join(errors[:5])
    retry = [
        *messages,
        {"role": "assistant", "content": first.text[:2000]},
        {"role": "user", "content": REPAIR_PROMPT.format(errors=shown)},
    ]
    second = raw(retry, json_schema)
    again = _problems(second.text, json_schema, form)
    if again:
        shape = "a plan" if form is not None else "valid JSON for the schema"
        raise ModelError(
            f"the model's answer is not {shape}, even after one repair "
            f"attempt: {'; '.join(again[:3])}"
        )
    second.tokens += first.tokens
    second.cached_prefix = first.cached_prefix
    return _done(second, start, repaired=True, form=form)


def _problems(text: str, schema: dict[str, Any] | None, form: AnswerForm | None) -> list[str]:
    if form is not None:
        return form.problems(text)
    try:
        value = extract_json(text)
    except NoJson as e:
        return [str(e)]
    return validate(value, schema or {})


def _done(raw: Raw, start: float, *, repaired: bool, form: AnswerForm | None) -> Generation:
    if form is not None:
        text = raw.text.strip()
    else:
        text = json.dumps(extract_json(raw.text), ensure_ascii=False)
    return Generation(
        text=text,
        tokens=raw.tokens,
        seconds=time.perf_counter() - start,
        cached_prefix=raw.cached_prefix,
        repaired=repaired,
        prompt_tokens=raw.prompt_tokens,
        logprobs=raw.logprobs,
    )


def strip_stops(text: str, stops: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


# ---------------------------------------------------------------- llama.cpp


def _governor(manifest: Manifest, n_threads: int | None) -> ThreadGovernor:
    """Every core while the machine is otherwise idle, half while something
    else runs (:mod:`appliance.agent.threads`); a number given here or as the
    manifest's ``options.threads`` is used as it is, for everything."""
    configured = n_threads or manifest.options.get("threads")
    if isinstance(configured, int) and configured > 0:
        return ThreadGovernor(configured, configured)
    return ThreadGovernor(os.cpu_count() or 1)


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
        self.governor = _governor(manifest, n_threads)
        self._n_threads = self.governor.full
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=manifest.context_tokens,
                seed=self.seed,
                n_threads=self.governor.full,
                n_threads_batch=self.governor.full,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"llama.cpp could not load {path}: {e}") from None
        # Saved states of evaluated system prompts, by their tokens: the plan
        # and the extract prompts alternate, and each must not evict the other.
        self._states: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # one generation at a time per model
        self._form: AnswerForm | None = None

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
        self._use_threads(self.governor.threads())
        cached = False
        keep = 0  # tokens of the context to keep: the fixed prefix's
        if self.prefix_cache:
            # The fixed part: the system prompt and the example turns.
            fixed = messages[: self._fixed]
            head = self.tokens(
                templates.segments(self.manifest, fixed, add_generation_prompt=False)
            )
            if head and prompt[: len(head)] == head and len(head) < len(prompt):
                cached = self._start_from_prefix(head)
                keep = len(head)
        else:
            self._llm.reset()
        form = self._form
        if form is not None:
            grammar = self._grammar_from(form.gbnf)
        elif schema is not None:
            grammar = self._grammar(schema)
        else:
            grammar = None
        max_tokens = min(self._max_tokens, self.context_tokens - len(prompt))
        text, pieces_lp = self._complete(prompt, grammar, max_tokens, form, keep)
        return Raw(text, len(pieces_lp), cached, len(prompt), tuple(pieces_lp))

    def _grammar_from(self, gbnf: str) -> Any:
        grammar = self._grammars.get(gbnf)
        if grammar is None:
            try:
                grammar = self._llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)
            except Exception as e:  # noqa: BLE001 - the parser raises bare exceptions
                raise ModelError(f"cannot build the answer grammar: {e}") from None
            self._grammars[gbnf] = grammar
            while len(self._grammars) > 8:
                self._grammars.popitem(last=False)
        return grammar

    def _complete(
        self,
        prompt: list[int],
        grammar: Any,
        max_tokens: int,
        form: AnswerForm | None,
        keep: int = 0,
    ) -> tuple[str, list[tuple[str, float]]]:
        """Greedy generation token by token: stops at an end-of-generation
        token, at ``max_tokens``, or where ``form.stop`` says (a repeated
        step); records each token's log-probability under the model's own,
        unconstrained distribution (the logits before the grammar)."""
        llm = self._llm
        vocab = llm._model.vocab
        # Keep the evaluated fixed prefix (``keep`` tokens: _start_from_prefix
        # made the context begin with them) and evaluate the rest, at least
        # one token for logits. Never more than the prefix, even when the
        # last request's words began the same way: evaluated in other batches
        # their state differs in the last bits, and a plan must not depend on
        # what came before.
        llm.n_tokens = min(keep, len(prompt) - 1)
        llm.eval(prompt[llm.n_tokens :])
        chooser = GreedyGrammar(self._llama_cpp, llm, grammar)
        out = bytearray()
        text = ""
        pieces: list[tuple[str, float]] = []
        try:
            while len(pieces) < max_tokens:
                token, logprob = chooser.next()
                if token is None or self._llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                piece = llm.detokenize([token])
                out += piece
                # A character may span tokens: each piece is what the text grew
                # by once its bytes decode, so the pieces join to the text.
                decoded = out.decode("utf-8", "ignore")
                pieces.append((decoded[len(text) :], logprob))
                text = decoded
                if form is not None and b"\n" in piece and form.stop(text):
                    break
                started = time.perf_counter()
                llm.eval([token])
                took = time.perf_counter() - started
                self._use_threads(self.governor.token(self._n_threads, took))
        finally:
            chooser.close()
        return out.decode("utf-8", "replace"), pieces

    def _use_threads(self, n: int) -> None:
        """Compute on ``n`` threads from the next evaluation on (the answer
        does not depend on it)."""
        if n != self._n_threads:
            self._llama_cpp.llama_set_n_threads(self._llm._ctx.ctx, n, n)
            self._n_threads = n

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
            self._fixed = 1 + 2 * len(examples)
            self._form = form
            return checked(self._raw, system, user, json_schema, examples, form)

    def close(self) -> None:
        # Gone from the backend once closed (and absent if the load failed).
        llm = self.__dict__.pop("_llm", None)
        self._states.clear()
        if llm is not None:
            llm.close()


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
        form: AnswerForm | None = None,
    ) -> Generation:
        with self._lock:
            self._max_tokens = max_tokens
            return checked(self._raw, system, user, json_schema, examples, form)

    def close(self) -> None:
        self._http.close()


def make_backend(manifest: Manifest) -> Backend:
    """The backend a manifest names, loaded and verified."""
    if manifest.backend == "llama_cpp":
        return LlamaCppBackend(manifest)
    if manifest.backend == "hailo":
        from appliance.agent.hailo import HailoBackend

        return HailoBackend(manifest)
    return OllamaBackend(manifest)
