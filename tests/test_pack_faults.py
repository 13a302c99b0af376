"""A fault touches one run: a bad job, a damaged member checkpoint or a damaged record ends
in that run's record (and the summary names it), never in its pack-mates' or the sweep's."""

import subprocess
import sys

from conftest import REPO, run_train_main
from test_pack import members_for, packed_sweep

from actlab.record import SCHEMA_DEFAULTS, read_record, write_record
from actlab.summary import summarize
from actlab.training import CHECKPOINT_DIR


def test_a_member_that_cannot_be_built_is_recorded_failed_and_its_pack_mates_train(tmp_path, fake_data_dir):
    specs = [(1, "leaky_relu", "activation.negative_slope=0.01"), (2, "leaky_relu", "activation.negative_slope=abc"),
             (3, "leaky_relu", "activation.negative_slope=0.2")]  # fmt: skip
    members, _ = members_for(tmp_path, fake_data_dir, specs, ["callbacks=none", "logger=csv"])
    from actlab.pack.training import train_pack

    good, bad, other = train_pack(members, "p")
    assert bad["status"] == "failed" and "negative_slope" in bad["error"] and bad["traceback"]
    assert good["status"] == other["status"] == "completed" and good["epochs_completed"] == 2
    assert good["pack"]["size"] == 2 and [good["pack"]["index"], other["pack"]["index"]] == [0, 1]


def test_a_packed_sweep_with_failing_jobs_finishes_the_others_and_names_the_failures(tmp_path, fake_data_dir):
    overrides, sweep_dir = packed_sweep(tmp_path, fake_data_dir, "activation=relu,gelu", "optimizer.lr=0.01,-1",
                                        "trainer.max_epochs=1", "callbacks=none", "logger=csv")  # fmt: skip
    result = run_train_main(overrides, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    records = {p.parent.name: read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")}
    assert len(records) == 4  # every job has its record, the failed ones too
    for name, record in records.items():
        if "optimizer.lr=-1" in name:
            assert record["status"] == "failed" and "optimizer.lr must be > 0" in record["error"], name
        else:
            assert record["status"] == "completed", name
    # what the sweep ends with: one line per run that did not complete
    heading, *failures = result.stderr.strip().splitlines()[-3:]
    assert heading == (f"error: 2 of 4 runs did not complete (their records in {sweep_dir} keep the tracebacks; fix "
                       "the cause and add resume=true to rerun just these):")  # fmt: skip
    assert sorted(line.split(",")[0].strip() for line in failures) == ["activation=gelu", "activation=relu"], failures
    for line in failures:
        assert "optimizer.lr=-1" in line and line.endswith(": failed: ConfigError: optimizer.lr must be > 0, got -1")
    summary = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep_dir)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert summary.returncode == 0 and "2 completed, 2 failed" in summary.stdout


def test_a_damaged_member_checkpoint_falls_back_and_keeps_every_members_history(tmp_path, fake_data_dir):
    from actlab.pack.training import train_pack

    specs = [(1, "relu"), (2, "prelu")]
    protocol = ["callbacks=none", "logger=csv", "optimizer.lr=0.05"]
    members, base = members_for(tmp_path, fake_data_dir, specs, [*protocol, "trainer.max_epochs=3"])
    first = train_pack(members, "p")
    damaged = members[0].output_dir / CHECKPOINT_DIR / "last.ckpt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a truncated write
    for member, record in zip(members, first):
        write_record(member.output_dir, {**record, "status": "interrupted"})
    again, _ = members_for(tmp_path, fake_data_dir, specs, [*protocol, "trainer.max_epochs=4", "resume=true"])
    relu, prelu = train_pack(again, "p")
    assert relu["status"] == prelu["status"] == "completed" and relu["epochs_completed"] == prelu["epochs_completed"]
    assert "last.ckpt does not load" in relu["resume_warning"] and "best_epoch=" in relu["resumed_from"]
    assert relu["previous_attempt"]["history"] == first[0]["history"]  # the abandoned attempt is kept
    best = first[0]["best_epoch"]
    assert relu["history"]["val/acc"][: best + 1] == first[0]["history"]["val/acc"][: best + 1]
    assert prelu["resumed_from"].endswith("last.ckpt") and prelu["resume_warning"] is None
    assert prelu["history"]["val/acc"][:3] == first[1]["history"]["val/acc"]


def test_an_attempt_that_never_trains_keeps_the_records_history(tmp_path, fake_data_dir):
    from actlab.pack.training import train_pack

    members, _ = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "tanh")], ["callbacks=none", "logger=csv"])
    first = train_pack(members, "p")
    for member, record in zip(members, first):
        write_record(member.output_dir, {**record, "status": "interrupted"})
    # resumed with a value that fails before any training: the histories stay
    again, _ = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "tanh")],
                           ["callbacks=none", "logger=csv", "resume=true", "optimizer.lr=-1"])  # fmt: skip
    for member, record in zip(again, train_pack(again, "p")):
        assert record["status"] == "failed" and "optimizer.lr" in record["error"]
        assert record["history"] == first[again.index(member)]["history"] and record["epochs_completed"] == 2


