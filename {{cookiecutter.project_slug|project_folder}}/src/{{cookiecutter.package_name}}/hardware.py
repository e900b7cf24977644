"""Trainer defaults chosen from the hardware this process sees."""

from typing import Any

import torch


def default_precision() -> str:
    """bf16 autocast where CUDA supports it, fp16 autocast on older GPUs, fp32 on CPU."""
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def trainer_defaults() -> dict[str, Any]:
    """Set the global CUDA speed flags and return matching Trainer arguments.

    Every value is only a default: ``--trainer.precision``, ``--trainer.devices`` and the
    rest override it from the command line or a config file.
    """
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
