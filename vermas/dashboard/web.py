"""The dashboard's web app (Starlette, served by uvicorn on 127.0.0.1): one HTML page, a
server-sent-event stream of snapshots, a pane preview, and POST actions.

The change signal is SQLite's `PRAGMA data_version` on a connection of our own: it moves
whenever another connection commits, and reading it costs a few microseconds (the WAL index
header), so the stream polls it every POLL_S and builds a snapshot only when the store moved;
tmux (which the store does not see) is looked at every TMUX_S and a snapshot is sent only if
it differs from the last one sent. Every request needs the town's secret (`?key=` or the
X-Vermas-Key header); actions are POST only.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from vermas.addresses import parse_address
from vermas.dashboard import actions, view
from vermas.errors import Conflict, Forbidden, InvalidInput, NotFound, VermasError
from vermas.patrol_types import TmuxEvidence
from vermas.town import Town

POLL_S = 0.2
TMUX_S = 5.0
KEEPALIVE_S = 15.0


def _key(request: Request) -> str | None:
    return request.headers.get("x-vermas-key") or request.query_params.get("key")


def panes(town: Town) -> Mapping[str, TmuxEvidence] | None:
    """One look at the town's tmux server (None when tmux cannot be asked)."""
    try:
        from vermas.sessions import TownSessions  # deferred: libtmux

        s = TownSessions(town.root)
        seen, created = s.panes(), s.created()
    except Exception:  # noqa: BLE001 - no tmux server: agents are judged from their events alone
        return None
    return {name: TmuxEvidence(session=True, pane_alive=not p.dead,
                               exit_status=p.exit_status if p.dead and p.signal is None else None,
                               started_at=created.get(name)) for name, p in seen.items()}


class Watcher:
    """The store's change counter, on a connection of its own (never inside a transaction)."""

    def __init__(self, town: Town) -> None:
        self._conn = sqlite3.connect(f"file:{town.db.path}?mode=ro", uri=True, isolation_level=None,
                                     check_same_thread=False)

    def version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


def build_app(town: Town) -> Starlette:
    page = resources.files("vermas.dashboard").joinpath("page.html").read_text()

    def guard(request: Request) -> Response | None:
        if not actions.authorized(town, _key(request)):
            return PlainTextResponse("forbidden: the dashboard URL carries the town's key (?key=...)", 403)
        return None

    async def index(request: Request) -> Response:
        return guard(request) or HTMLResponse(page)

    def current() -> str:
        return view.snapshot(town, panes(town)).model_dump_json()

    async def snapshot(request: Request) -> Response:
        return guard(request) or Response(await anyio.to_thread.run_sync(current), media_type="application/json")

    async def stream(request: Request) -> Response:
        refused = guard(request)
        if refused:
            return refused

        async def events() -> AsyncIterator[str]:
            watcher = Watcher(town)
            try:
                last_version, last_sent = watcher.version(), await anyio.to_thread.run_sync(current)
                yield f"event: snapshot\ndata: {last_sent}\n\n"
                last_tmux = last_beat = time.monotonic()
                while not await request.is_disconnected():
                    await anyio.sleep(POLL_S)
                    now = time.monotonic()
                    version = watcher.version()
                    if version != last_version or now - last_tmux >= TMUX_S:
                        last_version, last_tmux = version, now
                        data = await anyio.to_thread.run_sync(current)
                        if _content(data) != _content(last_sent):
                            last_sent, last_beat = data, now
                            yield f"event: snapshot\ndata: {data}\n\n"
                    if now - last_beat >= KEEPALIVE_S:
                        last_beat = now
                        yield ": keepalive\n\n"
            finally:
                watcher.close()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def pane(request: Request) -> Response:
        refused = guard(request)
        if refused:
            return refused
        try:
            address = parse_address(request.query_params.get("agent", ""))
        except VermasError as exc:
            return PlainTextResponse(str(exc), 400)

        def capture() -> str:
            from vermas.sessions import TownSessions  # deferred: libtmux

            return TownSessions(town.root).capture(address)

        return PlainTextResponse(await anyio.to_thread.run_sync(capture))

    async def act(request: Request) -> Response:
        refused = guard(request)
        if refused:
            return refused
        name = request.path_params["name"]
        try:
            params = await request.json()
        except ValueError:
            return JSONResponse({"ok": False, "error": "the body must be a JSON object"}, 400)
        if not isinstance(params, dict):
            return JSONResponse({"ok": False, "error": "the body must be a JSON object"}, 400)
        try:
            result = await anyio.to_thread.run_sync(lambda: actions.run(town, name, params))
        except VermasError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, _http_status(exc))
        except ValueError as exc:  # pydantic: a parameter of the wrong type
            return JSONResponse({"ok": False, "error": str(exc).splitlines()[0]}, 400)
        return JSONResponse({"ok": True, "result": json.loads(result.model_dump_json())})

    return Starlette(routes=[
        Route("/", index), Route("/snapshot.json", snapshot), Route("/events", stream), Route("/pane", pane),
        Route("/action/{name}", act, methods=["POST"]),
    ])


def _content(data: str) -> Any:
    """A snapshot without its timestamp (two snapshots of an unchanged town compare equal)."""
    parsed = json.loads(data)
    parsed.pop("taken_at", None)
    return parsed


def _http_status(exc: VermasError) -> int:
    for kind, code in ((Forbidden, 403), (NotFound, 404), (Conflict, 409), (InvalidInput, 400)):
        if isinstance(exc, kind):
            return code
    return 500


def serve(town: Town, port: int = 0, ready: Any = None) -> None:
    """Serve on 127.0.0.1:port until interrupted; `ready(port)` once listening."""
    import uvicorn  # deferred: the server itself, only when serving (tests build the app alone)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # connections queue from now on, so the URL printed next works at once
    if ready is not None:
        ready(sock.getsockname()[1])
    config = uvicorn.Config(build_app(town), log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])
