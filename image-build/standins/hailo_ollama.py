#!/usr/bin/env python3
"""A stand-in for hailo-ollama's ``POST /api/chat``, strict about the request.

hailo-ollama (hailo_model_zoo_genai v5.1.1, ``src/library/dto/DTOs.hpp``)
reads the body into typed objects: ``ChatParams`` (model, messages, tools,
format, options, stream, keep_alive) whose ``format`` and ``tools`` are
*strings*, and ``ModelParameters`` (temperature, seed, top_k, top_p,
frequency_penalty, num_predict, use_mlock). A field of the wrong type is
refused; this stand-in refuses it the same way (HTTP 400, saying which), and
answers a well-typed request with the next canned reply. It never runs a model.

    hailo_ollama.py --check MANIFEST   (inside the image: the installed Ollama
    backend against this stand-in; exit 0 when hailo-ollama would accept it)
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# field -> accepted JSON types (bool is not a number here: oatpp refuses it).
CHAT_PARAMS: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "messages": (list,),
    "tools": (str,),
    "format": (str,),
    "options": (dict,),
    "stream": (bool,),
    "keep_alive": (int,),
}
MODEL_PARAMETERS: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "seed": (int,),
    "top_k": (int,),
    "top_p": (int, float),
    "frequency_penalty": (int, float),
    "num_predict": (int,),
    "use_mlock": (bool,),
}


def problems(body: Any) -> list[str]:
    """Why hailo-ollama would refuse this ``/api/chat`` body ([] if it would not)."""
    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    out = _typed(body, CHAT_PARAMS, "")
    for i, m in enumerate(body.get("messages") or []):
        if not isinstance(m, dict):
            out.append(f"messages[{i}] is not an object")
            continue
        out += _typed(m, {"role": (str,), "content": (str,)}, f"messages[{i}].")
    if isinstance(body.get("options"), dict):
        out += _typed(body["options"], MODEL_PARAMETERS, "options.")
    return out


def _typed(obj: dict[str, Any], fields: dict[str, tuple[type, ...]], where: str) -> list[str]:
    out = []
    for key, kinds in fields.items():
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in kinds:
            out.append(f"{where}{key} must be {kinds[0].__name__}, not bool")
        elif not isinstance(value, kinds):
            out.append(f"{where}{key} must be {kinds[0].__name__}, not {type(value).__name__}")
    return out


class Handler(BaseHTTPRequestHandler):
    replies: list[str] = []
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = None
        wrong = problems(body) if self.path == "/api/chat" else [f"no endpoint {self.path}"]
        if wrong:
            self._send(400, {"error": "; ".join(wrong)})
            return
        type(self).seen.append(body)
        reply = type(self).replies.pop(0) if type(self).replies else "{}"
        self._send(
            200,
            {
                "model": body["model"],
                "message": {"role": "assistant", "content": reply},
                "done": True,
                "eval_count": 17,
                "prompt_eval_count": 300,
            },
        )

    def _send(self, status: int, value: dict[str, Any]) -> None:
        out = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


def serve() -> tuple[ThreadingHTTPServer, str]:
    """Start the stand-in on a free loopback port; (server, base URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def check(manifest_path: str) -> int:
    """The installed appliance's Ollama backend, one plan-shaped request."""
    from appliance.agent.backends import OllamaBackend
    from appliance.agent.models import load_manifest

    server, url = serve()
    Handler.replies = ['{"steps": []}']
    backend = OllamaBackend(load_manifest(__import__("pathlib").Path(manifest_path)), base_url=url)
    schema = {"type": "object", "properties": {"steps": {"type": "array"}}, "required": ["steps"]}
    try:
        backend.generate("system", "user", json_schema=schema, max_tokens=64)
    except Exception as e:  # noqa: BLE001 - the finding is printed
        print(f"hailo-ollama would refuse the request: {e}", file=sys.stderr)
        return 1
    finally:
        backend.close()
        server.shutdown()
    print(f"hailo-ollama's request types accepted: {sorted(Handler.seen[0])}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--check":
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(check(sys.argv[2]))
