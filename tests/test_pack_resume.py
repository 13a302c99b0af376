"""A pack stopped by a real signal and resumed is the pack that was never stopped: the same
weights, learning-rate history, early-stopping epochs and test metrics (and a single run,
killed and resumed, is the run that was never killed)."""

import csv
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, data_overrides, run_train_main
from test_sweeps import generated_data_overrides

from actlab.record import read_record

# cosine schedule from two rates (two optimiser groups) + per-member early stopping + best-checkpoint testing,
# slow enough epochs to interrupt
PROTOCOL = ["activation=relu,tanh", "trainer.max_epochs=14", "callbacks=none", "logger=csv", "data.batch_size=8",
            "scheduler=cosine", "optimizer.lr=0.02,0.05", "callbacks.early_stopping.patience=3",
            "test_ckpt=best"]  # fmt: skip


def packed_sweep(fake_data_dir, sweep_dir):
    return ["-m", "hydra/launcher=packed", *PROTOCOL, *generated_data_overrides(fake_data_dir),
            f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip


def members(sweep_dir):
    return {p.parent.name: p.parent for p in sweep_dir.glob("*/metrics.json")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fake_data_dir):
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run_train_main(packed_sweep(fake_data_dir, root / "sweep"), root)
    assert result.returncode == 0, result.stderr[-3000:]
    return members(root / "sweep")


def interrupt_after_epochs(command, cwd, run_dirs, epochs, sig):
    """Start ``command``; once every run has finished ``epochs`` epochs, send ``sig``."""
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *command], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 180
    while not all((read_record(d) or {}).get("epochs_completed", 0) >= epochs for d in run_dirs(cwd)):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the pack did not get going"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc.returncode


def csv_column(run_dir, key):
    """``key``'s values in ``run_dir``'s csv/metrics.csv, in file order, with their epochs."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return [(int(row["epoch"]), float(row[key])) for row in csv.DictReader(file) if row.get(key)]


def assert_equal_runs(resumed_dir, reference_dir):
    resumed, reference = read_record(resumed_dir), read_record(reference_dir)
    assert resumed["status"] == reference["status"] == "completed"
    for key in ("epochs_completed", "stopped_epoch", "best_epoch"):
        assert resumed[key] == reference[key], key
    assert resumed["test_ckpt"]["epoch"] == reference["test_ckpt"]["epoch"]
    for key in ("train/lr", "train/loss", "val/acc", "val/loss"):
        assert resumed["history"][key] == pytest.approx(reference["history"][key], abs=1e-5), key
    for key in ("test/acc", "test/loss", "test/f1"):
        assert resumed[key] == pytest.approx(reference[key], abs=1e-5), key
    # logger=csv: the resumed run's metrics.csv has every epoch once, the earlier attempt's rows included
    mine, theirs = csv_column(resumed_dir, "val/acc"), csv_column(reference_dir, "val/acc")
    assert [epoch for epoch, _ in mine] == [epoch for epoch, _ in theirs] == list(range(len(theirs)))
    assert [value for _, value in mine] == pytest.approx([value for _, value in theirs], abs=1e-5)
    mine = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=False)
    theirs = torch.load(reference_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert mine["epoch"] == theirs["epoch"]
    for name, value in theirs["state_dict"].items():
        assert torch.allclose(mine["state_dict"][name], value, atol=1e-6), name


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_pack_interrupted_and_resumed_equals_the_uninterrupted_pack(sig, uninterrupted, tmp_path, fake_data_dir):
    command = packed_sweep(fake_data_dir, tmp_path / "sweep")
    code = interrupt_after_epochs(command, tmp_path, lambda cwd: members(cwd / "sweep").values() or [cwd / "-"],
                                  2, sig)  # fmt: skip
    assert code == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    stopped = {name: read_record(d) for name, d in members(tmp_path / "sweep").items()}
    assert all(r["status"] == ("interrupted" if sig == signal.SIGTERM else "running") for r in stopped.values())
    assert any(r["epochs_completed"] < uninterrupted_epochs(uninterrupted, n) for n, r in stopped.items())

    result = run_train_main([*command, "resume=true"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, run_dir in members(tmp_path / "sweep").items():
        assert read_record(run_dir)["resumed_from"].endswith("last.ckpt")
        assert_equal_runs(run_dir, uninterrupted[name])


def uninterrupted_epochs(uninterrupted, name):
    return read_record(uninterrupted[name])["epochs_completed"]


SINGLE = ["trainer.max_epochs=8", "callbacks=none", "logger=csv", "data.batch_size=8", "optimizer.lr=0.02",
          "scheduler=cosine"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_single(tmp_path_factory, fake_data_dir):
    root = tmp_path_factory.mktemp("uninterrupted_single")
    result = run_train_main([*data_overrides(fake_data_dir), *SINGLE, f"hydra.run.dir={root / 'run'}"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_record(root / "run")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_single_run_interrupted_and_resumed_equals_the_uninterrupted_run(sig, uninterrupted_single, tmp_path,
                                                                           fake_data_dir):  # fmt: skip
    run_dir = tmp_path / "run"
    command = [*data_overrides(fake_data_dir), *SINGLE, f"hydra.run.dir={run_dir}"]
    code = interrupt_after_epochs(command, tmp_path, lambda cwd: [run_dir], 2, sig)
    stopped = read_record(run_dir)
    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM and stopped["status"] == "interrupted"
    else:  # no handler ran: what the per-epoch heartbeat wrote survives, and goes lost once silent
        from datetime import datetime, timedelta

        from actlab.record import effective_status

        assert stopped["status"] == "running"
        later = datetime.fromisoformat(stopped["updated_at"]) + timedelta(hours=1)
        assert effective_status(stopped, later) == "lost"
    done = stopped["epochs_completed"]
    assert 2 <= done < 8 and len(stopped["history"]["val/acc"]) == done == len(stopped["epoch_times_s"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    result = run_train_main([*command, "resume=true"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_record(run_dir)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 8
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["resume_warning"] is None
    for key in ("train/loss", "train/lr", "val/acc"):
        assert resumed["history"][key] == pytest.approx(uninterrupted_single["history"][key], abs=1e-5), key
    assert resumed["test/acc"] == uninterrupted_single["test/acc"]
