"""Sweeps on a real (single-node, throw-away) SLURM cluster through hydra/launcher=slurm."""

import subprocess
import sys
import time

import pytest
import slurm_cluster
from conftest import REPO, run_train_main
from test_sweeps import SMOKE_DIRS, generated_data_overrides, job_dirs

from actlab.record import read_record

# skipped where no cluster can be started here (tests/conftest.py: NEEDS), failed so in CI
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


@pytest.mark.parametrize("launcher", ["slurm", "packed_slurm"])
def test_a_cluster_that_does_not_answer_is_one_clear_error(launcher, tmp_path, fake_data_dir):
    """SLURM's client is installed, but no controller answers: say what failed and how to check."""
    conf = tmp_path / "slurm.conf"  # a controller nobody runs, whatever this machine has
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=6999\nMessageTimeout=1\n"
                    "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=ALL Default=YES\n")  # fmt: skip
    command = ["-m", f"hydra/launcher={launcher}", "activation=relu,tanh", *generated_data_overrides(fake_data_dir),
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    result = run_train_main(command, tmp_path, env={"SLURM_CONF": str(conf)})  # sbatch reads it from the environment
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: SLURM did not take the jobs: ") and "sinfo" in hint


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster.slurm_cluster():
        yield


def launch(tmp_path, fake_data_dir, *args, launcher=LAUNCHER):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, str(REPO / "train.py"), "-m", *args, *launcher,
               *generated_data_overrides(fake_data_dir), f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    return subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ), sweep_dir


@pytest.fixture
def launched():
    """Processes started by a test, killed if the test leaves them running."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_smoke_grid_runs_as_a_slurm_job_array(cluster, launched, tmp_path, fake_data_dir):
    proc, sweep_dir = launch(tmp_path, fake_data_dir, "experiment=smoke", "model.depth=1")  # two array tasks
    launched.append(proc)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    jobs = job_dirs(sweep_dir)
    assert set(jobs) == {name for name in SMOKE_DIRS if name.endswith("depth=1")}
    for job in jobs.values():
        record = read_record(job)
        assert record["status"] == "completed" and record["epochs_completed"] == 2
    assert list((sweep_dir / ".submitit").iterdir())  # submitit's logs live in the sweep dir


PACKED = ["hydra/launcher=packed_slurm", "hydra.launcher.slurm.cpus_per_task=1", "hydra.launcher.slurm.mem_gb=1",
          "hydra.launcher.slurm.timeout_min=10"]  # fmt: skip


def test_packs_run_as_slurm_array_tasks(cluster, launched, tmp_path, fake_data_dir):
    proc, sweep_dir = launch(tmp_path, fake_data_dir, "experiment=smoke", "seed=1,2", launcher=PACKED)
    launched.append(proc)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    assert "2 SLURM array tasks" in output  # one per depth: two packs of 4
    records = [read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")]
    assert len(records) == 8 and all(r["status"] == "completed" and r["pack"]["size"] == 4 for r in records)


def test_a_preempted_run_and_a_preempted_pack_requeue_and_resume(cluster, launched, tmp_path, fake_data_dir):
    """SLURM's preemption signal to a single run's job and to a pack's, at once (their requeue
    delays overlap): each is requeued by Lightning and resumes from its own checkpoint."""
    # long enough to be running when the signal comes (an epoch of these takes ~0.04 s alone, ~0.1 s packed)
    slow = ["trainer.max_epochs=300", "callbacks=none", "data.batch_size=8", "logger=csv"]
    (tmp_path / "single").mkdir()
    (tmp_path / "packed").mkdir()
    single, single_dir = launch(tmp_path / "single", fake_data_dir, "activation=relu", *slow)
    packed, packed_dir = launch(tmp_path / "packed", fake_data_dir, "activation=relu,tanh", *slow, launcher=PACKED)
    launched += [single, packed]
    deadline = time.time() + 300
    # training has started: the single run's first checkpoint, and the pack's first epoch (both members)
    while len(list(single_dir.glob("*/checkpoints/last.ckpt"))) < 1 or \
            len(list(packed_dir.glob("*/checkpoints/last.ckpt"))) < 2:  # fmt: skip
        assert single.poll() is None, single.stdout.read()[-4000:]
        assert packed.poll() is None, packed.stdout.read()[-4000:]
        assert time.time() < deadline, "the jobs did not start training"
        time.sleep(0.2)
    # what SLURM does before a time limit or preemption: SIGUSR1 to the jobs' processes
    for job_id in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split():
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    for proc in (single, packed):
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-4000:]
    records = [read_record(p.parent) for sweep in (single_dir, packed_dir) for p in sweep.glob("*/metrics.json")]
    assert len(records) == 3
    for record in records:
        # what a failure needs to be told apart (a race with the requeue signal shows only under load)
        seen = {key: record.get(key) for key in ("output_dir", "status", "epochs_completed", "partial_epochs",
                                                 "resumed_from", "stop_reason")}  # fmt: skip
        seen.update(epochs_timed=len(record["epoch_times_s"]), epochs_in_history=len(record["history"]["val/acc"]))
        assert record["status"] == "completed" and record["epochs_completed"] == 300, seen
        assert "hpc_ckpt" in (record["resumed_from"] or ""), record["resumed_from"]  # Lightning's requeue checkpoint
        assert len(record["history"]["val/acc"]) >= 300  # the history came back with the checkpoint
        assert max(record["epoch_times_s"]) < 300  # the epoch resumed inside is timed from the resume
        assert record["test/acc"] > 0.5  # tested with the final weights, not the requeue checkpoint's
    assert not list(single_dir.glob("*/hpc_ckpt_*.ckpt"))  # spent requeue checkpoints are removed
    assert not list(packed_dir.glob(".packs/*/hpc_ckpt_*.ckpt"))
