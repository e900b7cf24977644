"""The HTTP server of a checkpoint, on LitServe: the page, the answers to bad requests, the
transport and the shutdown."""

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from litserve.connector import _Connector
from litserve.transport.factory import TransportConfig
from litserve.transport.zmq_transport import ZMQTransport
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .. import TEMPLATE_VERSION
from ..support.errors import ConfigError
from ..support.images import MAX_PIXELS
from .api import ImageClassifierAPI
from .classifier import load_classifier

FORM = "multipart/form-data"
PAGE = Path(__file__).with_name("page.html")


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


async def page() -> HTMLResponse:
    """The page where a person tries the model: pick or drop an image, see the answer."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


class QuietConnectionsClosed(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection that sends nothing: its idle timeout
    (``--idle_timeout``) runs from the moment the connection opens, not only between requests."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


class Server(ls.LitServer):
    """LitServer, stopping in an order that answers every request it has read: the listening
    socket stops taking connections, the HTTP processes finish the requests they hold (the
    model workers still run), then the model workers and the queues go. LitServe's own order
    closes the queues first, and every process it forks keeps the socket listening."""

    stopping = False

    def _init_manager(self, num_api_servers: int) -> Any:
        """LitServe's queues, with ``fast_queue`` really on ZeroMQ. LitServe 0.2 passes the
        setting under a wrong name and swaps the broker's addresses (Lightning-AI/LitServe#751),
        so answers went through its multiprocessing manager whatever the flag said: on 2 CPU
        cores, a quarter fewer requests per second at 32 clients (the template's benchmark)."""
        if self.use_zmq:
            self.transport_config = TransportConfig(transport_type="zmq")
        manager = super()._init_manager(num_api_servers)
        if self.use_zmq:
            config = self.transport_config
            self._transport = ZMQTransport(
                backend_address=config.backend_address, frontend_address=config.frontend_address
            )
        return manager

    def _start_server(
        self, port: int, servers: int, log_level: str, sockets: list, *args: Any, **kwargs: Any
    ) -> dict:
        self.listening = sockets
        return super()._start_server(port, servers, log_level, sockets, *args, **kwargs)

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict, *args: Any) -> None:
        if self.stopping:  # LitServe's worker monitor calls this too
            return
        self.stopping = True
        for listening in getattr(self, "listening", []):
            # Shut down, not only closed: the processes LitServe forked share this socket.
            with contextlib.suppress(OSError):
                listening.shutdown(socket.SHUT_RDWR)
            listening.close()
        # Ends LitServe's worker monitor. From a thread of its own: this thread's connection to
        # the manager may still wait for the event, interrupted by the signal.
        setter = threading.Thread(target=self._shutdown_event.set, daemon=True)
        setter.start()
        setter.join(timeout=5)
        for worker in uvicorn_workers.values():
            worker.terminate()  # uvicorn's graceful shutdown: requests in flight are answered
        for worker in uvicorn_workers.values():
            worker.join(self.uvicorn_graceful_timeout)
            if worker.is_alive():
                worker.kill()
        for worker in self.inference_workers:
            worker.kill()  # they ignore SIGTERM (see setup) and hold nothing to save
            worker.join()
        manager.shutdown()
        # The ZeroMQ broker's sockets are files (in /tmp), which LitServe leaves behind.
        for address in (
            self.transport_config.frontend_address,
            self.transport_config.backend_address,
        ):
            if address and address.startswith("ipc://"):
                Path(address.removeprefix("ipc://")).unlink(missing_ok=True)


def build_server(
    ckpt_path: Path,
    top_k: int,
    accelerator: str,
    devices: int | str,
    workers_per_device: int,
    max_batch_size: int | None,
    batch_timeout: float,
    max_payload_mb: float,
    fast_queue: bool,
) -> Server:
    """The server for a checkpoint; loading it here first stops a bad one with one line.
    ``max_batch_size`` None: batching on a GPU only. On a CPU, waiting for a batch to fill
    costs more than it saves unless many clients wait at once (the template's benchmark)."""
    model, _ = load_classifier(ckpt_path)
    connector = _Connector(accelerator, devices)  # the devices LitServe picks for these flags
    if connector.accelerator != "cpu" and not connector.devices:
        raise ConfigError(
            f"--accelerator {accelerator}: this machine has no such device; use auto or cpu"
        )
    if max_batch_size is None:
        max_batch_size = 1 if connector.accelerator == "cpu" else 16
    class_names = list(model.hparams.class_names)
    # On CPU, the model workers and LitServe's HTTP processes (one per worker) share the cores
    # equally: with more torch threads they take cores from one another (on a busy 2-core
    # machine, torch's default of 2 threads made a one-image forward pass 100x slower than 1).
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
        max_payload_size=int(max_payload_mb * 2**20),
        fast_queue=fast_queue,
        model_metadata={
            "class_names": class_names,
            "input_shape": list(model.input_shape),
            "checkpoint": ckpt_path.name,
            "template_version": TEMPLATE_VERSION,
            "max_pixels": MAX_PIXELS,
        },
    )
    server.app.add_exception_handler(RequestValidationError, request_error)
    # The page replaces LitServe's own GET / ("litserve running").
    routes = server.app.router.routes
    routes[:] = [route for route in routes if getattr(route, "path", None) != "/"]
    server.app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    return server
