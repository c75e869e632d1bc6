"""Helpers of the explain tests: synthetic expert records and a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tl_moe.explain.examples import Context, ExpertRecord

WORDS = ["cat", "dog", "fish", "bird", "frog", "zzz", "slow", "busy", "mole", "newt"]
FILLER = ["the", "a", "on", "in", "and", "sat", "ran", "big", "red", "old"]


def context(word: str, i: int, routed: bool, source: str) -> Context:
    filler = [FILLER[(i + j) % len(FILLER)] for j in range(6)]
    tokens = [*(" " + f for f in filler[:3]), " " + word, *(" " + f for f in filler[3:])]
    marks = [False] * 3 + [routed] + [False] * 3
    return Context(
        token_ids=tuple(range(len(tokens))),
        tokens=tuple(tokens),
        marks=tuple(marks),
        target=3,
        activation=1.0 if routed else 0.0,
        doc_index=i,
        token_index=1000 * WORDS.index(word) + i + (500 if not routed else 0),
        domain="prose",
        concept_words=tuple((0,) for _ in tokens),
        source=source,
    )


def word_records(words: list[str], n: int = 10, layer: int = 0) -> list[ExpertRecord]:
    """One expert per word: it fires on the word; negatives are the other experts' words."""
    records = []
    for expert, word in enumerate(words):
        others = [w for w in words if w != word]
        records.append(
            ExpertRecord(
                layer=layer,
                expert=expert,
                explanation=tuple(context(word, i, True, "top") for i in range(n)),
                positives=tuple(context(word, 100 + i, True, "top") for i in range(n)),
                negatives=tuple(context(others[i % len(others)], 200 + i, False, "random") for i in range(n)),
            )
        )
    return records


class LoopbackServer:
    """An OpenAI-compatible chat server on 127.0.0.1, in a thread, with canned behaviours.

    Explanation requests (system prompt "You explain") are answered ``{"label": "the word W"}`` for the
    marked word W; detection requests get 1 for each excerpt containing the label's word (a question
    about one excerpt gets "Yes." / "No"). Words with behaviours: ``zzz`` -> a malformed answer;
    ``slow`` -> sleeps ``slow_s`` first; ``busy`` -> 429 (with ``retry-after-ms``) ``busy_failures``
    times before answering. ``delay_s`` delays every answer.
    Every request body is logged in ``requests``; ``answered`` logs the ones answered 200.
    """

    def __init__(self, *, delay_s: float = 0.0, slow_s: float = 2.0, busy_failures: int = 2) -> None:
        self.delay_s, self.slow_s, self.busy_failures = delay_s, slow_s, busy_failures
        self.requests: list[dict] = []
        self.answered: list[dict] = []
        self.busy_seen: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "canned", "object": "model"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server.lock:
                    server.requests.append(body)
                status, content, headers = server.respond(body)
                if status != 200:
                    self._send(status, {"error": {"message": content, "type": "rate_limit"}}, headers)
                    return
                with server.lock:
                    server.answered.append(body)
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "canned"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def respond(self, body: dict) -> tuple[int, str, dict]:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        word = None
        if system.startswith("You explain"):
            found = re.search(r"<<\s*(\w+)>>", user)
            word = found.group(1) if found else None
        else:
            found = re.search(r"Label: the word (\w+)", user)
            word = found.group(1) if found else None
        if word == "slow":
            time.sleep(self.slow_s)
        if word == "busy":
            key = json.dumps(body["messages"])
            with self.lock:
                seen = self.busy_seen.get(key, 0)
                self.busy_seen[key] = seen + 1
            if self.busy_failures < 0 or seen < self.busy_failures:
                return 429, "slow down", {"retry-after-ms": "5"}
        if self.delay_s:
            time.sleep(self.delay_s)
        if system.startswith("You explain"):
            if word == "zzz":
                return 200, "I am not sure what this is.", {}
            return 200, json.dumps({"label": f"the word {word}"}), {}
        excerpts = re.findall(r"(?m)^\d+\. (.*)$", user)
        single = re.search(r"(?m)^Excerpt: (.*)$", user)
        if not excerpts and single:  # one yes/no question per item
            return 200, "Yes." if word is not None and f" {word}" in single.group(1) else "No", {}
        return 200, json.dumps([int(word is not None and f" {word}" in e) for e in excerpts]), {}
