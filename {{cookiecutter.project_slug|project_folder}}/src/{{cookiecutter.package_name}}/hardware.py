"""Trainer defaults chosen from the hardware this process sees."""

import ctypes
import ctypes.util
from typing import Any

import torch

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64 bits.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def reuse_freed_memory() -> None:
    """Let glibc keep freed tensor memory for the next step instead of returning it.

    By default glibc hands large freed blocks back to the kernel, and the next training step
    page-faults them in again, zero-filled: most of a CPU run's system time. Keeping them is
    what the allocators PyTorch recommends for CPU training (jemalloc, tcmalloc) do too. Does
    nothing where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return
    mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, 4 * MAX_MMAP_THRESHOLD)


def default_precision() -> str:
    """bf16 autocast where CUDA supports it, fp16 autocast on older GPUs, fp32 on CPU."""
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def close_process_group() -> None:
    """End a DDP run's process group before the interpreter exits.

    Lightning leaves it open; torn down during interpreter exit, gloo's threads can abort the
    process ("terminate called without an active exception") after a successful run.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def trainer_defaults() -> dict[str, Any]:
    """Set the global CUDA speed flags and return matching Trainer arguments.

    Every value is only a default: ``--trainer.precision``, ``--trainer.devices`` and the
    rest override it from the command line or a config file.
    """
    reuse_freed_memory()
    if torch.cuda.is_available():
        # TF32 matmuls and autotuned convolutions; `deterministic=True` turns autotuning off.
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    return {
        "accelerator": "auto",
        "devices": "auto",
        "strategy": "auto",
        "precision": default_precision(),
    }
