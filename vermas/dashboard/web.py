"""The dashboard's web app (Starlette, served by uvicorn on 127.0.0.1): one HTML page, a
server-sent-event stream of snapshots, a pane preview, and POST actions.

The change signal is SQLite's `PRAGMA data_version` on a connection of our own: it moves
whenever another connection commits, and reading it costs a few microseconds (the WAL index
header), so the stream polls it every POLL_S and builds a snapshot only when the store moved;
tmux (which the store does not see) is looked at every TMUX_S and a snapshot is sent only if
it differs from the last one sent. Every request needs the town's secret (`?key=` or the
X-Vermas-Key header); actions are POST only.

Browser hardening (`Hardening`, before any route): a Host other than 127.0.0.1:PORT or
localhost:PORT is refused (DNS rebinding: a hostile page's name resolving to 127.0.0.1 must
not reach us, even without the key), a POST from another origin (Origin, Sec-Fetch-Site) is
refused, and every response says no referrer (the URL carries the key), no framing, and a CSP
that runs only the page's own script file (page.js; no inline script or handlers).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vermas.addresses import parse_address
from vermas.dashboard import actions, view
from vermas.errors import Conflict, Forbidden, InvalidInput, NotFound, VermasError
from vermas.patrol_types import TmuxEvidence
from vermas.town import Town

POLL_S = 0.2
TMUX_S = 5.0
KEEPALIVE_S = 15.0


CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "
       "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (("content-security-policy", CSP), ("referrer-policy", "no-referrer"),
                    ("x-frame-options", "DENY"), ("x-content-type-options", "nosniff"))
LOCAL_NAMES = ("127.0.0.1", "localhost")
SAFE_FETCH_SITES = ("same-origin", "none")  # none: the person typed or opened the URL themselves
OWN_PAGE = "actions come from the dashboard's own page"


def refusal(method: str, headers: Mapping[str, str], port: int) -> str | None:
    """Why a request must be refused before any route sees it, or None (pure; header names
    lowercase). Clients that send no Origin / Sec-Fetch-Site (curl, scripts) pass this check;
    the key still guards them."""
    allowed = [f"{name}:{port}" for name in LOCAL_NAMES]
    host = headers.get("host", "")
    if host.lower() not in allowed:
        return (f"forbidden: Host {host[:80]!r} is not this dashboard (allowed: {', '.join(allowed)}); "
                "open the URL the dashboard printed")
    if method.upper() in ("GET", "HEAD", "OPTIONS"):
        return None
    origin = headers.get("origin")
    if origin is not None and origin.lower() not in [f"http://{a}" for a in allowed]:
        return f"forbidden: a {method} from another origin ({origin[:80]!r}); {OWN_PAGE}"
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in SAFE_FETCH_SITES:
        return f"forbidden: a {method} from a {site[:40]!r} page (Sec-Fetch-Site); {OWN_PAGE}"
    return None


class Hardening:
    """ASGI middleware: `refusal` before any route, SECURITY_HEADERS on every response. Plain
    ASGI rather than BaseHTTPMiddleware, so the event stream passes through unbuffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS)]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        server = scope.get("server") or ("", 0)
        problem = refusal(scope["method"], headers, int(server[1] or 0))
        if problem is not None:
            await PlainTextResponse(problem, 403)(scope, receive, send_hardened)
            return
        await self.app(scope, receive, send_hardened)


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
    script = resources.files("vermas.dashboard").joinpath("page.js").read_text()

    def guard(request: Request) -> Response | None:
        if not actions.authorized(town, _key(request)):
            return PlainTextResponse("forbidden: the dashboard URL carries the town's key (?key=...)", 403)
        return None

    async def index(request: Request) -> Response:
        # The script tag carries the key the page was opened with (a script request has no
        # other way to send it), so the script route is guarded like every other.
        refused = guard(request)
        return refused or HTMLResponse(page.replace('src="page.js"', f'src="page.js?key={quote(_key(request) or "")}"'))

    async def page_script(request: Request) -> Response:
        return guard(request) or Response(script, media_type="text/javascript")

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
        Route("/", index), Route("/page.js", page_script), Route("/snapshot.json", snapshot),
        Route("/events", stream), Route("/pane", pane), Route("/action/{name}", act, methods=["POST"]),
    ], middleware=[Middleware(Hardening)])


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
