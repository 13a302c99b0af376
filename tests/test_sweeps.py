"""Sweeps: multirun with both local launchers, fault tolerance, resume, the summary."""

import json
import math
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import REPO, data_overrides, run_train_main
from omegaconf import OmegaConf

from actlab.config import CONFIG_DIR
from actlab.record import read_record, write_record
from actlab.summary import load_runs, summarize

SMOKE_DIRS = {f"activation={a},model.depth={d}" for a in ("relu", "tanh") for d in (1, 2)}


def generated_data_overrides(fake_data_dir) -> list[str]:
    """The generated-data overrides, kept out of job directory names like the real excluded keys."""
    overrides = data_overrides(fake_data_dir)
    excluded = OmegaConf.load(CONFIG_DIR / "hydra" / "default.yaml").job.config.override_dirname.exclude_keys
    keys = [*excluded, *(o.split("=", 1)[0] for o in overrides)]
    return [*overrides, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"]


def sweep(tmp_path, fake_data_dir, *args, name="sweep", expect=None):
    sweep_dir = tmp_path / name
    overrides = ["-m", *args, *generated_data_overrides(fake_data_dir), f"hydra.sweep.dir={sweep_dir}"]
    return run_train_main(overrides, tmp_path, expect=expect), sweep_dir


def job_dirs(sweep_dir: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep_dir.glob("*/metrics.json")}


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, fake_data_dir) -> Path:
    """One smoke grid (2 activations x 2 depths, basic launcher), shared by the tests that read
    it; a test that changes it works on a copy (:func:`copy_of`)."""
    root = tmp_path_factory.mktemp("smoke")
    result, sweep_dir = sweep(root, fake_data_dir, "experiment=smoke", "hydra/launcher=basic")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def copy_of(sweep_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(sweep_dir, tmp_path / "sweep"))


@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_smoke_grid_with_each_local_launcher(launcher, tmp_path, fake_data_dir, smoke_sweep):
    if launcher == "basic":
        sweep_dir = smoke_sweep
    else:
        result, sweep_dir = sweep(tmp_path, fake_data_dir, "experiment=smoke", f"hydra/launcher={launcher}")
        assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert set(jobs) == SMOKE_DIRS  # named by their overrides
    for name, job in jobs.items():
        record = read_record(job)
        assert record["status"] == "completed", record.get("error")
        assert f"activation={record['activation']}" in name and record["depth"] == int(name[-1])
        assert record["epochs_completed"] == 2


