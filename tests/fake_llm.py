"""A small OpenAI-compatible chat endpoint for tests, on a free port, in a thread."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from config.settings import PostCallSettings, Settings


@dataclass
class Reply:
    content: str = "{}"
    status: int = 200
    delay_s: float = 0.0


@dataclass
class FakeLLM:
    base_url: str
    respond: Callable[[dict[str, Any]], Reply] = lambda _: Reply()
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def settings(self, timeout_s: float = 10.0, api_key: str | None = "sk-test") -> Settings:
        return Settings(
            postcall=PostCallSettings(
                llm_base_url=self.base_url,
                llm_model="test-model",
                llm_api_key=api_key,
                llm_timeout_s=timeout_s,
            )
        )

    def reply_json(self, data: Any) -> None:
        self.respond = lambda _: Reply(json.dumps(data))


@contextmanager
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append((dict(self.headers), body))
            reply = fake.respond(body)
            time.sleep(reply.delay_s)
            if reply.status == 200:
                payload = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.content},
                            "finish_reason": "stop",
                        }
                    ],
                }
                data = json.dumps(payload).encode()
            else:
                data = reply.content.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, name="fake-llm", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
