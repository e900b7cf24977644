"""The baked project's model, data and schedule in a plain PyTorch loop, for the overhead ratio.

    python plain_loop.py PROJECT_SRC DATA_DIR EPOCHS
prints the fit seconds (training and per-epoch validation) as JSON.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F


def main(src: str, data_dir: str, epochs: int) -> None:
    sys.path.insert(0, src)
    from mnist_lab.support.process import configure_process, default_precision
    from mnist_lab.train import TrainCLI

    # The same process settings as the train command, and the model, data module, optimizer
    # and schedule its packaged config builds (nothing is fitted by building them).
    configure_process()
    cli = TrainCLI([f"--data.data_dir={data_dir}", "--trainer.logger=false"])
    model, datamodule = cli.model, cli.datamodule
    torch.manual_seed(42)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(
        default_precision()
    )
    datamodule.setup("fit")
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    model.to(device)
    optimizer, scheduler = model.optimization(epochs * len(train_loader))
    scaler = torch.amp.GradScaler(enabled=autocast_dtype == torch.float16)

    def forward(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(images)

    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            loss = F.cross_entropy(forward(images), labels.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.inference_mode():
            for images, labels in val_loader:
                correct += (forward(images).argmax(1) == labels.to(device)).sum()
        accuracy = correct.item() / len(datamodule.datasets["val"])
    fit_seconds = time.perf_counter() - start
    print(json.dumps({"fit_seconds": fit_seconds, "val_acc": accuracy}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
