"""The benchmark script must keep working: a tiny run on generated data (no timing asserts)."""

import importlib.util
import subprocess
import sys

from conftest import REPO, make_fake_fashion_mnist


def test_benchmark_script_runs_every_loop_on_generated_data(tmp_path):
    data = make_fake_fashion_mnist(tmp_path / "data", n_train=5300, n_test=200)  # > the 5000 validation samples
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--data-dir", str(data), "--system-dir", "none",
               "--steps", "3", "--rounds", "2", "--activation", "staf", "--versus", "relu"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in ("hand loop", "actlab (Lightning, diagnostics on)", "actlab (Lightning, diagnostics off)",
                 "reference (textbook", "actlab (diagnostics on)  / hand loop", "diagnostics overhead",
                 "reference / actlab", "staf / relu epoch", "time in diagnostics / rest of the epoch"):  # fmt: skip
        assert line in out, out


def test_activation_speed_table(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = benchmark  # its dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    rows = benchmark.activation_speed(["relu", "staf"], repeats=3)
    assert [r[0] for r in rows] == ["relu", "staf"] and all(r[1] > 0 and r[2] >= r[1] for r in rows)


def test_the_stacked_floor_of_a_mixed_pack(tmp_path):
    """The stacked hand loop of a pack whose members differ in activation (the floor a fair
    protocol's efficiency is measured against)."""
    data = make_fake_fashion_mnist(tmp_path / "data", n_train=5300, n_test=200)
    command = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--data-dir", str(data), "--system-dir", "none",
               "--steps", "2", "--epochs", "1", "--pack", "4", "--activation", "relu,staf", "--floor-only"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stacked hand loop (4 models, relu,staf): per-model epoch" in result.stdout, result.stdout
