"""The benchmark script must keep working: a tiny run on generated data (no timing asserts)."""

import sys

import pytest
from conftest import REPO, load_script, make_fake_fashion_mnist


@pytest.fixture(scope="module")
def benchmark():
    return load_script(REPO / "scripts" / "benchmark.py", "benchmark")


def run_script(benchmark, args, monkeypatch, capsys) -> str:
    """``python scripts/benchmark.py <args>``, its main() called in this process; its stdout."""
    monkeypatch.setattr(sys, "argv", ["benchmark.py", *args])
    benchmark.main()
    return capsys.readouterr().out


def test_benchmark_script_runs_every_loop_on_generated_data(tmp_path, benchmark, monkeypatch, capsys):
    data = make_fake_fashion_mnist(tmp_path / "data", n_train=5300, n_test=200)  # > the 5000 validation samples
    out = run_script(benchmark, ["--data-dir", str(data), "--system-dir", "none", "--steps", "3", "--rounds", "2",
                                 "--activation", "staf", "--versus", "relu"], monkeypatch, capsys)  # fmt: skip
    for line in ("hand loop", "actlab (Lightning, diagnostics on)", "actlab (Lightning, diagnostics off)",
                 "reference (textbook", "actlab (diagnostics on)  / hand loop", "diagnostics overhead",
                 "reference / actlab", "staf / relu epoch", "time in diagnostics / rest of the epoch"):  # fmt: skip
        assert line in out, out


def test_activation_speed_table(benchmark):
    rows = benchmark.activation_speed(["relu", "staf"], repeats=3)
    assert [r[0] for r in rows] == ["relu", "staf"] and all(r[1] > 0 and r[2] >= r[1] for r in rows)


def test_the_stacked_floor_of_a_mixed_pack(tmp_path, benchmark, monkeypatch, capsys):
    """The stacked hand loop of a pack whose members differ in activation (the floor a fair
    protocol's efficiency is measured against)."""
    data = make_fake_fashion_mnist(tmp_path / "data", n_train=5300, n_test=200)
    args = ["--data-dir", str(data), "--system-dir", "none", "--steps", "2", "--epochs", "1", "--pack", "4",
            "--activation", "relu,staf", "--floor-only"]  # fmt: skip
    out = run_script(benchmark, args, monkeypatch, capsys)
    assert "stacked hand loop (4 models, relu,staf): per-model epoch" in out, out
    out = run_script(benchmark, [*args, "--depth", "2"], monkeypatch, capsys)  # the floor of a depth-2 protocol
    assert "stacked hand loop (4 models, relu,staf, depth 2): per-model epoch" in out, out


def test_the_overhead_report_names_every_floor_and_phase(tmp_path, benchmark, monkeypatch, capsys):
    """``--overhead``: per-step milliseconds of the hand loop, Lightning's own floor, a single
    run, the stacked hand loop and a pack (also paired in one process), and a packed sweep's phases
    (no timing asserts)."""
    data = make_fake_fashion_mnist(tmp_path / "data", n_train=5300, n_test=200)
    out = run_script(benchmark, ["--data-dir", str(data), "--system-dir", "none", "--overhead", "--steps", "3",
                                 "--rounds", "1", "--pack", "2", "--epochs", "1"], monkeypatch, capsys)  # fmt: skip
    for line in ("hand loop (one model)", "Lightning floor (bare module)", "x the Lightning floor)",
                 "the same, one step per call",
                 "stacked hand loop (2 models)", "with the epoch metrics", "pack of 2 (Lightning)",
                 "paired in one process", "against the loop with the metrics", "packed sweep of 2 tiny runs",
                 "before the first step", "after the last step", "outside the epochs, beyond imports",
                 "ms between two epochs"):  # fmt: skip
        assert line in out, out


def test_the_time_between_a_packs_epochs_is_read_from_its_log_and_record(benchmark):
    """A pack's seconds between two epochs: the epoch lines' timestamps apart, less the epochs'
    own times (each line is logged as its epoch ends)."""
    log = "\n".join(f"[2026-12-05 10:00:0{s},{ms:03d}][actlab.pack.callbacks][INFO] - pack 0: epoch {k}/3 done in "
                    f"{t:.1f} s computing 2 of 2 members, 2 training on" for k, (s, ms, t) in enumerate(
                        [(1, 0, 0.5), (1, 700, 0.6), (2, 500, 0.7)], start=1))  # fmt: skip
    # 0.7 s between the first two lines, of which the second epoch took 0.6 s; 0.8 s, of which 0.75 s
    assert benchmark.between_epochs(log, [0.5, 0.6, 0.75]) == pytest.approx((0.1 + 0.05) / 2)
    assert benchmark.pack_phases(log, 3.0, 0.0)[1] == pytest.approx(2.5 - 0.5)


def test_the_loss_layouts_table(benchmark, monkeypatch, capsys):
    """``--loss-layouts``: a pack's loss in both layouts, training and validation shapes."""
    out = run_script(benchmark, ["--loss-layouts"], monkeypatch, capsys)
    assert "(K, C, B) us" in out and len([line for line in out.splitlines() if line.startswith("train")]) == 2, out
