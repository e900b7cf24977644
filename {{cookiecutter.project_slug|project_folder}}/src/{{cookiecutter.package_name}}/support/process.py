"""Process-wide settings of the commands, and the choices that depend on the hardware."""

import atexit
import ctypes
import ctypes.util
import gc

import torch

from .errors import ConfigError

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def configure_process() -> None:
    """Settings every command makes once, at its start, for the whole process:

    - glibc keeps freed tensor memory for the next step instead of returning it to the kernel,
      which would page-fault it back in, zero-filled: most of a CPU run's system time. The
      allocators PyTorch recommends for CPU training (jemalloc, tcmalloc) do the same.
    - The objects of the imports (torch, Lightning, ...) live as long as the process; frozen,
      the cyclic garbage collector stops walking them every few thousand allocations.
    - On CUDA: TF32 matmuls and autotuned convolutions (`--trainer.deterministic true` turns
      autotuning off again).
    - A DDP process group is ended before the interpreter exits: torn down during interpreter
      exit, gloo's threads can abort the process after a successful run.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
        mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, 4 * MAX_MMAP_THRESHOLD)
    except (OSError, AttributeError, TypeError):  # a C library other than glibc
        pass
    gc.freeze()
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    atexit.register(close_process_group)


def default_precision() -> str:
    """bf16 autocast where CUDA supports it, fp16 autocast on older GPUs, fp32 on CPU."""
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def require_compiler() -> None:
    """Refuse torch.compile in one line, before the run starts, where its code generator
    (Inductor) finds no C++ compiler to build its kernels with; it never falls back to the
    uncompiled network silently."""
    # Inductor's own lookup (g++, or $CXX): the answer the first compiled step would get.
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        raise ConfigError(
            "--model.compile true needs a C++ compiler (g++, or the one $CXX names): install "
            "one, or train with --model.compile false"
        ) from None


def close_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
