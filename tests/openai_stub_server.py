"""A small OpenAI-compatible chat-completions server on loopback, for tests of the ``openai:`` backend.

Run as a process: ``python tests/openai_stub_server.py`` prints ``PORT <n>`` on its first line and
serves ``POST /v1/chat/completions`` until killed. Behaviour is picked by the request's model name:

* ``qa`` - answers like a careful model: asked to write a question for an answer, it blanks the
  answer out of the passage sentence holding it ("Which words complete: The tower was completed
  in ____?"); asked to answer such a question from a passage, it fills the blank from the passage.
* ``slow`` - sleeps 3 s before answering (past a short client timeout).
* ``error500`` - HTTP 500 with a JSON error body.
* ``malformed`` - HTTP 200 whose body is not JSON.
* ``flaky`` - HTTP 503 for its first two requests, then like ``qa``.

``GET /stats`` returns the number of requests seen per model name. Standard library only.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN: Counter = Counter()
LOCK = threading.Lock()
BLANK = "____"


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def _section(user: str, name: str) -> str:
    """The text after ``name:`` up to the next blank line."""
    m = re.search(rf"{name}:\s*(.*?)(?:\n\n|$)", user, re.DOTALL)
    return m.group(1).strip() if m else ""


def qa_reply(messages: list[dict]) -> str:
    system, user = messages[0]["content"], messages[-1]["content"]
    passage = _section(user, "Passage")
    if "write" in system.lower() and "question" in system.lower():
        answer = _section(user, "Answer")
        sent = next((s for s in _sentences(passage) if answer in s), "")
        return f"Which words complete: {sent.replace(answer, BLANK, 1).rstrip('.')}?" if sent else "I cannot."
    question = _section(user, "Question")
    m = re.match(rf"Which words complete: (.*){re.escape(BLANK)}(.*)\?$", question)
    if not m:
        return "unknown"
    before, after = m.group(1), m.group(2)
    start = passage.find(before)
    if start < 0:
        return "unknown"
    rest = passage[start + len(before):]
    end = rest.find(after) if after else len(rest.split(".")[0])
    return rest[:end].strip() if end >= 0 else "unknown"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/stats":
            with LOCK:
                self._send(200, json.dumps(dict(SEEN)).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "no such route"}}')
            return
        model = body.get("model", "")
        with LOCK:
            SEEN[model] += 1
            n = SEEN[model]
        if model == "slow":
            time.sleep(3)
        if model == "error500":
            self._send(500, b'{"error": {"message": "the model crashed"}}')
            return
        if model == "malformed":
            self._send(200, b"this is not json {", "text/plain")
            return
        if model == "flaky" and n <= 2:
            self._send(503, b'{"error": {"message": "overloaded, try again"}}')
            return
        content = qa_reply(body["messages"])
        reply = {"id": f"stub-{n}", "object": "chat.completion", "model": model,
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}
        self._send(200, json.dumps(reply).encode())


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
