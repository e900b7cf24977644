"""The server's processes among themselves: how the requests reach the model workers and the
answers the HTTP processes, and a lifetime bound to the server's main process."""

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import struct
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from fastapi import HTTPException
from litserve.loops.simple_loops import BatchedLoop
from litserve.transport.base import MessageTransport
from litserve.utils import LitAPIStatus, LoopResponseType

from ..support.errors import one_line

logger = logging.getLogger(__name__)

SIZE = struct.Struct("!Q")  # the length of the message that follows it in a pipe
STATUSES = {LitAPIStatus.START, LitAPIStatus.OK, LitAPIStatus.ERROR, LitAPIStatus.FINISH_STREAMING}
# Linux's prctl (sys/prctl.h), looked up here and not in a child right after a fork.
PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


class PipeTransport(MessageTransport):
    """LitServe's answers, from the model workers to the HTTP process that holds the request:
    one anonymous pipe per HTTP process, its write end shared by the model workers under a lock.

    A pipe has no name: only the server's processes hold it, and it is gone with them however
    they end. It stands in for LitServe's ZeroMQ broker (``fast_queue``), which binds
    ``ipc:///tmp/zmq-<uuid>.ipc`` sockets without authentication and unpickles whatever
    arrives on them: any process of the user (of any user, under umask 000) could read every
    answer or run code in the server. The fix belongs upstream (``Broker`` and
    ``BaseConsumer._parse_message`` in src/litserve/transport/zmq_queue.py,
    ``generate_random_zmq_address`` in src/litserve/utils.py). LitServe's other transport
    polls multiprocessing manager queues from a thread, a thread hop per answer. The requests
    travel over pipes too (``RequestPipes``).

    The HTTP process reads its pipe in its event loop, never blocking it on half a message
    (``Connection.recv_bytes`` would: the connections are only what carries a pipe into the
    spawned model workers). The request's id is pickled apart from its answer, so that an
    answer that cannot be read still names its request, which gets a 500. Anything else it
    cannot read is logged and skipped: an error that reaches LitServe's loop ends it for good,
    and every later answer with it (``response_queue_to_buffer`` in src/litserve/server.py
    upstream).
    """

    def __init__(
        self, writers: list[Connection], lock: Any, readers: list[Connection] | None = None
    ) -> None:
        self.writers, self.lock, self.readers = writers, lock, readers or []
        self.stream: asyncio.StreamReader | None = None

    @classmethod
    def for_consumers(cls, count: int) -> "PipeTransport":
        pipes = [multiprocessing.Pipe(duplex=False) for _ in range(count)]
        # The model workers are spawned processes: a lock of that context reaches them.
        lock = multiprocessing.get_context("spawn").Lock()
        return cls([writer for _, writer in pipes], lock, [reader for reader, _ in pipes])

    def __reduce__(self) -> tuple:
        return type(self), (self.writers, self.lock)  # the model workers write, never read

    def send(self, item: Any, consumer_id: int) -> None:
        uid, answer = item
        message = pickle.dumps((uid, pickle.dumps(answer)))
        data = memoryview(SIZE.pack(len(message)) + message)
        with self.lock:
            while data:
                data = data[os.write(self.writers[consumer_id].fileno(), data) :]

    async def areceive(self, consumer_id: int, timeout: float | None = None) -> tuple:
        """The next answer for this HTTP process; ``timeout`` bounds the wait for it to start."""
        if self.stream is None:
            self.stream = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(self.stream)
            loop = asyncio.get_running_loop()
            await loop.connect_read_pipe(lambda: protocol, self.readers[consumer_id])
        while True:
            size = await asyncio.wait_for(self.stream.readexactly(SIZE.size), timeout)
            answer = read_answer(await self.stream.readexactly(SIZE.unpack(size)[0]))
            if answer is not None:
                return answer


