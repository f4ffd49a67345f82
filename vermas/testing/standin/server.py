"""The HTTP server Claude Code talks to (`StandinModelServer`), and its command line
(``python -m vermas.testing.standin --port N --script FILE``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vermas.testing.standin.policies import ScriptedPolicy
from vermas.testing.standin.request import Block, ModelRequest, Policy, auxiliary_reply
from vermas.testing.standin.wire import message_json, sse_events

# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


@dataclass
class PolicyError:
    """A policy exception, kept so a test can show why the CLI got an error instead of a reply."""

    request: ModelRequest
    error: str


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean; every request is recorded on the server instead

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no route {self.command} {self.path}"}})

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        # Claude Code probes connectivity with HEAD /api/hello; any HEAD is "alive".
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if urlsplit(self.path).path == "/":
            self._send_json(200, {"ok": True, "server": "vermas-standin-model"})
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "body is not JSON"}})
            return
        req = ModelRequest(self.command, self.path, dict(self.headers.items()), body if isinstance(body, dict) else {}, len(raw))
        route = req.route.rstrip("/")
        if route == "/v1/messages/count_tokens":
            self.server.owner._record(req)
            self._send_json(200, {"input_tokens": max(1, len(raw) // 4)})
            return
        if route != "/v1/messages":
            self._not_found()
            return
        self.server.owner._record(req)
        try:
            blocks = self.server.owner.respond(req)
        except Exception as exc:  # noqa: BLE001 - report any policy bug to both sides
            detail = f"stand-in policy failed: {type(exc).__name__}: {exc}"
            self.server.owner._record_error(req, detail + "\n" + traceback.format_exc())
            # 400 (not 5xx) so Claude Code reports it at once instead of retrying with backoff.
            self._send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": detail}})
            return
        if not req.stream:
            self._send_json(200, message_json(req, blocks))
            return
        data = "".join(f"event: {name}\ndata: {json.dumps(payload)}\n\n" for name, payload in sse_events(req, blocks)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: StandinModelServer


class StandinModelServer:
    """The stand-in model on 127.0.0.1 (ephemeral port by default), served from a background thread.

    Use as a context manager so the thread and socket are always released. Every request to a
    Messages endpoint is kept in :attr:`requests` (thread-safe) for assertions.
    """

    def __init__(
        self,
        policy: Policy,
        host: str = "127.0.0.1",
        port: int = 0,
        answer_auxiliary: bool = True,
        record_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.policy = policy
        self.answer_auxiliary = answer_auxiliary
        self._lock = threading.Lock()
        self._requests: list[ModelRequest] = []
        self._errors: list[PolicyError] = []
        self._record_file = Path(record_file) if record_file else None
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What to put in ``ANTHROPIC_BASE_URL``."""
        host = self._httpd.server_address[0]
        return f"http://{host if isinstance(host, str) else host.decode()}:{self.port}"

    def start(self) -> StandinModelServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"standin-model:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StandinModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour ---------------------------------------------------------------------------

    def respond(self, req: ModelRequest) -> list[Block]:
        """Blocks for one Messages request: side requests answered here, the rest by the policy."""
        if self.answer_auxiliary and req.is_auxiliary():
            return auxiliary_reply(req)
        blocks = self.policy(req)
        if not blocks:
            raise ValueError("policy returned no content blocks")
        return blocks

    # -- recording ---------------------------------------------------------------------------

    def _record(self, req: ModelRequest) -> None:
        with self._lock:
            self._requests.append(req)
            if self._record_file is not None:
                with self._record_file.open("a") as f:
                    f.write(json.dumps(req.to_json()) + "\n")

    def _record_error(self, req: ModelRequest, error: str) -> None:
        with self._lock:
            self._errors.append(PolicyError(req, error))
        print(error, file=sys.stderr)

    @property
    def requests(self) -> list[ModelRequest]:
        """Every request received so far (a copy: safe while the server keeps running)."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[PolicyError]:
        with self._lock:
            return list(self._errors)

    def main_requests(self) -> list[ModelRequest]:
        """The conversation turns (Messages requests that are not Claude Code side requests)."""
        return [r for r in self.requests if r.route.rstrip("/") == "/v1/messages" and not r.is_auxiliary()]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vermas.testing.standin --port N --script FILE``: serve until interrupted."""
    parser = argparse.ArgumentParser(description="Stand-in Anthropic Messages API server driven by a JSON script.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--script", help="JSON file: a list of steps or {'steps': [...], 'final_text': ...}")
    parser.add_argument("--record", help="append every request as a JSON line to this file")
    args = parser.parse_args(argv)
    policy: Policy = ScriptedPolicy.load(args.script) if args.script else ScriptedPolicy([])
    server = StandinModelServer(policy, host=args.host, port=args.port, record_file=args.record)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(f"ANTHROPIC_BASE_URL={server.base_url}", flush=True)
        stop.wait()
    return 0

