"""Every file the commands write is the old one or the complete new one: after a kill in the
middle of a checkpoint write on another file system, and when the disk fills."""

import signal
import subprocess
from pathlib import Path

import pytest
from helpers import QUICK_FIT, Run, callbacks_flag, command, exit_message, mounted_tmpfs

from {{ cookiecutter.package_name }} import train
from {{ cookiecutter.package_name }}.support.checkpoints import read_checkpoint


def checkpoints_load(folder: Path) -> dict[str, int]:
    """Every checkpoint under ``folder``, read as training reads them: name -> global step."""
    return {path.name: read_checkpoint(path)["global_step"] for path in folder.rglob("*.ckpt")}


@pytest.mark.slow
def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_the_old_one(
    data_flags: list[str], steps_per_epoch: int, tmp_path: Path, child_env: dict[str, str]
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with mounted_tmpfs(tmp_path / "volume", 256 * 2**20) as volume:
        # The second last.ckpt, at the end of epoch 2, is written slowly and killed halfway.
        slow = {
            "class_path": "helpers.SlowCheckpointWrites",
            "init_args": {"name": "last.ckpt", "nth": 2},
        }
        fit = command(
            "train", *data_flags, *QUICK_FIT, "--trainer.logger=false", callbacks_flag(slow)
        )
        process = subprocess.Popen(
            fit,
            cwd=volume,
            env={**child_env, "TMPDIR": str(temporary)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in process.stdout:
            if "checkpoint half written" in line:
                process.send_signal(signal.SIGKILL)
                break
        assert process.wait(timeout=60) == -signal.SIGKILL
        last = volume / "logs" / "checkpoints" / "last.ckpt"
        assert read_checkpoint(last)["global_step"] == steps_per_epoch, "not the epoch-1 state"
        assert list(temporary.iterdir()) == [], "the write went through the temporary folder"

        # The run resumes from it, and the killed write's leftover goes with the next write.
        resume = command(
            "train", *data_flags, *QUICK_FIT, "--trainer.logger=false", "--ckpt_path=last"
        )
        completed = subprocess.run(
            resume, cwd=volume, env=child_env, capture_output=True, text=True
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert checkpoints_load(volume)["last.ckpt"] == 2 * steps_per_epoch
        assert not list(volume.rglob("*partial*"))


def test_a_full_disk_stops_the_fit_in_one_line_and_leaves_no_truncated_checkpoint(
    trained: Run, data_flags: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Room for two checkpoints of the same model and a bit.
    size = (trained.best.parent / "last.ckpt").stat().st_size
    with mounted_tmpfs(tmp_path / "small", 2 * size + 64 * 1024) as small:
        monkeypatch.chdir(small)
        argv = [*data_flags, *QUICK_FIT, "--trainer.logger=false", "--trainer.max_epochs=3"]
        message = exit_message(train.main, argv)
        assert message.startswith("error: cannot write ") and "No space left on device" in message
        written = checkpoints_load(small)  # each one loads: none is truncated
        assert written and not list(small.rglob("*partial*"))
        assert not (small / "logs" / "test_metrics.json").exists()