def test_default_sweep_dirs_never_collide(tmp_path, fake_data_dir):
    args = [
        "-m",
        "experiment=smoke",
        "model.depth=1",
        "activation=relu",
        *generated_data_overrides(fake_data_dir),
    ]
    procs = [
        subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    sweeps = list((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 2  # started together, two directories
    assert all(read_record(s / "activation=relu,model.depth=1")["status"] == "completed" for s in sweeps)


def test_failing_and_diverging_jobs_do_not_stop_the_sweep(tmp_path, fake_data_dir):
    message = "model.depth must be a positive integer, got 0"
    result, sweep_dir = sweep(
        tmp_path, fake_data_dir, "model.depth=0,4", "optimizer.lr=0.001,1e6", "optimizer.momentum=0.99",
        "trainer.max_epochs=3", expect=message,
    )  # fmt: skip
    # the sweep reports its first failure as Hydra does (the job's error, exit status 1)...
    assert result.returncode == 1, result.stderr[-3000:]
    error, hint = [line for line in result.stderr.strip().splitlines() if line][-2:]
    assert error == f"actlab.errors.ConfigError: {message}" and "HYDRA_FULL_ERROR=1" in hint, result.stderr[-3000:]
    statuses = {name.split(",optimizer.momentum")[0]: read_record(job)["status"]
                for name, job in job_dirs(sweep_dir).items()}  # fmt: skip
    assert statuses == {  # ...after every job ran and recorded what happened
        "model.depth=0,optimizer.lr=0.001": "failed",
        "model.depth=0,optimizer.lr=1000000.0": "failed",
        "model.depth=4,optimizer.lr=0.001": "completed",
        "model.depth=4,optimizer.lr=1000000.0": "diverged",
    }
    (failed,) = [
        job for name, job in job_dirs(sweep_dir).items() if name.startswith("model.depth=0,optimizer.lr=0.001")
    ]
    assert "model.depth must be a positive integer" in read_record(failed)["error"]


def test_resume_skips_completed_jobs_and_resumes_interrupted_ones(tmp_path, fake_data_dir, smoke_sweep):
    copy_of(smoke_sweep, tmp_path)  # the sweep as it was left, resumed in place
    jobs = {name: job for name, job in job_dirs(tmp_path / "sweep").items() if "relu" in name}
    before = {name: read_record(job) for name, job in jobs.items()}
    # pretend the depth-2 job was interrupted after its first epoch
    interrupted = jobs["activation=relu,model.depth=2"]
    write_record(interrupted, {**before["activation=relu,model.depth=2"], "status": "interrupted"})
    result, _ = sweep(tmp_path, fake_data_dir, "experiment=smoke", "activation=relu", "resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = read_record(jobs["activation=relu,model.depth=1"])
    assert skipped == before["activation=relu,model.depth=1"]  # untouched: not re-run
    resumed = read_record(interrupted)
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["epochs_completed"] == 2


def write_synthetic_sweep(root: Path) -> None:
    def record(name, activation, depth, seed, status="completed", acc=None, loss=None, dead=0.0, history=None):
        write_record(root / name, {
            "status": status, "activation": activation, "depth": depth, "seed": seed, "test/acc": acc,
            "test/loss": loss, "dead/overall": dead, "epoch_time_s": 2.0, "history": {"val/acc": history or []},
            "overrides": [f"activation={activation}", f"model.depth={depth}", f"seed={seed}"],
        })  # fmt: skip

    record("a", "relu", 2, 1, acc=0.80, loss=0.5, dead=0.10, history=[0.5, 0.7])
    record("b", "relu", 2, 2, acc=0.90, loss=0.3, dead=0.20, history=[0.6, 0.8])
    record("c", "relu", 4, 1, acc=0.70, loss=0.9, history=[0.4, 0.6])
    record("d", "tanh", 2, 1, acc=0.60, loss=1.0, history=[0.3, 0.5])
    record("e", "tanh", 2, 2, status="diverged", acc=None, loss=None)
    # failed before building its model: no depth, but its resolved config says it
    write_record(
        root / "f", {"status": "failed", "activation": "tanh", "config": {"model": {"depth": 4}}, "error": "x"}
    )
    # killed outright two hours ago (no heartbeat since), and one still alive
    write_record(
        root / "h",
        {
            "status": "running",
            "activation": "relu",
            "depth": 4,
            "epoch_times_s": [2.0],
            "started_at": "2026-01-01T00:00:00+00:00",
            "updated_at": "2026-01-01T00:10:00+00:00",
        },
    )
    write_record(
        root / "i",
        {"status": "running", "activation": "relu", "depth": 4, "updated_at": datetime.now(timezone.utc).isoformat()},
    )
    (root / "g").mkdir()
    (root / "g" / "metrics.json").write_text("{ truncated")  # an unreadable record is counted and named


def test_summary_of_a_synthetic_sweep_has_the_known_numbers(tmp_path):
    write_synthetic_sweep(tmp_path / "sweep")
    paths = summarize(tmp_path / "sweep", tmp_path / "out")
    assert {p.name for p in paths} == {
        "summary.csv",
        "summary.md",
        "accuracy_heatmap.png",
        "test_accuracy.png",
        "test_accuracy_by_depth.png",  # two depths: accuracy against depth, with CIs
        "learning_curves.png",
        "learning_curves_overlaid.png",
    }
    assert all(p.stat().st_size > 0 for p in paths)
    import csv

    rows = {(r["activation"], r["depth"]): r for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    relu2 = rows[("relu", "2")]
    assert float(relu2["test/acc_mean"]) == pytest.approx(0.85)
    assert float(relu2["test/acc_std"]) == pytest.approx(math.sqrt(0.005))  # sample std of 0.8, 0.9
    assert float(relu2["dead/overall_mean"]) == pytest.approx(0.15) and relu2["completed"] == "2"
    assert rows[("relu", "4")]["test/acc_std"] == ""  # one run: no std
    tanh2 = rows[("tanh", "2")]
    assert float(tanh2["test/acc_mean"]) == pytest.approx(0.6) and tanh2["diverged"] == "1"
    assert rows[("tanh", "4")]["failed"] == "1" and rows[("tanh", "4")]["test/acc_mean"] == ""
    assert rows[("relu", "4")]["lost"] == "1" and rows[("relu", "4")]["running"] == "1"
    markdown = (tmp_path / "out" / "summary.md").read_text()
    # 95% CI of two runs: t(0.975, 1) x 7.07 / sqrt(2); tanh's one completed run cannot be tested against relu
    assert "| relu | 2 | 85.00 ± 7.07 | ± 63.53 | best | 0.400 ± 0.141 | 15.0 ± 7.1 | 2.00 ± 0.00 |" in markdown
    assert "| tanh | 2 | 60.00 | — | — |" in markdown and "Holm-corrected" in markdown
    assert float(relu2["test/acc_ci95"]) == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), rel=1e-4)
    counts = "9 runs: 0 queued, 1 running, 4 completed, 1 failed, 1 diverged, 0 interrupted, 1 lost, 1 unreadable"
    assert counts in markdown
    assert "- `g`: unreadable" in markdown
    # with a baseline sweep (here: itself) its test accuracy stands beside each row
    summarize(tmp_path / "sweep", tmp_path / "compared", baseline_dir=tmp_path / "sweep")
    compared = (tmp_path / "compared" / "summary.md").read_text()
    assert "baseline test acc (%)" in compared and compared.count("85.00 ± 7.07") == 2


def test_summarize_script_on_a_real_partial_sweep(tmp_path, smoke_sweep):
    sweep_dir = copy_of(smoke_sweep, tmp_path)
    write_record(
        sweep_dir / "still-running",
        {"status": "running", "activation": "relu", "depth": 1, "updated_at": datetime.now(timezone.utc).isoformat()},
    )
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep_dir)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "5 runs: 0 queued, 1 running, 4 completed" in out.stdout
    assert len(load_runs(sweep_dir)) == 5 and (sweep_dir / "accuracy_heatmap.png").is_file()
    record = json.loads((sweep_dir / "activation=relu,model.depth=1" / "metrics.json").read_text())
    correct = record["test/acc"] * 128  # the generated test set: 128 images, all tested
    assert 0 < correct <= 128 and correct == int(correct), record["test/acc"]
    # the summary's row is the record's numbers (one run: test acc (%) and test loss as they are)
    (row,) = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| relu | 1 |")]
    assert [row[2], row[5]] == [f"{100 * record['test/acc']:.2f}", f"{record['test/loss']:.3f}"], row


def test_summarize_says_what_is_wrong_with_an_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json found below"):
        summarize(tmp_path)
    assert os.listdir(tmp_path) == []
