"""Load-test the baked project's LitServe server on loopback against a plain endpoint.

    python benchmarks/serve.py [--ckpt_path CKPT] [--rounds 3] [--requests 2000]
                               [--concurrency 1 8 32]

Bakes the project with the serve option and, without --ckpt_path, trains a checkpoint for one
epoch on the data module's own small sample (the model's speed does not depend on its
accuracy). Then, in each of --rounds rounds, it starts in turn on a free 127.0.0.1 port:

- the project's server (`python -m mnist_lab.inference.serve`) with its defaults, and with
  each setting the defaults were chosen against (no batching, two model
  workers);
- benchmarks/plain_server.py, one FastAPI process doing the same decoding and model call per
  request, as a user would write it, with torch's default threads and with one thread.

Each is sent PNG files of the test split as multipart uploads. At each concurrency, after a
short warm-up, each client sends a request and waits for its answer, until --requests were
sent or --max-seconds passed. Prints, per server and concurrency, the median over the rounds
and the range of: requests per second, p50 and p99 latency, errors (any answer but 200) and
the CPU time the server's processes spent per request; and the machine's load. The load
generator shares the machine with the servers: a minimal asyncio HTTP/1.1 client on
keep-alive connections, to take as little CPU from them as possible.
"""

import argparse
import asyncio
import contextlib
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import HERE, bake, command, machine, print_table, spread, versions

BOUNDARY = "benchmark-boundary"
LIMITS = {"requests": 5000, "concurrency": 64, "max_seconds": 120}


@dataclass
class Run:
    server: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    cpu_seconds: float | None  # of the server's processes; None where /proc is missing

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def upload_request(port: int, png: bytes) -> bytes:
    """One POST /predict with ``png`` as the multipart form field ``image``."""
    part = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=image; filename=x.png\r\n"
        "Content-Type: image/png\r\n\r\n"
    )
    body = part.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a keep-alive connection; return the answer's status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    if not lengths:
        raise ValueError("an answer without Content-Length")
    await reader.readexactly(int(lengths[0].split(b":", 1)[1]))
    return status


async def load(
    port: int, requests: list[bytes], concurrency: int, count: int, max_seconds: float
) -> tuple[int, float, list[float], int]:
    """Send ``count`` requests from ``concurrency`` clients, or fewer if time runs out; return
    the requests sent, the seconds taken, the latencies of the answers and the errors."""
    sent, errors, latencies = 0, 0, []
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal sent, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while sent < count and time.perf_counter() < deadline:
            request = requests[sent % len(requests)]
            sent += 1
            start = time.perf_counter()
            try:
                status = await exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - start)
            errors += status != 200
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return sent, time.perf_counter() - start, latencies, errors