def test_the_summary_counts_and_names_partial_and_damaged_runs(tmp_path):
    def record(name, **fields):
        write_record(tmp_path / name, {**SCHEMA_DEFAULTS, "activation": "relu", **fields})

    record("done", status="completed", **{"test/acc": 0.8}, history={"val/acc": [0.5, 0.7]})
    record("silent", status="running", started_at="2026-01-01T00:00:00+00:00", updated_at="2026-01-01T00:00:00+00:00")
    record("broken", status="failed", error="ConfigError: optimizer.lr must be > 0, got -1")
    record("empty", status="completed", history={})
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "metrics.json").write_text('{"status": "comp')
    summarize(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "5 runs: 0 queued, 0 running, 2 completed, 1 failed, 0 diverged, 0 interrupted, 1 lost, 1 unreadable" in text
    assert "- `silent`: lost" in text and "- `garbled`: unreadable" in text
    assert "- `broken`: failed: ConfigError: optimizer.lr must be > 0, got -1" in text


def test_sigterm_to_a_parallel_packed_sweep_reaches_every_worker_and_resume_finishes_it(tmp_path, fake_data_dir):
    import os
    import signal
    import time

    overrides, sweep_dir = packed_sweep(tmp_path, fake_data_dir, "activation=relu,tanh", "model.depth=2,3,4",
                                        "trainer.max_epochs=16", "callbacks=none", "logger=csv", "data.batch_size=8",
                                        "hydra.launcher.n_jobs=2")  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *overrides], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 180
    while sum((read_record(p.parent) or {}).get("epochs_completed", 0) >= 1
              for p in sweep_dir.glob("*/metrics.json")) < 4:  # fmt: skip
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the packs did not get going"
        time.sleep(0.05)
    # the third pack waits for a worker: its jobs have their records already
    statuses = sorted(read_record(p.parent)["status"] for p in sweep_dir.glob("*/metrics.json"))
    assert statuses == ["queued"] * 2 + ["running"] * 4
    workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                  text=True).stdout.split()]  # fmt: skip
    assert len(workers) >= 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    records = [read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")]
    assert sorted(r["status"] for r in records) == ["interrupted"] * 4 + ["queued"] * 2  # never started: queued
    assert all(1 <= r["epochs_completed"] < 16 for r in records if r["status"] == "interrupted")
    deadline = time.time() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in workers):  # no worker left behind
        assert time.time() < deadline, [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
        time.sleep(0.1)

    # resumed in this process, one pack after another (the same sweep and job directories: the
    # launcher's parallelism is not part of a job's identity)
    result = run_train_main([*overrides, "resume=true", "hydra.launcher.n_jobs=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in sweep_dir.glob("*/metrics.json"):
        record = read_record(path.parent)
        assert record["status"] == "completed" and record["epochs_completed"] == 16
        assert len(record["history"]["val/acc"]) == 16


def test_a_mistyped_monitor_fails_its_members_before_training_and_the_others_train(tmp_path, fake_data_dir):
    overrides, sweep_dir = packed_sweep(tmp_path, fake_data_dir, "seed=1,2", "callbacks.early_stopping.patience=1",
                                        "callbacks.early_stopping.monitor=val/acc,val/acc_typo", "trainer.max_epochs=2",
                                        "callbacks=none", "logger=csv")  # fmt: skip
    result = run_train_main(overrides, tmp_path)
    assert result.returncode != 0
    # the monitor's slash nests each job's directory one level deeper
    records = {str(p.parent.relative_to(sweep_dir)): read_record(p.parent) for p in sweep_dir.glob("*/*/metrics.json")}
    assert len(records) == 4, result.stderr[-3000:]
    for name, record in records.items():
        if "val/acc_typo" in name:
            assert record["status"] == "failed" and record["epochs_completed"] == 0, name
            assert record["error"].startswith("ConfigError: callbacks.early_stopping.monitor='val/acc_typo' is not")
            assert "val/acc, val/f1" in record["error"]
        else:
            assert record["status"] == "completed" and record["epochs_completed"] == 2, name


def test_a_unit_that_fails_around_its_runs_records_every_member_failed_with_its_error(tmp_path, fake_data_dir):
    """A pack that cannot be formed (or any failure of a unit outside its runs' own code) ends
    in every member's record as `failed` with the error, never `queued` with none."""
    from actlab.record import queue_record
    from hydra_plugins.actlab_packed_launcher.packed_launcher import run_work

    members, _ = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "relu", "trainer.max_epochs=3")],
                             ["callbacks=none", "logger=csv"])  # fmt: skip
    for m in members:
        queue_record(m.output_dir, activation=m.activation, overrides=m.overrides, seed=m.cfg.seed)
    records = run_work("pack", members, "pack-0", str(tmp_path / ".packs" / "pack-0.log"), None)
    for member, record in zip(members, records):
        assert record == read_record(member.output_dir)
        assert record["status"] == "failed" and record["error"].startswith("ConfigError: a pack's members must")
        assert record["traceback"] and record["seed"] == member.cfg.seed and record["epochs_completed"] == 0
