"""A pack stopped by a real signal and resumed is the pack that was never stopped: the same
weights, learning-rate history, early-stopping epochs and test metrics (and a single run,
killed and resumed, is the run that was never killed)."""

import csv
import os
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
    """The uninterrupted single run's directory."""
    root = tmp_path_factory.mktemp("uninterrupted_single")
    result = run_train_main([*data_overrides(fake_data_dir), *SINGLE, f"hydra.run.dir={root / 'run'}"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


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
    reference = read_record(uninterrupted_single)
    for key in ("train/loss", "train/lr", "val/acc"):
        assert resumed["history"][key] == pytest.approx(reference["history"][key], abs=1e-5), key
    assert resumed["test/acc"] == reference["test/acc"]


def slurm_job(tmp_path):
    """The environment of a SLURM job as Lightning sees it (it then answers SIGUSR1 by saving its
    requeue checkpoint and asking ``scontrol`` to requeue the job), with an ``scontrol`` that notes
    the request in ``tmp_path/requeued``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "requeued"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    job = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "actlab-test", "SLURM_JOB_ID": "4242", "SLURM_NODEID": "0",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}  # fmt: skip
    return {**job, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(("hook", "batch"), [("on_train_batch_end", -1), ("on_validation_start", -1),
                                           ("on_before_optimizer_step", 20)],
                         ids=["among-the-last-batchs-end-hooks", "in-validation", "inside-an-epoch"])  # fmt: skip
def test_a_run_requeued_by_slurm_goes_on_as_the_uninterrupted_run(hook, batch, uninterrupted_single, tmp_path,
                                                                  fake_data_dir):  # fmt: skip
    """SLURM's requeue signal, wherever it lands, saves a checkpoint the requeued job goes on
    from as the run would have gone on: the same weights, history and test metrics. Where
    Lightning's handler saved it at once, a run resumed from among the epoch's last batch's end
    hooks with the epoch counted done, never validated or recorded (it finished with 299 of its
    300 epochs); from inside validation, with the epoch's validation metrics over the batches
    left; from inside an epoch, with the epoch's remaining batches drawn from another shuffle.
    (The first signals at a batch hook, which puts the run on one step per Lightning call; the
    others keep its groups of 25 steps, and the last lands in the epoch's first group, handled
    at the second's start.)"""
    env = slurm_job(tmp_path)
    run_dir = tmp_path / "run"
    command = [*data_overrides(fake_data_dir), *SINGLE, f"hydra.run.dir={run_dir}"]
    probe = ["+callbacks.probe._target_=requeue_probe.SignalAt", f"+callbacks.probe.hook={hook}",
             "+callbacks.probe.epoch=2", f"+callbacks.probe.batch={batch}",
             f"+callbacks.probe.requeued={tmp_path / 'requeued'}"]  # fmt: skip
    killed = subprocess.run([sys.executable, str(REPO / "train.py"), *command, *probe], cwd=tmp_path,
                            env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(  # this tree's actlab
                                [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])},
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == 9, killed.stderr[-3000:]  # killed once its job was requeued
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]
    assert read_record(run_dir)["epochs_completed"] < 8
    result = run_train_main(command, tmp_path, env=env)  # the requeued job: the same command
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hpc_ckpt" in read_record(run_dir)["resumed_from"]  # Lightning's requeue checkpoint
    assert_equal_runs(run_dir, uninterrupted_single)


def test_a_pack_requeued_by_slurm_goes_on_as_the_uninterrupted_pack(uninterrupted, tmp_path, fake_data_dir):
    """SLURM's requeue signal to a pack, wherever in its third epoch it lands (the checkpoint is
    then taken at the next training call's start: inside the epoch, where the members' loaders
    must draw the epoch's own batches, when it lands in the first of the epoch's two calls, as
    it mostly does): every member goes on as in the pack that was never stopped."""
    env = slurm_job(tmp_path)
    command = packed_sweep(fake_data_dir, tmp_path / "sweep")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *command], cwd=tmp_path,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.time() + 180
    while not (runs := members(tmp_path / "sweep")) or \
            not all((read_record(d) or {}).get("epochs_completed", 0) >= 2 for d in runs.values()):  # fmt: skip
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the pack did not get going"
        time.sleep(0.02)
    time.sleep(read_record(next(iter(runs.values())))["epoch_times_s"][-1] / 4)  # in the epoch's first call, likely
    proc.send_signal(signal.SIGUSR1)
    while not (tmp_path / "requeued").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the pack was not requeued"
        time.sleep(0.02)
    proc.kill()  # SLURM's kill at the job's limit
    proc.wait(timeout=60)
    assert any(read_record(d)["epochs_completed"] < uninterrupted_epochs(uninterrupted, n) for n, d in runs.items())
    result = run_train_main(command, tmp_path, env=env)  # the requeued job: the same command
    assert result.returncode == 0, result.stderr[-3000:]
    for name, run_dir in members(tmp_path / "sweep").items():
        assert "hpc_ckpt" in read_record(run_dir)["resumed_from"]
        assert_equal_runs(run_dir, uninterrupted[name])
