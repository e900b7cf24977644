"""The HTTP server of a checkpoint, on LitServe: the page, the answers to bad and foreign
requests, its processes and their shutdown."""

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from litserve.connector import _Connector
from litserve.server import no_auth
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import TEMPLATE_VERSION
from ..support.errors import ConfigError
from ..support.images import MAX_PIXELS
from .api import ImageClassifierAPI
from .classifier import load_classifier
from .processes import PipeTransport, RequestPipes, die_with_parent

FORM = "multipart/form-data"
PAGE = Path(__file__).with_name("page.html")
MB = 2**20
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
FAILED_GRACE = 2  # seconds the HTTP processes get to finish after a process of the server ended


async def request_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """Answer a request that is not the expected form in one line (FastAPI's default answer
    is a list of errors that echoes the input back)."""
    content_type = request.headers.get("content-type")
    if not content_type or not content_type.startswith(FORM):
        sent = f"not as {content_type}" if content_type else "the request has no content type"
        detail = f"send the image as {FORM} in the field 'image' (curl -F image=@FILE): {sent}"
        return JSONResponse({"detail": detail}, status_code=415)
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"][1:])
    if first["type"] == "missing":
        detail = f"the form has no field {field!r}: send the image file in it"
    elif field == "image":
        detail = f"the form field {field!r} must be a file (curl -F {field}=@FILE)"
    else:
        detail = f"the form field {field!r}: {first['msg']}"
    return JSONResponse({"detail": detail}, status_code=422)


async def accept_any() -> None:
    """The credentials check of a server that asks for none (see ``Server.setup_auth``)."""


