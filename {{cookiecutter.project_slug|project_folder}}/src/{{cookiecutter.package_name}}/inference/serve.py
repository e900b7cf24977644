"""Serve: a checkpoint behind an HTTP endpoint and a page to try it, on LitServe.

    python -m {{ cookiecutter.package_name }}.inference.serve --ckpt_path CKPT
    open http://127.0.0.1:8000/            # the page: drop an image, see the classes
    curl -F image=@digit.png http://127.0.0.1:8000/predict

POST /predict takes one image file in the multipart form field ``image`` and answers, as JSON,
its class index, class name and confidence (softmax probability), and the ``--top_k`` most
likely classes. Images are decoded by ``images.decode``, as in ``predict``, so both give the
same answer for the same file. LitServe runs the model in worker processes, on a GPU batches
requests that queue together (``--max_batch_size``, ``--batch_timeout``), and serves GET
/health (200 once the workers are ready) and GET /info (class names, input shape, checkpoint,
template version). It answers only requests sent to ``--allowed_hosts``, and POSTs from its own
page or from clients that send no Origin (curl, scripts). SIGTERM or Ctrl-C, to this process
or to all of the server's (``docker stop``, systemd, Kubernetes), answers the requests the
server has read, then stops every process; so does the end of any of its processes, killed or
not, with one line that names it. Needs the ``serve`` extra: ``pip install -e ".[serve]"``.
"""

import argparse
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from ..support.errors import ConfigError, exit_in_one_line, require
from ..support.process import configure_process

HOSTS = ("127.0.0.1", "0.0.0.0", "::")
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals() -> None:
    """The first SIGTERM or SIGINT to this process stops the server as Ctrl-C does; later ones
    change nothing. The processes LitServe forks inherit the handler and ignore both signals:
    this process stops them in order (``server.Server``), whoever got the signal. One whose
    parent is gone exits: the manager, sent SIGTERM when this process is killed."""
    server_pid = os.getpid()

    def stop(signum: int, frame: FrameType | None) -> None:
        if os.getpid() == server_pid:
            # Ignored by the kernel from now on: the interpreter puts back the default
            # handlers as it exits, and a second signal then would kill this process.
            for each in STOP_SIGNALS:
                signal.signal(each, signal.SIG_IGN)
            raise KeyboardInterrupt
        if os.getppid() != server_pid:  # orphaned: see server.Server._init_manager
            sys.exit()

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def check_port_is_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                message = f"cannot listen on port {port} of {host}: {error.strerror}"
                raise ConfigError(message) from None
            # Perhaps this server, started before: moving to another port would leave it on.
            raise ConfigError(
                f"port {port} of {host} is taken: another server listens there; stop it, "
                "or choose another --port"
            ) from None


def positive(kind: type, zero: bool = False) -> type:
    def value(text: str) -> float:
        number = kind(text)
        if number < 0 or (number == 0 and not zero):
            allowed = "0 or above 0" if zero else "above 0"
            raise argparse.ArgumentTypeError(f"must be {allowed}, not {text}")
        return number

    return value


def devices_value(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"'auto' or a count of at least 1, not {value!r}")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--ckpt_path", type=Path, required=True, help="checkpoint from training")
    add("--host", default=HOSTS[0], choices=HOSTS, help="0.0.0.0 or '::': other machines too")
    add("--port", type=int, default=8000, help="1024-65535 (%(default)s)")
    add("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    add("--devices", type=devices_value, default="auto", help="'auto' or a count (%(default)s)")
    add("--workers_per_device", type=positive(int), default=1, help="model processes per device")
    add(
        "--max_batch_size",
        type=positive(int),
        default=16,
        help="the most requests classified together (%(default)s); 1: each on its own",
    )
    add(
        "--batch_timeout",
        type=positive(float, zero=True),
        default=0,
        help="seconds a batch waits for more requests after its first; 0: it takes those that "
        "came while the model was busy",
    )
    add("--max_payload_mb", type=positive(float), default=10, help="larger requests get 413")
    add(
        "--top_k", type=positive(int), default=5, help="most likely classes to answer (%(default)s)"
    )
    add("--idle_timeout", type=positive(int), default=5, help="seconds a silent connection stays")
    add(
        "--allowed_hosts",
        nargs="+",
        help="host names clients may use; '*': any (127.0.0.1 and localhost on 127.0.0.1, any on "
        "0.0.0.0 and '::')",
    )
    args = parser.parse_args(argv)
    if not 1024 <= args.port <= 65535:
        parser.error(f"--port must be within 1024-65535, not {args.port}")
    if args.allowed_hosts is None:
        args.allowed_hosts = LOOPBACK_NAMES if args.host == HOSTS[0] else ["*"]
    args.allowed_hosts = [name.lower().strip("[]") for name in args.allowed_hosts]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_process()
    with exit_in_one_line():
        for module in ("litserve", "multipart"):
            require(module, extra="serve", feature="serve")
        from .server import QuietConnectionsClosed, build_server

        check_port_is_free(args.host, args.port)
        server = build_server(
            args.ckpt_path,
            top_k=args.top_k,
            accelerator=args.accelerator,
            devices=args.devices,
            workers_per_device=args.workers_per_device,
            max_batch_size=args.max_batch_size,
            batch_timeout=args.batch_timeout,
            max_payload_mb=args.max_payload_mb,
            allowed_hosts=args.allowed_hosts,
        )
    stop_on_signals()
    server.run(
        host=args.host,
        port=args.port,
        generate_client_file=False,
        http=QuietConnectionsClosed,
        timeout_keep_alive=args.idle_timeout,
    )
    if server.failure:
        sys.exit(f"error: {server.failure}; the server stopped")


if __name__ == "__main__":
    main()