class RequestPipes:
    """LitServe's request queue: the requests, from the HTTP processes to whichever model worker
    is free, over one anonymous pipe per HTTP process (private, as ``PipeTransport``'s).

    An HTTP process writes its own pipe from its event loop and never waits on it: what the
    pipe cannot take yet stays in the process until the loop finds the pipe writable. The
    model workers read in turn, under a lock, one whole request at a time. LitServe's queue is
    a multiprocessing manager's (``_init_manager`` and ``_submit_request`` in
    src/litserve/server.py): each put is a round trip to the manager process, during which the
    event loop of the HTTP process stands still, and each get another.
    """

    def __init__(
        self, readers: list[Connection], lock: Any, writers: list[Connection] | None = None
    ) -> None:
        self.readers, self.lock, self.writers = readers, lock, writers or []
        self.pending: dict[int, bytearray] = {}  # by pipe: what it could not take yet
        self.turn = 0  # the pipe read first next time: each HTTP process gets its turn

    @classmethod
    def for_producers(cls, count: int) -> "RequestPipes":
        pipes = [multiprocessing.Pipe(duplex=False) for _ in range(count)]
        for _, writer in pipes:
            os.set_blocking(writer.fileno(), False)
        lock = multiprocessing.get_context("spawn").Lock()  # see PipeTransport.for_consumers
        return cls([reader for reader, _ in pipes], lock, [writer for _, writer in pipes])

    def __reduce__(self) -> tuple:
        return type(self), (self.readers, self.lock)  # the model workers read, never write

    def put(self, item: tuple) -> None:
        """Send ``(response_queue_id, uid, timestamp, payload)`` from the event loop of HTTP
        process ``response_queue_id``, which alone writes that pipe."""
        message = pickle.dumps(item)
        fd = self.writers[item[0]].fileno()
        self.pending.setdefault(fd, bytearray()).extend(SIZE.pack(len(message)) + message)
        self.flush(fd)

    def flush(self, fd: int) -> None:
        pending = self.pending[fd]
        with contextlib.suppress(BlockingIOError):  # full: the model workers are busy
            del pending[: os.write(fd, pending)]
        loop = asyncio.get_running_loop()
        if pending:
            loop.add_writer(fd, self.flush, fd)
        else:
            loop.remove_writer(fd)

    def get(self, block: bool = True, timeout: float | None = None) -> tuple:
        """The next request of any HTTP process; ``queue.Empty`` if none came within
        ``timeout`` seconds (without ``block``: if none is there)."""
        timeout = timeout if block else 0
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.lock.acquire(timeout=timeout):  # another model worker is reading
            raise queue.Empty
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = [self.readers.index(pipe) for pipe in wait(self.readers, remaining)]
            if not ready:
                raise queue.Empty
            first = min(ready, key=lambda index: (index - self.turn) % len(self.readers))
            self.turn = (first + 1) % len(self.readers)
            fd = self.readers[first].fileno()
            message = read_exactly(fd, SIZE.unpack(read_exactly(fd, SIZE.size))[0])
        finally:
            self.lock.release()
        return pickle.loads(message)


class OpportunisticBatches(BatchedLoop):
    """LitServe's batching loop, whose batch is every request that queued while the model was
    busy, up to ``max_batch_size``, and those that come within ``batch_timeout`` of the first:
    at 0 (the default), a request that comes alone waits for nothing. LitServe's own
    (``collate_requests`` in src/litserve/loops/base.py) holds every batch, a lone request's
    too, for the whole ``batch_timeout``, and at 0 polls its queue without pause."""

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple:
        batch: list[tuple] = []
        timed_out: list[tuple] = []
        deadline = None
        while len(batch) + len(timed_out) < lit_api.max_batch_size:
            # The first for at most a second, as LitServe's loops wait, then what came since.
            left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                response_queue_id, uid, timestamp, payload = request_queue.get(timeout=left)
            except queue.Empty:
                break
            if deadline is None:
                deadline = time.monotonic() + lit_api.batch_timeout
            if lit_api.request_timeout not in (-1, False) and (
                time.monotonic() - timestamp > lit_api.request_timeout
            ):
                timed_out.append((response_queue_id, uid))  # LitServe answers 504
            else:
                batch.append((response_queue_id, uid, payload))
        return batch, timed_out


def read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes of a pipe; the writer sends each message whole, soon."""
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the HTTP processes closed their pipes")
        data += chunk
    return bytes(data)


def read_answer(message: bytes) -> tuple | None:
    """A message as LitServe's loop takes it, ``(uid, (data, status, kind, worker_id))``, or
    None for one that is not; one whose answer cannot be read answers its request 500."""
    try:
        uid, answer = pickle.loads(message)
        if not isinstance(uid, str) or not isinstance(answer, bytes):
            raise TypeError(f"a message of {type(uid).__name__} and {type(answer).__name__}")
    except Exception as error:
        logger.error("skipped a message of a model worker: %s", one_line(error))
        return None
    try:
        data, status, kind, worker_id = pickle.loads(answer)
        if status not in STATUSES or not isinstance(kind, LoopResponseType):
            raise TypeError(f"status {status!r} and kind {kind!r}")
        return uid, (data, status, kind, int(worker_id))
    except Exception as error:
        logger.error("the answer to request %s cannot be read: %s", uid, one_line(error))
        failed = HTTPException(500, "the server could not read the model's answer")
        return uid, (failed, LitAPIStatus.ERROR, LoopResponseType.REGULAR, -1)


def die_with_parent(parent: int, signum: int = signal.SIGKILL) -> None:
    """On Linux, have the kernel send this process ``signum`` when its parent ends, however it
    ends (precisely: when the parent's thread that started this process ends). Elsewhere,
    nothing."""
    if PRCTL is None:
        return
    PRCTL(PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent ended before: nothing will send the signal
        os.kill(os.getpid(), signum)
