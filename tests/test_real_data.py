"""A real (short) training run on the Debian FashionMNIST files, through the CLI."""

import pytest
from conftest import requires_real_data, run_train_main

from actlab.record import read_record

pytestmark = [pytest.mark.slow, requires_real_data]


def test_default_model_learns_fashion_mnist_in_two_epochs(tmp_path):
    result = run_train_main(["trainer.max_epochs=2", "data.data_dir=null"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    record = read_record(run_dir)
    assert record["status"] == "completed" and record["epochs_completed"] == 2
    assert record["test/acc"] > 0.5  # chance is 0.1
    assert record["history"]["train/loss"][1] < record["history"]["train/loss"][0]
    assert 0 <= record["dead/overall"] < 0.5
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
