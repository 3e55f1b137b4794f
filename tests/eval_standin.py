"""An OpenAI-compatible stand-in for evaluation tests: candidates answer with labelled text, the
judge replies with verdicts a test sets, well-formed or malformed. Runs in a thread on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

JUDGE = "judge"
# What every candidate answer says, so that the judge can tell who answered what.
_TAG = re.compile(r"I am (\S+), q(\S+) t(\d+)\.")


def answer_text(model: str, qid: str, turn: int) -> str:
    return f"I am {model}, q{qid} t{turn}. Here is my code."


@dataclass
class Standin:
    """The test sets `single[(model, qid, turn)]` and `pair[(a, b, qid, turn)]` to reply texts."""

    single: dict[tuple[str, str, int], str] = field(default_factory=dict)
    pair: dict[tuple[str, str, str, int], str] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # models that answer 500
    slow: set[str] = field(default_factory=set)  # models that take 5 s to answer
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    owned_by: str = "vllm"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: set[str] = field(default_factory=set)  # Authorization headers seen
    delay_s: float = 0.0
    url: str = ""

    def calls(self, model: str) -> int:
        return sum(b["model"] == model for b in self.bodies)

    def _answer(self, body: dict[str, Any]) -> str:
        msgs = body["messages"]
        users = [m for m in msgs if m["role"] == "user"]
        turn = len(users)
        qid = re.search(r"QID=(\S+)", users[0]["content"])
        return answer_text(body["model"], qid.group(1) if qid else "?", turn)

    def _verdict(self, body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        tags = _TAG.findall(text)
        if "Assistant B's Conversation" in text:
            # The last answer of each conversation: A's conversation comes first.
            half = text.index("Assistant B's Conversation")
            a = _TAG.findall(text[:half])[-1]
            b = _TAG.findall(text[half:])[-1]
            return self.pair[(a[0], b[0], a[1], int(a[2]))]
        model, qid, turn = tags[-1]
        return self.single[(model, qid, int(turn))]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            names = ["good", "bad", "ugly", "broken", JUDGE]
            return {
                "data": [{"id": n, "owned_by": self.owned_by, "root": f"/m/{n}"} for n in names]
            }

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.bodies.append(body)
            self.auth.add(request.headers.get("authorization", ""))
            model = body["model"]
            self.in_flight[model] = self.in_flight.get(model, 0) + 1
            self.max_in_flight[model] = max(self.max_in_flight.get(model, 0), self.in_flight[model])
            try:
                await asyncio.sleep(5.0 if model in self.slow else self.delay_s)
            finally:
                self.in_flight[model] -= 1
            if body["model"] in self.broken:
                return JSONResponse({"error": {"message": "engine is down"}}, status_code=500)
            text = self._verdict(body) if body["model"] == JUDGE else self._answer(body)
            return {
                "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())},
            }

        return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(standin: Standin) -> Iterator[Standin]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(standin.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the stand-in did not start")
        time.sleep(0.02)
    standin.url = f"http://127.0.0.1:{port}"
    try:
        yield standin
    finally:
        server.should_exit = True
        thread.join(10)


def fill_eval_db(db: Path, questions: Path) -> None:
    """One finished single-grading run in `db`: `good` scores 9 and `bad` 2 on every turn of
    single-turn questions whose first turn says QID=<id>."""
    from orchestrator.cli.main import main

    ids = [json.loads(line)["question_id"] for line in questions.read_text().splitlines() if line]
    with serve(Standin()) as s:
        for qid in ids:
            s.single[("good", str(qid), 1)] = json.dumps({"explanation": "", "score": 9})
            s.single[("bad", str(qid), 1)] = json.dumps({"explanation": "", "score": 2})
        argv = ["eval", "--questions", str(questions), "--db", str(db), "-q"]
        argv += ["--judge", f"{s.url}#judge", "--model", f"{s.url}#good", "--model", f"{s.url}#bad"]
        assert main(argv) == 0
