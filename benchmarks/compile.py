"""What `--model.compile true` costs and gains on this machine's CPU, per training step.

    python benchmarks/compile.py [--widths 16 64] [--steps 40] [--warmup 5]

Bakes the default project and, for each ConvNet width (16 is the default network), builds its
model, optimizer and schedule with the project's own `TrainCLI` twice, compiled and not, with
the same weights, in a fresh process. On MNIST-shaped batches of the default batch size (the
figures do not depend on the pixels) it runs what a fit runs in the order a fit meets it: the
first training step, the epoch's last, smaller batch and the validation batches (each a graph
of its own to compile), then --steps training steps alternating eager and compiled, after
--warmup of each. It prints the compile time (the first calls' time beyond the same calls in
steady state), the median step of each, the per-step gain, and the steps a fit needs before
compiling pays off (compile time / gain); first with an empty Inductor cache, as a machine's
first compiled fit, then with the cache the first filled, as every later one. CPU only: a GPU
is not measured here. Prints the versions and the load average: timings under load are not
the machine's.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bake, machine, print_table, versions

# The default bake's data: MNIST's 55,000 training images (5,000 held out) and batch 128.
BATCH, TRAIN_IMAGES, VAL_IMAGES = 128, 55_000, 5_000


def measure(src: str, width: int, steps: int, warmup: int) -> dict[str, float]:
    """Seconds of the first calls and the median steps, eager and compiled (child process)."""
    sys.path.insert(0, src)
    import torch
    import torch.nn.functional as F
    from mnist_lab.support.process import configure_process
    from mnist_lab.train import TrainCLI

    configure_process()
    torch.manual_seed(0)
    flags = ["--trainer.logger=false", f"--model.net.init_args.width={width}"]
    models = {}
    for compiled in (False, True):
        cli = TrainCLI([*flags, f"--model.compile={str(compiled).lower()}"])
        models[compiled] = cli.model
    models[True].load_state_dict(models[False].state_dict())
    total_steps = 3 * (warmup + steps)
    optimizers = {key: model.optimization(total_steps) for key, model in models.items()}
    channels, height, image_width = models[False].input_shape

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (size, channels, height, image_width), dtype=torch.uint8)
        return images, torch.randint(0, 10, (size,))

    def train_step(compiled: bool, size: int = BATCH) -> float:
        model, (optimizer, scheduler) = models[compiled].train(), optimizers[compiled]
        images, labels = batch(size)
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return time.perf_counter() - start

    def val_step(compiled: bool, size: int = BATCH) -> float:
        model = models[compiled].eval()
        images, _ = batch(size)
        start = time.perf_counter()
        with torch.inference_mode():  # as Lightning validates
            model(images)
        return time.perf_counter() - start

    last_train, last_val = TRAIN_IMAGES % BATCH or BATCH, VAL_IMAGES % BATCH or BATCH
    first_calls = [
        lambda c: train_step(c),
        lambda c: train_step(c, last_train),
        lambda c: val_step(c),
        lambda c: val_step(c, last_val),
    ]
    first = {compiled: [call(compiled) for call in first_calls] for compiled in (False, True)}
    for _ in range(warmup):
        for compiled in (False, True):
            train_step(compiled)
    timed = {False: [], True: []}
    for _ in range(steps):
        for compiled in (False, True):
            timed[compiled].append(train_step(compiled))
    # The first calls again, now compiled: what they cost without compiling.
    steady = [call(True) for call in first_calls]
    return {
        "compile_seconds": sum(first[True]) - sum(steady),
        "eager_step": statistics.median(timed[False]),
        "compiled_step": statistics.median(timed[True]),
    }


def child(src: str, width: int, steps: int, warmup: int, cache: Path) -> dict[str, float]:
    """``measure`` in a fresh process whose Inductor cache is ``cache``."""
    arguments = ["--measure", src, "--widths", str(width), "--steps", str(steps)]
    completed = subprocess.run(
        [sys.executable, __file__, *arguments, "--warmup", str(warmup)],
        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(completed.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each first")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child: the project's src
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.widths[0], args.steps, args.warmup)))
        return

    print(versions("torch", "pytorch-lightning"))
    print(f"{machine()} (before)")
    _, project, _ = bake("compile")
    rows = []
    for width in args.widths:
        with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
            for label in ("empty", "filled"):
                found = child(str(project / "src"), width, args.steps, args.warmup, Path(cache))
                gain = found["eager_step"] - found["compiled_step"]
                pays_off = f"{found['compile_seconds'] / gain:.0f}" if gain > 0 else "never"
                rows.append(
                    [
                        f"ConvNet width {width}" + (" (default)" if width == 16 else ""),
                        label,
                        f"{found['compile_seconds']:.1f}",
                        f"{found['eager_step'] * 1000:.1f}",
                        f"{found['compiled_step'] * 1000:.1f}",
                        f"{gain * 1000:.1f}",
                        pays_off,
                    ]
                )
    header = ["network", "Inductor cache", "compile s", "eager ms/step", "compiled ms/step"]
    print_table([*header, "gain ms/step", "steps to pay off"], rows)
    print(f"{machine()} (after)")
    print(f"training steps of batch {BATCH} on the CPU; a GPU is not measured here")


if __name__ == "__main__":
    main()