async def page() -> HTMLResponse:
    """The page where a person tries the model: pick or drop an image, see the answer."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


def payload_too_large(max_payload_mb: float) -> Callable[..., Awaitable[JSONResponse]]:
    """The answer to a request over the limit (LitServe's own says only "Payload too large")."""

    async def answer(request: Request, error: Exception) -> JSONResponse:
        limit = f"more than --max_payload_mb {max_payload_mb:g}"
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():  # sent in chunks, of a size known only at the end
            return JSONResponse({"detail": f"the request is {limit}"}, 413)
        size = int(declared)
        shown = f"{size / MB:.1f} MB" if round(size / MB, 1) > max_payload_mb else f"{size:,} bytes"
        return JSONResponse({"detail": f"the request is {shown}, {limit}"}, 413)

    return answer


class RefuseForeignRequests:
    """Refuse, in one line of JSON (403), a request whose Host is not one the server answers to
    (DNS rebinding: another site's name pointed at this server), and a POST whose Origin is
    another site's (a page elsewhere sending its form here through a visitor's browser).
    Starlette's TrustedHostMiddleware answers 400 "Invalid host header", which names neither
    the host nor the flag that allows it; no middleware of Starlette refuses the simple
    cross-origin requests a form sends (CORSMiddleware only withholds the answer)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal:
            await JSONResponse({"detail": refusal}, 403)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        headers = Headers(scope=scope)
        host, origin = headers.get("host", "").lower(), headers.get("origin")
        if "*" not in self.allowed_hosts and url_host(f"//{host}")[0] not in self.allowed_hosts:
            allowed = " ".join(self.allowed_hosts)
            return f"this server answers to {allowed} (--allowed_hosts), not to the host {host!r}"
        # Host and port only: behind a proxy that ends TLS, this server sees http.
        if scope["method"] not in SAFE_METHODS and origin and url_host(origin)[1] != host:
            return f"a {scope['method']} from the page of another site ({origin}) is refused"
        return None


def url_host(url: str) -> tuple[str | None, str]:
    """The host name (an IPv6 address without brackets) and the host[:port] of a URL."""
    try:
        parts = urlsplit(url.lower())
        return parts.hostname, parts.netloc
    except ValueError:  # a malformed IPv6 address
        return None, ""


class QuietConnectionsClosed(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection that sends nothing: its idle timeout
    (``--idle_timeout``) runs from the moment the connection opens, not only between requests."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


class Server(ls.LitServer):
    """LitServer whose processes stand and fall together. Answers go over pipes only they hold
    (``PipeTransport``). Any of its processes that ends stops the server, which says which one
    in one line (``failure``); LitServe watches only the model workers, and leaves a server
    without its HTTP process or queue manager listening. Its main process killed, every other
    ends too (``die_with_parent``) and the port is free for a restart.

    It stops in an order that answers every request it has read: the listening socket stops
    taking connections, the HTTP processes finish the requests they hold (the model workers
    still run), then the model workers and the queues go. LitServe's own order closes the
    queues first, and every process it forks keeps the socket listening."""

    failure: str | None = None  # the process that ended on its own, and how
    children_die_by = signal.SIGKILL

    def run(self, *args: Any, **kwargs: Any) -> None:
        server = os.getpid()
        os.register_at_fork(after_in_child=lambda: die_with_parent(server, self.children_die_by))
        super().run(*args, **kwargs)

    def _init_manager(self, num_api_servers: int) -> Any:
        """LitServe's manager, which here holds only the model workers' setup status (its
        queues go unused): ``RequestPipes`` for the requests, ``PipeTransport`` for the
        answers, and a stop event of this process: waiting on the manager's would fail with
        the manager."""
        # Its main process killed, the manager gets SIGTERM and exits as on a shutdown,
        # removing its socket file and folder (see serve.stop_on_signals). The HTTP
        # processes get SIGKILL: uvicorn would wait for answers that no longer come.
        self.children_die_by = signal.SIGTERM
        try:
            manager = super()._init_manager(num_api_servers)
        finally:
            self.children_die_by = signal.SIGKILL
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = RequestPipes.for_producers(num_api_servers)
        self._transport = PipeTransport.for_consumers(num_api_servers)
        self._shutdown_event = threading.Event()
        return manager

    def setup_auth(self, lit_api: ls.LitAPI | None = None) -> Callable:
        """LitServe's check of a request's credentials; where there is none, one that FastAPI
        awaits: it runs a plain function, as LitServe's ``no_auth`` (src/litserve/server.py),
        in its thread pool, a thread hop for every request."""
        check = super().setup_auth(lit_api)
        return accept_any if check is no_auth else check

    def _start_server(
        self, port: int, servers: int, log_level: str, sockets: list, *args: Any, **kwargs: Any
    ) -> dict:
        self.listening = sockets
        return super()._start_server(port, servers, log_level, sockets, *args, **kwargs)

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: dict) -> None:
        """Stop the server as soon as any of its processes ends, unless it is stopping."""
        roles = {worker: "model worker" for worker in self.inference_workers}
        roles |= {worker: "HTTP process" for worker in uvicorn_workers.values()}
        for child in multiprocessing.active_children():
            roles.setdefault(child, "queue manager")  # LitServe's multiprocessing manager

        def watch() -> None:
            ended = multiprocessing.connection.wait([process.sentinel for process in roles])
            if self._shutdown_event.is_set():
                return
            process = next(process for process in roles if process.sentinel in ended)
            process.join()
            code = process.exitcode
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            self.failure = f"the {roles[process]} (pid {process.pid}) stopped ({how})"
            self._shutdown_event.set()

        threading.Thread(target=watch, name="watch-processes", daemon=True).start()

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict, *args: Any) -> None:
        self._shutdown_event.set()  # from now on, processes end because the server stops them
        for listening in getattr(self, "listening", []):
            # Shut down, not only closed: the processes LitServe forked share this socket.
            with contextlib.suppress(OSError):
                listening.shutdown(socket.SHUT_RDWR)
            listening.close()
        # After a failure, a request in flight may have lost its model worker for good.
        grace = self.uvicorn_graceful_timeout if self.failure is None else FAILED_GRACE
        for worker in uvicorn_workers.values():
            worker.terminate()  # uvicorn's graceful shutdown: requests in flight are answered
        for worker in uvicorn_workers.values():
            worker.join(grace)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for worker in self.inference_workers:
            worker.kill()  # they ignore SIGTERM (see setup) and hold nothing to save
            worker.join()
        manager.shutdown()
        # A manager killed by a signal leaves its socket file and folder behind.
        address = Path(manager.address)
        address.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            address.parent.rmdir()


def build_server(
    ckpt_path: Path,
    top_k: int,
    accelerator: str,
    devices: int | str,
    workers_per_device: int,
    max_batch_size: int,
    batch_timeout: float,
    max_payload_mb: float,
    allowed_hosts: list[str],
) -> Server:
    """The server for a checkpoint; loading it here first stops a bad one with one line.
    A batch is what queued while the model was busy, so batching costs a lone request nothing.
    """
    model, _ = load_classifier(ckpt_path)
    connector = _Connector(accelerator, devices)  # the devices LitServe picks for these flags
    if connector.accelerator != "cpu" and not connector.devices:
        raise ConfigError(
            f"--accelerator {accelerator}: this machine has no such device; use auto or cpu"
        )
    class_names = list(model.hparams.class_names)
    # On CPU, the model workers and LitServe's HTTP processes (one per worker) share the cores
    # equally: with more torch threads than their share they take cores from one another, and
    # a one-image forward pass waits for a thread that another process holds.
    cpu_threads = max(1, (os.cpu_count() or 1) // (2 * workers_per_device))
    api = ImageClassifierAPI(
        ckpt_path.resolve(),
        min(top_k, len(class_names)),
        cpu_threads,
        max_batch_size,
        batch_timeout,
    )
    server = Server(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        max_payload_size=int(max_payload_mb * MB),
        middlewares=[(RefuseForeignRequests, {"allowed_hosts": allowed_hosts})],
        disable_openapi_url=True,  # no /docs: see "Serve" in the README before exposing it
        model_metadata={
            "class_names": class_names,
            "input_shape": list(model.input_shape),
            "checkpoint": ckpt_path.name,
            "template_version": TEMPLATE_VERSION,
            "max_pixels": MAX_PIXELS,
        },
    )
    server.app.add_exception_handler(RequestValidationError, request_error)
    server.app.add_exception_handler(413, payload_too_large(max_payload_mb))
    # The page replaces LitServe's own GET / ("litserve running").
    routes = server.app.router.routes
    routes[:] = [route for route in routes if getattr(route, "path", None) != "/"]
    server.app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    return server
