"""Sweeps: multirun with both local launchers, fault tolerance, resume, the summary."""

import csv
import json
import math
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import REPO, data_overrides, load_script, run_train_main
from omegaconf import OmegaConf

from actlab.comparison import welch_p_value
from actlab.config import CONFIG_DIR
from actlab.record import read_record, write_record
from actlab.summary import group_runs, load_runs, summarize, varying_keys

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
        "trainer.max_epochs=3",
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout  # it reports its failures...
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
    assert read_record(failed)["error"] == f"ConfigError: {message}"
    tail = result.stderr.strip().splitlines()[-3:]  # one line per failed job, after every job ran
    assert tail[0].startswith("error: 2 of 4 runs did not complete") and all(
        line.startswith("  model.depth=0,") and "failed: ConfigError: model.depth must be a positive integer" in line
        for line in tail[1:]), tail  # fmt: skip


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
    assert "| relu | 2 | 85.00 ± 7.07 | ± 63.53 | best | 0.400 ± 0.141 | 15.0 ± 7.1 | — | — | 2.00 ± 0.00 |" in markdown
    assert "| tanh | 2 | 60.00 | — | — |" in markdown and "Holm-corrected" in markdown
    assert float(relu2["test/acc_ci95"]) == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), rel=1e-4)
    counts = "9 runs: 0 queued, 1 running, 4 completed, 1 failed, 1 diverged, 0 interrupted, 1 lost, 1 unreadable"
    assert counts in markdown
    assert "- `g`: unreadable" in markdown and "- `e`: diverged" in markdown  # diverged runs are named too
    assert "- `a`" not in markdown  # completed ones are not
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
    # real records' configs vary per run only in what restates the run (its directory, its seed)
    assert varying_keys(load_runs(sweep_dir)) == []
    header = next(csv.reader((sweep_dir / "summary.csv").open()))
    assert header[:3] == ["activation", "depth", "runs"]
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


def test_every_job_gets_a_directory_of_its_own_whatever_the_sweep_varies(tmp_path, fake_data_dir):
    # `trainer` and `threads` are left out of directory names, unless the sweep varies them
    args = ["trainer=cpu,auto", "threads=1", "activation=relu", "model.depth=1", "trainer.max_epochs=1",
            "callbacks=none"]  # fmt: skip
    result, sweep_dir = sweep(tmp_path, fake_data_dir, *args, "hydra/launcher=packed")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert set(jobs) == {f"activation=relu,callbacks=none,model.depth=1,trainer.max_epochs=1,trainer={t}"
                         for t in ("auto", "cpu")}  # fmt: skip
    for name, job in jobs.items():
        record = read_record(job)
        assert record["status"] == "completed" and f"trainer={name.rsplit('=', 1)[1]}" in record["overrides"]
    # two jobs that would share a directory stop the sweep before anything runs, naming both
    result, sweep_dir = sweep(tmp_path, fake_data_dir, "seed=1,1", "model.depth=1", name="twice")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: jobs #0 (seed=1 model.depth=1" in result.stderr and "and #1 (seed=1 " in result.stderr
    assert not job_dirs(sweep_dir) and not list(sweep_dir.glob("*/.hydra"))


