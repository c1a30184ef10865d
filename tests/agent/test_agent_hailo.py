"""The Hailo-10H and hailo-ollama paths without the device: recorded model
outputs (good, chatty, cut off, escaping, wrong shape, looping) replayed
through the real backend code: template, parsing, validation, the one repair,
the stop on the token stream, the planner."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.agent.backends import OllamaBackend
from appliance.agent.errors import ModelError
from appliance.agent.hailo import HailoBackend
from appliance.agent.models import MODELS_DIR, Manifest, load_manifest
from appliance.agent.planner import Planner
from appliance.intents import Plan
from tests.agent.conftest import LISTING

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


class RecordedLLM:
    """Stands where ``hailo_platform.genai.LLM`` stands on the Pi and replays
    outputs recorded from Hailo-style models, one per call. Its tokenizer
    counts four characters a token; its context holds ``capacity`` tokens."""

    def __init__(self, *outputs: str, capacity: int = 2048):
        self.outputs = list(outputs)
        self.calls: list[dict[str, Any]] = []
        self.cleared = 0
        self.released = False
        self.capacity = capacity
        self.used = 0

        self.streamed: list[int] = []  # tokens handed out by each streamed call

    def generate_all(self, prompt: str, **kwargs: Any) -> str:
        self.calls.append({"prompt": prompt, **kwargs})
        out = self.outputs.pop(0)
        self.used = len(self.tokenize(prompt)) + len(self.tokenize(out))
        return out

    def tokenize(self, text: str) -> list[int]:
        return list(range((len(text) + 3) // 4))

    def max_context_capacity(self) -> int:
        return self.capacity

    @contextlib.contextmanager
    def generate(self, **kwargs: Any) -> Iterator[Iterator[str]]:
        """The streaming call: the recorded output in word-sized tokens."""
        self.calls.append(kwargs)
        out = self.outputs.pop(0)
        tokens = re.findall(r"\S+\s*|\s+", out)
        self.used = len(self.tokenize(kwargs["prompt"])) + len(self.tokenize(out))
        self.streamed.append(0)

        def stream() -> Iterator[str]:
            for token in tokens:
                self.streamed[-1] += 1
                yield token

        yield stream()

    def clear_context(self) -> None:
        self.cleared += 1
        self.used = 0

    def get_context_usage_size(self) -> int:
        return self.used

    def release(self) -> None:
        self.released = True


def hailo_manifest(name: str = "hailo-qwen2.5-1.5b-instruct.toml") -> Manifest:
    return load_manifest(MODELS_DIR / name)


def planner_on(*outputs: str, manifest: Manifest | None = None) -> tuple[Planner, RecordedLLM]:
    llm = RecordedLLM(*outputs)
    return Planner(HailoBackend(manifest or hailo_manifest(), llm=llm)), llm


def _sorted(*years: str) -> list[dict[str, Any]]:
    names = {"2021": "2021-invoice.pdf", "2022": "2022-receipt.pdf", "2023": "2023-letter.pdf"}
    out: list[dict[str, Any]] = []
    for y in years:
        out.append({"verb": "file.mkdir", "resource": f"share:docs/{y}", "params": {}})
        out.append(
            {
                "verb": "file.move",
                "resource": f"share:docs/Inbox/{names[y]}",
                "params": {"to": f"share:docs/{y}/{names[y]}"},
            }
        )
    return out


def test_good_output_plans_without_repair() -> None:
    planner, llm = planner_on(recorded("qwen_plan_ok.txt"))
    result = planner.plan("sort the PDFs in Inbox by year", LISTING)
    Plan.model_validate({"intents": result.intents})
    assert result.intents == _sorted("2021", "2022", "2023")
    assert result.compact == (
        "plan: Sorting the PDFs in Inbox into year folders.\nsteps: move\n"
        "move docs:Inbox/*.pdf > docs:{year}/"
    )
    assert result.explanation == "Sorting the PDFs in Inbox into year folders."
    assert result.confidence is None  # HailoRT gives no probabilities
    assert not result.repaired and result.model_id == "Qwen2.5-1.5B-Instruct-Hailo10H"
    assert result.model_sha256 == hailo_manifest().sha256
    # One call: rendered ChatML (the raw prompt applies no template), fresh context.
    (call,) = llm.calls
    assert call["prompt"].startswith("<|im_start|>system\nYou plan file actions")
    assert call["prompt"].endswith("<|im_start|>assistant\n")
    assert "REQUEST: sort the PDFs in Inbox by year" in call["prompt"]
    assert "docs:Inbox/2021-invoice.pdf\n" in call["prompt"]
    assert call["max_generated_tokens"] == planner.plan_max_tokens and call["seed"] == 7
    # Greedy: HailoRT's do_sample=False, and no temperature (HailoRT refuses 0).
    assert call["do_sample"] is False and "temperature" not in call
    assert llm.cleared == 1


def test_a_looping_model_is_stopped_on_the_token_stream() -> None:
    """The whole plan over and over, up to the step cap (3-4 minutes at 7
    tokens/s on the NPU): the stream is left at the first repeated step."""
    loop = recorded("qwen_plan_loop.txt")
    planner, llm = planner_on(loop)
    result = planner.plan("sort the PDFs in Inbox by year", LISTING)
    assert result.intents == _sorted("2021", "2022")
    assert result.stopped_at_repeat and not result.repaired
    total = len(re.findall(r"\S+\s*|\s+", loop))
    # Read: the header (8 word tokens, then 13 for the length), the two steps
    # and their first repeat (4 each); of 85 recorded.
    assert llm.streamed == [8 + 13 + 3 * 4] and total == 85


def test_chatty_output_in_a_code_fence_is_read() -> None:
    planner, _ = planner_on(recorded("qwen_plan_prose.txt"))
    assert planner.plan("move the 2021 invoice", LISTING).intents[-1]["params"]["to"] == (
        "share:docs/2021/2021-invoice.pdf"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "qwen_plan_escape.txt",
        "qwen_plan_outside.txt",
        "qwen_plan_truncated.txt",
        "qwen_plan_wrong_shape.txt",
    ],
)
def test_one_repair_with_the_errors_quoted(bad: str) -> None:
    planner, llm = planner_on(recorded(bad), recorded("qwen_plan_ok.txt"))
    result = planner.plan("sort the PDFs", LISTING)
    assert result.repaired and len(llm.calls) == 2 and llm.cleared == 2
    repair = llm.calls[1]["prompt"]
    assert "Your answer was not valid:" in repair
    # The bad answer is shown back as the assistant's turn, the errors as the user's.
    assert repair.count("<|im_start|>assistant\n") == len(planner.examples) + 2


def test_a_small_context_gets_the_short_examples_and_room_for_names() -> None:
    from appliance.agent.prompt import PLAN_EXAMPLES, SHORT_EXAMPLES

    planner, _ = planner_on()  # 2048 tokens: the longer set would leave no room
    assert planner.examples == SHORT_EXAMPLES
    assert len(PLAN_EXAMPLES) > len(SHORT_EXAMPLES)
    assert planner._char_budget("", planner.plan_max_tokens) > 0


@pytest.mark.parametrize("bad", ["qwen_plan_escape.txt", "qwen_plan_outside.txt"])
def test_still_invalid_after_the_repair_fails_the_task(bad: str) -> None:
    planner, llm = planner_on(recorded(bad), recorded(bad))
    with pytest.raises(ModelError, match="even after one repair"):
        planner.plan("delete my ssh keys", LISTING)
    assert len(llm.calls) == 2  # bounded: never a third attempt


def test_deepseek_thinking_is_skipped() -> None:
    m = hailo_manifest("hailo-deepseek-r1-distill-qwen-1.5b.toml")
    planner, llm = planner_on(recorded("deepseek_plan_think.txt"), manifest=m)
    result = planner.plan("delete notes.txt", LISTING)
    assert result.intents == [
        {"verb": "file.delete", "resource": "share:docs/notes.txt", "params": {}}
    ]
    assert llm.calls[0]["prompt"].endswith("<｜Assistant｜><think>\n")


def test_extract_on_recorded_outputs() -> None:
    planner, llm = planner_on(recorded("qwen_extract_ok.txt"))
    out = planner.extract("ACME GmbH invoice, 2021", {"year": "integer", "vendor": "string"})
    assert out["values"] == {"year": 2021, "vendor": "ACME GmbH"}
    assert "BEGIN-" in llm.calls[0]["prompt"]
    # A wrong type and a smuggled extra field: repaired, else refused.
    planner, _ = planner_on(recorded("qwen_extract_bad.txt"), recorded("qwen_extract_bad.txt"))
    with pytest.raises(ModelError):
        planner.extract("x", {"year": "integer", "vendor": "string"})


def test_each_request_starts_from_an_empty_context() -> None:
    """HailoRT's LLM keeps a conversation: the backend clears it before every
    request, so what the reader saw for one task never reaches another's plan."""
    planner, llm = planner_on(recorded("qwen_extract_ok.txt"), recorded("qwen_plan_ok.txt"))
    planner.extract(
        "ACME GmbH invoice, 2021, ledger ZX-4471", {"year": "integer", "vendor": "string"}
    )
    assert llm.cleared == 1
    planner.plan("sort the PDFs in Inbox by year", LISTING)
    assert llm.cleared == 2
    assert "ZX-4471" in llm.calls[0]["prompt"] and "ZX-4471" not in llm.calls[1]["prompt"]


