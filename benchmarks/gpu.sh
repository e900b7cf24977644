#!/usr/bin/env bash
# The GPU figures in one run, on a machine with a GPU and no network.
#
#   benchmarks/gpu.sh prepare [MNIST_DIR]   # here, with a package index: fills .gpu/
#   benchmarks/gpu.sh run                   # on the GPU machine, with .gpu/ copied along
#
# prepare packs real MNIST (MNIST_DIR/MNIST/raw, default $MNIST_DATA_DIR, gzipped: 12 MB) and
# the wheels of the packages the GPU machine lacks (for its Python 3.12) into the git-ignored
# folder .gpu/. run installs those wheels into a virtual environment over the machine's own
# torch and Lightning (or uses $PYTHON, an environment that has everything), then prints: the
# GPU and the settings support/process.py picks there, the training benchmark (benchmarks/run.py:
# default against the 0.1.0 yardstick and against a plain PyTorch loop, test accuracy over
# three seeds), predict on the 10,000 test images (benchmarks/predict.py) and the serving
# benchmark (benchmarks/serve.py). Each report is also written to $OUT (default
# /tmp/gpu-report), with the benchmarks' logs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages the GPU machine's image lacks, at the versions the template is tested with.
WHEELS=(
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
    cookiecutter==2.7.1 arrow==1.4.0 binaryornot==0.6.0 python-slugify==9.2.0
    text-unidecode==1.3 tzdata==2026.6
    litserve==0.2.19 python-multipart==0.0.34 fastapi==0.165.0 starlette==1.10.0
    uvicorn==0.54.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5 opentelemetry-api==1.45.2 pyzmq==27.3.0
)

# The GPU, the library versions and the settings support/process.py picks on this machine.
MACHINE_REPORT='
import importlib.util
from pathlib import Path

import pytorch_lightning
import torch

# support/process.py in the template package folder is plain Python: imported by its path.
[path] = Path(".").glob("*/src/*/support/process.py")
spec = importlib.util.spec_from_file_location("process", path)
process = importlib.util.module_from_spec(spec)
spec.loader.exec_module(process)
process.configure_process()
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"{device}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"Lightning {pytorch_lightning.__version__}")
print(f"default precision: {process.default_precision()}")
print(f"float32 matmul precision: {torch.get_float32_matmul_precision()}, "
      f"cudnn.benchmark: {torch.backends.cudnn.benchmark}")
'

prepare() {
    local mnist="${1:-${MNIST_DATA_DIR:-}}/MNIST/raw"
    if [[ ! -f "$mnist/train-images-idx3-ubyte" ]]; then
        echo "error: pass the folder holding MNIST/raw (or set MNIST_DATA_DIR)" >&2
        exit 2
    fi
    rm -rf .gpu && mkdir -p .gpu/mnist .gpu/wheels
    for file in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
        t10k-labels-idx1-ubyte; do
        gzip -c "$mnist/$file" >".gpu/mnist/$file.gz"
    done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .gpu/wheels \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "${WHEELS[@]}"
    du -sh .gpu
}

run() {
    local out="${OUT:-/tmp/gpu-report}" data=/tmp/gpu-data python="${PYTHON:-}"
    if [[ ! -d .gpu/mnist ]]; then
        echo "error: no .gpu/ folder: run benchmarks/gpu.sh prepare first" >&2
        exit 2
    fi
    mkdir -p "$out" "$data/MNIST/raw"
    for file in .gpu/mnist/*.gz; do
        gunzip -c "$file" >"$data/MNIST/raw/$(basename "$file" .gz)"
    done
    if [[ -z "$python" ]]; then
        python3 -m venv --system-site-packages /tmp/gpu-venv
        /tmp/gpu-venv/bin/pip install --quiet --no-index --no-deps --no-compile .gpu/wheels/*.whl
        python=/tmp/gpu-venv/bin/python
    fi
    export PYTHONUNBUFFERED=1

    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; } 2>&1 |
        tee "$out/machine.txt"
    "$python" -c "$MACHINE_REPORT" | tee -a "$out/machine.txt"
    "$python" benchmarks/run.py --data-dir "$data" 2>"$out/run.log" | tee "$out/run.txt"
    local checkpoint # the newest best checkpoint of the training benchmark
    checkpoint=$(ls -t /tmp/lightning-template-bench-*/*/logs/*/*/checkpoints/epoch*.ckpt)
    checkpoint=${checkpoint%%$'\n'*}
    "$python" benchmarks/predict.py --data-dir "$data" --ckpt_path "$checkpoint" \
        2>"$out/predict.log" | tee "$out/predict.txt"
    "$python" benchmarks/serve.py --ckpt_path "$checkpoint" --requests 2000 --max-seconds 20 \
        2>"$out/serve.log" | tee "$out/serve.txt"
}

case "${1:-}" in
prepare) prepare "${2:-}" ;;
run) run ;;
*)
    echo "usage: benchmarks/gpu.sh prepare [MNIST_DIR] | run" >&2
    exit 2
    ;;
esac