def cpu_seconds(root: int) -> float | None:
    """CPU seconds used so far by process ``root`` and its descendants (Linux only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    parents, used = {}, {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    family, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return sum(used.get(pid, 0.0) for pid in family)


def wait_until_healthy(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: the server exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"error: the server was not healthy after 180 s; see {log}")


def measure(
    name: str, command: list[str], env: dict[str, str], log: Path, pngs: list[bytes], args
) -> list[Run]:
    """Start a server (its command takes the port last), load it at each concurrency, stop it."""
    port = free_port()
    requests = [upload_request(port, png) for png in pngs]
    with log.open("w") as output:
        # In a session of its own, so that every process the server starts can be ended.
        process = subprocess.Popen(
            [*command, str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    runs = []
    try:
        wait_until_healthy(port, process, log)
        for concurrency in args.concurrency:
            asyncio.run(load(port, requests, concurrency, min(200, args.requests), 30))
            cpu_before = cpu_seconds(process.pid)
            sent, seconds, latencies, errors = asyncio.run(
                load(port, requests, concurrency, args.requests, args.max_seconds)
            )
            cpu_after = cpu_seconds(process.pid)
            cpu = None if cpu_before is None else cpu_after - cpu_before
            runs.append(Run(name, concurrency, sent, seconds, latencies, errors, cpu))
    finally:
        process.send_signal(signal.SIGTERM)  # the project's server stops its workers on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # none left: the usual case
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return runs


def sample(project: Path, data_dir: Path) -> tuple[list[bytes], list[str], str]:
    """PNG files of the test split of the data module's sample, the --data flags that train on
    the sample, and the image size."""
    sys.path.insert(0, str(project / "src"))
    from mnist_lab.data import ImageDataModule
    from PIL import Image

    data_args = ImageDataModule.write_sample(data_dir)
    datamodule = ImageDataModule(**data_args)
    datamodule.setup("test")
    pngs = []
    for images, _ in datamodule.test_dataloader():
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(buffer, "PNG")
            pngs.append(buffer.getvalue())
    flags = [f"--data.{name}={value}" for name, value in data_args.items()]
    return pngs, flags, "x".join(str(size) for size in ImageDataModule.image_size)


def train(project: Path, env: dict[str, str], data_flags: list[str]) -> Path:
    args = command("train", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false")
    subprocess.run(
        [*args, *data_flags], cwd=project, env=env, check=True, stdout=subprocess.DEVNULL
    )
    return next(p for p in project.glob("logs/**/checkpoints/*.ckpt") if p.name != "last.ckpt")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, help="checkpoint of the default bake's model")
    parser.add_argument("--rounds", type=int, default=3, help="the servers in turn, this often")
    parser.add_argument("--requests", type=int, default=2000, help="per server and concurrency")
    parser.add_argument("--max-seconds", type=float, default=30, help="per server and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--only", nargs="+", help="the servers to run, by their names' start")
    args = parser.parse_args()
    if not (
        1 <= args.requests <= LIMITS["requests"]
        and 1 <= min(args.concurrency) <= max(args.concurrency) <= LIMITS["concurrency"]
        and 0 < args.max_seconds <= LIMITS["max_seconds"]
        and 1 <= args.rounds <= 10
    ):
        parser.error(f"keep the load within {LIMITS} and 1-10 rounds")
    return args


def summary_rows(runs: list["Run"], names: list[str], concurrency: list[int]) -> list[list[str]]:
    """Per server and concurrency: the median over the rounds, and the range."""
    rows = []
    for name in names:
        for clients in concurrency:
            group = [run for run in runs if (run.server, run.concurrency) == (name, clients)]
            cpu = [run.cpu_seconds / run.requests * 1000 for run in group if run.cpu_seconds]
            rows.append(
                [
                    name,
                    str(clients),
                    spread([run.throughput for run in group], "{:.0f}"),
                    spread([run.percentile_ms(0.50) for run in group]),
                    spread([run.percentile_ms(0.99) for run in group]),
                    str(sum(run.errors for run in group)),
                    spread(cpu, "{:.2f}") if cpu else "n/a",
                ]
            )
    return rows


def main() -> None:
    args = parse_args()
    workdir, project, env = bake("serve-bench", serve="yes")
    pngs, data_flags, image_size = sample(project, workdir / "data")
    ckpt_path = (args.ckpt_path or train(project, env, data_flags)).resolve()
    serve = command("inference.serve", "--ckpt_path", str(ckpt_path))
    plain = [sys.executable, str(HERE / "plain_server.py"), str(project / "src"), str(ckpt_path)]
    servers = [
        ("LitServe, defaults", [*serve, "--port"], env),
        ("LitServe, no batching", [*serve, "--max_batch_size", "1", "--port"], env),
        ("LitServe, 2 workers", [*serve, "--workers_per_device", "2", "--port"], env),
        ("plain FastAPI", plain, env),
        ("plain FastAPI, 1 thread", plain, {**env, "OMP_NUM_THREADS": "1"}),
    ]
    if args.only:
        servers = [server for server in servers if server[0].startswith(tuple(args.only))]
    print(f"{machine()} at the start; {len(pngs)} distinct {image_size} PNG uploads", flush=True)
    print(versions("litserve", "fastapi", "uvicorn", "starlette", "pyzmq", "torch"), flush=True)
    runs: list[Run] = []
    for round_number in range(args.rounds):
        for name, server, server_env in servers:
            log = workdir / f"{name.replace(' ', '_').replace(',', '')}-{round_number}.log"
            runs += measure(name, server, server_env, log, pngs, args)
        print(f"round {round_number + 1} of {args.rounds} done; {machine()}", flush=True)

    print(f"\nmedian (range) over {args.rounds} rounds; {machine()} at the end\n")
    header = ["server", "clients", "req/s", "p50 ms", "p99 ms", "errors", "CPU ms/req"]
    print_table(header, summary_rows(runs, [name for name, *_ in servers], args.concurrency))
    top = max(args.concurrency)

    def median(name: str, figure: Any) -> float:
        at_top = [run for run in runs if (run.server, run.concurrency) == (name, top)]
        return statistics.median(figure(run) for run in at_top)

    default, plain_one = "LitServe, defaults", "plain FastAPI, 1 thread"
    if {default, plain_one} <= {name for name, *_ in servers}:
        speed = median(default, Run.throughput.fget) / median(plain_one, Run.throughput.fget)
        p99 = median(default, lambda run: run.percentile_ms(0.99)) / median(
            plain_one, lambda run: run.percentile_ms(0.99)
        )
        errors = sum(run.errors for run in runs if run.server == default)
        print(
            f"at {top} clients, the server's defaults: {speed:.2f}x the requests/s of the plain "
            f"one-thread endpoint, p99 {p99:.2f}x its p99, {errors} errors in all their loads"
        )
        if 1 in args.concurrency:
            top = 1
            p50 = median(default, lambda run: run.percentile_ms(0.50)) / median(
                plain_one, lambda run: run.percentile_ms(0.50)
            )
            print(f"at 1 client, the server's defaults: p50 {p50:.2f}x the plain endpoint's p50")
    print(f"(baked project and server logs: {workdir})")


if __name__ == "__main__":
    main()