def test_close_releases_the_model() -> None:
    llm = RecordedLLM()
    HailoBackend(hailo_manifest(), llm=llm).close()
    assert llm.released


def test_without_hailo_platform_the_error_says_what_is_missing(tmp_path: Path) -> None:
    hef = tmp_path / "model.hef"
    hef.write_bytes(b"not really a HEF")
    m = replace(
        hailo_manifest(), file=str(hef), sha256=hashlib.sha256(hef.read_bytes()).hexdigest()
    )
    with pytest.raises(ModelError, match="hailo_platform.*Debian packages"):
        HailoBackend(m)


def test_a_missing_hef_is_refused_before_any_import() -> None:
    with pytest.raises(ModelError, match="missing"):
        HailoBackend(hailo_manifest())


# ---------------------------------------------------------------- hailo-ollama over HTTP


class _Ollama(BaseHTTPRequestHandler):
    answers: list[str] = []
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, **body})
        out = json.dumps(
            {
                "model": body["model"],
                "message": {"role": "assistant", "content": type(self).answers.pop(0)},
                "done": True,
                "eval_count": 17,
                "prompt_eval_count": 300,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ollama() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ollama)
    _Ollama.seen = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ollama_chat_with_repair(ollama: str) -> None:
    # Ollama's answer carries no end-of-turn marker.
    ok = recorded("qwen_plan_ok.txt").replace("<|im_end|>", "")
    _Ollama.answers = [recorded("qwen_plan_truncated.txt"), ok]
    m = load_manifest(MODELS_DIR / "ollama-qwen2.5-instruct-1.5b.toml")
    backend = OllamaBackend(m, base_url=ollama)
    result = Planner(backend).plan("sort the PDFs", LISTING)
    assert result.repaired and result.tokens == 34 and len(result.intents) == 6
    first = _Ollama.seen[0]
    assert first["path"] == "/api/chat" and first["model"] == "qwen2.5-instruct:1.5b"
    # hailo-ollama declares `format` a string and never reads it: not sent.
    assert first["stream"] is False and "format" not in first
    assert first["options"]["temperature"] == 0  # hailo-ollama: do_sample=False
    assert first["messages"][0]["role"] == "system" and first["messages"][-1]["role"] == "user"
    backend.close()


def test_ollama_down_is_a_model_error() -> None:
    m = load_manifest(MODELS_DIR / "ollama-qwen2.5-instruct-1.5b.toml")
    backend = OllamaBackend(m, base_url="http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(ModelError, match="Ollama server"):
        Planner(backend).plan("list", LISTING)


# ---------------------------------------------------------------- HailoRT's context and sampling


def test_the_answer_budget_fits_the_context() -> None:
    """HailoRT drops the oldest tokens silently when its context is full: the
    prompt is counted first and the answer's budget cut to what is left."""
    planner, llm = planner_on(recorded("qwen_plan_ok.txt"))
    llm.capacity = 1500
    planner.plan("sort the PDFs in Inbox by year", LISTING)
    (call,) = llm.calls
    prompt_tokens = len(llm.tokenize(call["prompt"]))
    assert call["max_generated_tokens"] == 1500 - prompt_tokens < planner.plan_max_tokens


def test_a_prompt_over_the_context_is_refused_before_generating() -> None:
    planner, llm = planner_on(recorded("qwen_plan_ok.txt"))
    llm.capacity = 100
    with pytest.raises(ModelError, match="over the model's 100-token context"):
        planner.plan("sort the PDFs in Inbox by year", LISTING)
    assert llm.calls == []


def test_a_failed_generation_reports_and_clears_the_context() -> None:
    class Failing(RecordedLLM):
        def generate_all(self, prompt: str, **kwargs: Any) -> str:
            self.used = 1500
            raise RuntimeError("HAILO_TIMEOUT")

    llm = Failing()
    backend = HailoBackend(hailo_manifest(), llm=llm)
    with pytest.raises(ModelError, match="HAILO_TIMEOUT.*1500 tokens were in the context.*cleared"):
        backend.generate("sys", "user", json_schema=None, max_tokens=10)
    assert llm.used == 0


def test_temperature_zero_is_refused_and_a_positive_one_samples() -> None:
    m = hailo_manifest()
    with pytest.raises(ModelError, match="refuses temperature 0"):
        HailoBackend(replace(m, options={**m.options, "temperature": 0}), llm=RecordedLLM())
    sampled = HailoBackend(replace(m, options={"temperature": 0.7, "seed": 3}), llm=RecordedLLM())
    assert sampled.sampling == {"do_sample": True, "temperature": 0.7, "seed": 3}