def test_a_run_never_starts_in_another_runs_directory(tmp_path, fake_data_dir):
    import socket

    from actlab.record import SCHEMA_DEFAULTS, check_run_directory, live_owner

    run_dir = tmp_path / "run"
    args = ["trainer.max_epochs=1", "callbacks=none", "model.depth=1", *data_overrides(fake_data_dir),
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # a run still training: another live process on this host, a fresh heartbeat
        owner = {"host": socket.gethostname(), "pid": sleeper.pid, "slurm_job": None}
        write_record(run_dir, {**SCHEMA_DEFAULTS, "status": "running", "started_at": now, "updated_at": now,
                                "owner": owner})  # fmt: skip
        before = (run_dir / "metrics.json").read_text()
        for extra in ([], ["resume=true"]):
            busy = run_train_main([*args, *extra], tmp_path)
            assert busy.returncode == 1 and busy.stderr.strip().splitlines() == [
                f"error: {run_dir} belongs to a run still training (process {sleeper.pid} on {owner['host']}, last "
                f"heartbeat {read_record(run_dir)['updated_at']}); wait for it, or choose another directory "
                "(hydra.run.dir=... / hydra.sweep.dir=...)"]  # fmt: skip
        assert (run_dir / "metrics.json").read_text() == before and not (run_dir / ".hydra").exists()
        # an earlier attempt of this very SLURM job (a requeue) is not another run
        write_record(run_dir, {**read_record(run_dir), "owner": {**owner, "slurm_job": "77"}})
        os.environ["SLURM_JOB_ID"] = "77"
        try:
            assert live_owner(read_record(run_dir)) is None
        finally:
            del os.environ["SLURM_JOB_ID"]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert live_owner(read_record(run_dir)) is None  # its process is gone: the directory is free
    first = run_train_main(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    done = (run_dir / "metrics.json").read_text()
    # a fresh start over a finished run refuses, and writes nothing; resume=true keeps it as it is
    again = run_train_main(args, tmp_path)
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        f"error: {run_dir} already holds a completed run with 1 epochs; resume=true continues it (a completed run "
        "is kept as it is), or choose another directory (hydra.run.dir=... / hydra.sweep.dir=...)"]  # fmt: skip
    assert run_train_main([*args, "resume=true"], tmp_path).returncode == 0
    assert (run_dir / "metrics.json").read_text() == done
    # checkpoints without a record are results too
    (run_dir / "metrics.json").unlink()
    with pytest.raises(Exception, match=r"already holds checkpoints \(.*last.ckpt"):
        check_run_directory(run_dir, resume=False)


def test_a_bad_job_is_one_line_and_its_pack_mates_train(tmp_path, fake_data_dir):
    result, sweep_dir = sweep(tmp_path, fake_data_dir, "seed=abc,1", "model.depth=1", "trainer.max_epochs=1",
                              "callbacks=none", "hydra/launcher=packed")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    bad, good = job_dirs(sweep_dir)["callbacks=none,model.depth=1,seed=abc,trainer.max_epochs=1"], \
        job_dirs(sweep_dir)["callbacks=none,model.depth=1,seed=1,trainer.max_epochs=1"]  # fmt: skip
    assert read_record(bad)["error"] == "ConfigError: seed must be an integer, got 'abc'"
    assert "Traceback" in read_record(bad)["traceback"]
    assert read_record(good)["status"] == "completed"
    assert result.stderr.strip().splitlines()[-2:] == [
        f"error: 1 of 2 runs did not complete (their records in {sweep_dir} keep the tracebacks; fix the cause and "
        "add resume=true to rerun just these):",
        f"  {bad.name}: failed: ConfigError: seed must be an integer, got 'abc'"]  # fmt: skip
    assert sum("seed must be an integer" in line for line in result.stdout.splitlines()) == 1  # its closing line


def test_hydra_modes_and_help_without_torch():
    command = [sys.executable, str(REPO / "train.py"), "-m", "activation=relu,tanh", "--cfg", "job"]
    multirun_cfg = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert multirun_cfg.returncode == 1 and multirun_cfg.stderr.strip().splitlines() == [
        "error: --cfg and -m/--multirun do not go together: --cfg looks at one run (drop -m and give one value per "
        "key to see that run's config)"]  # fmt: skip
    # --help composes the config but imports neither torch nor Lightning
    code = (f"import runpy, sys\nsys.argv = [{str(REPO / 'train.py')!r}, '--help']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'lightning' in sys.modules)")  # fmt: skip
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "activation: " in shown.stdout and shown.stdout.strip().splitlines()[-1] == "False False", shown.stderr


def run_record(root: Path, activation: str, seed: int, status: str = "completed", acc: float | None = None,
               error: str | None = None, **settings) -> Path:  # fmt: skip
    """A record as a sweep job writes it: its overrides, and a resolved config in which the run's
    directory and seed reappear (checkpoint dir, a seed-interpolated key) as in real configs.
    ``settings``: swept dotted keys, written ``optimizer__lr`` (``__`` for the dot)."""
    swept = {key.replace("__", "."): value for key, value in settings.items()}
    overrides = [f"activation={activation}", *(f"{k}={v}" for k, v in swept.items()), f"seed={seed}"]
    run_dir = root / ",".join(overrides)  # the job directory, named by its overrides
    config = {
        "seed": seed, "paths": {"output_dir": str(run_dir)}, "trainer": {"default_root_dir": str(run_dir)},
        "callbacks": {"model_checkpoint": {"dirpath": f"{run_dir}/checkpoints"}},
        "optimizer": {"lr": 0.001, "momentum": 0.9}, "model": {"depth": 4, "hidden_shape": None},
        "data": {"batch_size": 128, "split_seed": seed},
        "activation": {"_target_": f"torch.nn.{activation.capitalize()}"},
    }  # fmt: skip
    for key, value in swept.items():
        section, name = key.split(".")
        config[section][name] = value
    fields = {"status": status, "activation": activation, "seed": seed, "depth": 4, "test/acc": acc,
              "overrides": overrides, "config": config, "history": {"val/acc": [0.5, acc or 0.5]}}  # fmt: skip
    write_record(run_dir, {**fields, **({"error": error} if error else {})})
    return run_dir


def summary_rows(out: Path, *keys: str) -> dict[tuple, dict[str, str]]:
    rows = csv.DictReader((out / "summary.csv").open())
    return {(r["activation"], r["depth"], *(r[k] for k in keys)): r for r in rows}


def test_an_lr_sweep_gives_one_row_per_rate_compared_within_its_rate(tmp_path):
    accuracies = {("relu", 0.01): (0.80, 0.82), ("relu", 0.1): (0.86, 0.88),
                  ("tanh", 0.01): (0.70, 0.74), ("tanh", 0.1): (0.85, 0.91)}  # fmt: skip
    for (activation, lr), values in accuracies.items():
        for seed, acc in enumerate(values, start=1):
            run_record(tmp_path / "sweep", activation, seed, acc=acc, optimizer__lr=lr)
    runs = load_runs(tmp_path / "sweep")
    # the seed-interpolated split seed and the per-run directories are no grouping keys
    assert varying_keys(runs) == ["optimizer.lr"]
    assert [g.label for g in group_runs(runs)] == [
        "relu (depth 4, optimizer.lr=0.01)", "relu (depth 4, optimizer.lr=0.1)",
        "tanh (depth 4, optimizer.lr=0.01)", "tanh (depth 4, optimizer.lr=0.1)",
    ]  # fmt: skip
    summarize(tmp_path / "sweep", tmp_path / "out")
    header = next(csv.reader((tmp_path / "out" / "summary.csv").open()))
    assert header[:4] == ["activation", "depth", "optimizer.lr", "runs"]
    rows = summary_rows(tmp_path / "out", "optimizer.lr")
    assert set(rows) == {("relu", "4", "0.01"), ("relu", "4", "0.1"), ("tanh", "4", "0.01"), ("tanh", "4", "0.1")}
    for (activation, lr), values in accuracies.items():
        row = rows[(activation, "4", f"{lr:g}")]
        assert float(row["test/acc_mean"]) == pytest.approx(sum(values) / 2) and row["completed"] == "2"
    # p vs best compares the activations at the same rate: each rate has its own best
    assert rows[("relu", "4", "0.01")]["test/acc_p_vs_best"] == "best"
    assert rows[("tanh", "4", "0.1")]["test/acc_p_vs_best"] == "best"
    assert float(rows[("relu", "4", "0.1")]["test/acc_p_vs_best"]) == pytest.approx(
        welch_p_value([0.86, 0.88], [0.85, 0.91]), rel=1e-5
    )
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| activation | depth | optimizer.lr | test acc (%) | 95% CI | p vs best |" in markdown
    assert "| relu | 4 | 0.1 | 87.00 ± 1.41 |" in markdown and "| tanh | 4 | 0.01 | 72.00 ± 2.83 |" in markdown
    assert "Runs that did not complete" not in markdown


def test_a_batch_size_sweep_gives_one_row_per_size_and_names_the_failed_runs(tmp_path):
    error = "Traceback (most recent call last):\n  ...\nConfigError: data.batch_size must be > 0, got 0"
    for seed, (small, large) in enumerate([(0.70, 0.80), (0.75, 0.90)], start=1):
        run_record(tmp_path, "relu", seed, status="failed", error=error, data__batch_size=0)
        run_record(tmp_path, "relu", seed, acc=small, data__batch_size=32)
        run_record(tmp_path, "relu", seed, acc=large, data__batch_size=128)
    summarize(tmp_path)
    rows = summary_rows(tmp_path, "data.batch_size")
    assert list(rows) == [("relu", "4", "0"), ("relu", "4", "32"), ("relu", "4", "128")]  # in numeric order
    assert rows[("relu", "4", "0")]["failed"] == "2" and rows[("relu", "4", "0")]["test/acc_mean"] == ""
    assert float(rows[("relu", "4", "32")]["test/acc_mean"]) == pytest.approx(0.725)
    assert float(rows[("relu", "4", "128")]["test/acc_mean"]) == pytest.approx(0.85)
    markdown = (tmp_path / "summary.md").read_text()
    assert "| relu | 4 | 128 | 85.00 ± 7.07 |" in markdown
    for seed in (1, 2):  # each named, with its error's last line
        name = f"activation=relu,data.batch_size=0,seed={seed}"
        assert f"- `{name}`: failed: ConfigError: data.batch_size must be > 0, got 0" in markdown


def test_by_groups_rows_by_the_keys_asked_for(tmp_path, monkeypatch, capsys):
    accuracies = {(0.01, 32): 0.70, (0.01, 128): 0.80, (0.1, 32): 0.85, (0.1, 128): 0.95}
    for (lr, batch_size), acc in accuracies.items():
        for seed in (1, 2):
            run_record(tmp_path / "sweep", "relu", seed, acc=acc + seed / 100, optimizer__lr=lr,
                       data__batch_size=batch_size)  # fmt: skip
    assert varying_keys(load_runs(tmp_path / "sweep")) == ["optimizer.lr", "data.batch_size"]
    summarize(tmp_path / "sweep", tmp_path / "all")
    assert len(summary_rows(tmp_path / "all", "optimizer.lr", "data.batch_size")) == 4
    script = load_script(REPO / "scripts" / "summarize.py", "summarize_script")

    def summarize_script(*args: str) -> None:
        monkeypatch.setattr(sys, "argv", ["summarize.py", str(tmp_path / "sweep"), *args])
        script.main()

    # --by optimizer.lr: a row per rate, its batch sizes pooled
    summarize_script("--out", str(tmp_path / "by"), "--by", "optimizer.lr")
    header = next(csv.reader((tmp_path / "by" / "summary.csv").open()))
    assert header[:4] == ["activation", "depth", "optimizer.lr", "runs"] and "data.batch_size" not in header
    rows = summary_rows(tmp_path / "by", "optimizer.lr")
    assert float(rows[("relu", "4", "0.01")]["test/acc_mean"]) == pytest.approx(0.765)  # 0.71, 0.72, 0.81, 0.82
    assert float(rows[("relu", "4", "0.1")]["test/acc_mean"]) == pytest.approx(0.915)
    assert rows[("relu", "4", "0.1")]["runs"] == "4"
    assert "| relu | 4 | 0.1 | 91.50 ± 5.80 |" in capsys.readouterr().out
    # --by '': activation x depth only, every run in one row
    summarize_script("--out", str(tmp_path / "none"), "--by", "")
    (only,) = summary_rows(tmp_path / "none").values()
    assert float(only["test/acc_mean"]) == pytest.approx(0.84) and only["runs"] == "8"
    # a key no run has is refused, naming what the sweep varies
    with pytest.raises(SystemExit, match="no run has the key 'optimizer.lrr'") as refused:
        summarize_script("--out", str(tmp_path / "wrong"), "--by", "optimizer.lrr")
    assert "this sweep varies: optimizer.lr, data.batch_size" in str(refused.value)
    assert not (tmp_path / "wrong").exists()


def test_the_summary_names_a_diverged_run_and_why(tmp_path):
    run_record(tmp_path, "relu", 1, acc=0.8, optimizer__lr=0.1)
    run_record(tmp_path, "relu", 1, status="diverged", optimizer__lr=10.0,
               error="DivergedError: training loss is nan at epoch 2, step 31")  # fmt: skip
    summarize(tmp_path)
    markdown = (tmp_path / "summary.md").read_text()
    assert "2 runs: 0 queued, 0 running, 1 completed, 0 failed, 1 diverged" in markdown
    assert "| relu | 4 | 10 | — | — | — | — | — | — | — | — | 0 | 0 | 1 | 0 | 10 |" in markdown
    lines = markdown.split("Runs that did not complete:\n\n")[1].strip().splitlines()
    assert lines == ["- `activation=relu,optimizer.lr=10.0,seed=1`: diverged: DivergedError: training loss is nan at "
                     "epoch 2, step 31"]  # fmt: skip


def test_the_summary_says_why_by_the_gradient_flow(tmp_path):
    """grad ratio: log10 of the first hidden layer's gradient norm over the last's at the first
    step; saturated: the hidden layers' mean share at the best epoch; gradient_flow.png per depth."""
    for seed, (first, saturated) in enumerate([(0.01, 0.5), (0.001, 0.7)]):
        history = {"val/acc": [0.5, 0.8, 0.7], "flow/grad_norm/layer_0": [1e-3, 1e-2, 1e-2],
                   "flow/grad_norm/layer_1": [1e-2, 1e-2, 1e-2], "flow/saturated/layer_0": [0.9, saturated, 0.1],
                   "flow/saturated/layer_1": [0.9, saturated - 0.2, 0.1]}  # fmt: skip
        write_record(tmp_path / "sweep" / f"sigmoid-{seed}", {
            "status": "completed", "activation": "sigmoid", "depth": 2, "seed": seed, "test/acc": 0.8,
            "best_epoch": 1, "history": history, "flow/grad_norm_first_step": [first, 1.0]})  # fmt: skip
    write_record(tmp_path / "sweep" / "relu", {"status": "completed", "activation": "relu", "depth": 2, "seed": 0,
                                               "test/acc": 0.85, "best_epoch": 0,
                                               "history": {"val/acc": [0.85], "flow/grad_norm/layer_0": [0.5],
                                                           "flow/grad_norm/layer_1": [0.5]},
                                               "flow/grad_norm_first_step": [0.5, 0.5]})  # fmt: skip
    paths = summarize(tmp_path / "sweep", tmp_path / "out")
    assert "gradient_flow.png" in {p.name for p in paths}
    rows = {r["activation"]: r for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    assert float(rows["sigmoid"]["grad_ratio_mean"]) == pytest.approx(-2.5)  # log10 0.01 and 0.001
    assert float(rows["sigmoid"]["grad_ratio_best_epoch_mean"]) == pytest.approx(0.0)
    assert float(rows["sigmoid"]["saturated_mean"]) == pytest.approx(0.5)  # (0.5+0.3)/2 and (0.7+0.5)/2
    assert float(rows["relu"]["grad_ratio_mean"]) == 0.0 and rows["relu"]["saturated_mean"] == ""
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| grad ratio | saturated (%) |" in markdown and "| -2.50 ± 0.71 | 50.0 ± 14.1 |" in markdown
