"""Shared fixtures: small generated FashionMNIST-format data and config composition."""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.util
import io
import logging
import os
import re
import struct
import subprocess
import sys
import traceback
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from actlab.config import CONFIG_DIR
from actlab.data.fashion_mnist import FILES, SYSTEM_DIR

REPO = CONFIG_DIR.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs on pytest-xdist workers, one per core: each worker (and every `train.py` it
    # starts) computes on one thread, or the workers' thread pools would spin against each other
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
HAS_REAL_DATA = all((Path(SYSTEM_DIR) / f"{stem}.gz").is_file() for stem in FILES.values())
# the tests on the Debian FashionMNIST files: skipped where the package is missing, failed in CI
requires_real_data = pytest.mark.real_data

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def _missing_real_data() -> str | None:
    return None if HAS_REAL_DATA else f"needs `apt-get install dataset-fashion-mnist` ({SYSTEM_DIR})"


def _missing_slurm() -> str | None:
    import slurm_cluster

    return slurm_cluster.available()


# marker -> what its tests need and this machine lacks (None: nothing): such a test is skipped,
# except in CI (CI=true), which promises to run them all: there it fails, naming what is missing
NEEDS = {"real_data": _missing_real_data, "slurm": _missing_slurm}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, missing in NEEDS.items():
        if item.get_closest_marker(marker) is not None and (why := missing()) is not None:
            if IN_CI:
                pytest.fail(f"CI=true promises the `{marker}` tests, but this machine cannot run them: {why}", False)
            pytest.skip(why)


# the longest test files first: pytest-xdist hands out whole files in this order, so the last
# ones to finish are short
LONGEST_FIRST = ("test_slurm.py", "test_pack_faults.py", "test_pack_resume.py", "test_protocols.py", "test_sweeps.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed if ``path`` ends in ``.gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def make_fake_fashion_mnist(directory: Path, n_train: int = 512, n_test: int = 128, seed: int = 0) -> Path:
    """Write the four IDX .gz files of a tiny learnable 10-class image set into ``directory``.

    Each class lights up its own horizontal band of the image, plus noise.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, :] = 250
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory) -> Path:
    return make_fake_fashion_mnist(tmp_path_factory.mktemp("fashion_mnist"))


def data_overrides(data_dir: Path) -> list[str]:
    """Point the data config at generated files and nowhere else (no system copy, no download)."""
    return [
        f"data.data_dir={data_dir}",
        "data.system_dir=null",
        "data.download=false",
        "data.val_size=128",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
    ]


def compose_train(overrides: list[str], output_dir: Path | None = None, **kwargs) -> DictConfig:
    """Compose conf/train.yaml like `python train.py <overrides>` would, outside Hydra's CLI."""
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, *extra], **kwargs)


def run_train_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real `python train.py ...` in ``cwd`` (outputs land under cwd/outputs)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_script(path: Path, name: str):
    """A script of the repository (train.py, scripts/*.py) as a module named ``name``, loaded
    once per test process (registered in sys.modules: dataclasses look their module up there)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _train_script():
    """train.py as a module; its entry point named as when run as a script (Hydra then finds
    conf/ beside the file, not in a package)."""
    script = load_script(REPO / "train.py", "actlab_train_script")
    script.main.__wrapped__.__module__ = "__main__"
    return script


def _raise(error: BaseException):
    raise error


def run_train_main(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, expect: str | None = None
) -> subprocess.CompletedProcess:
    """`python train.py <args>` in ``cwd`` without starting an interpreter: train.py's Hydra
    entry point called in this process (the command line parsed, the config composed, the
    launcher, the run and the exit status all as the script's), its stdout/stderr captured.
    Saves the seconds a new process spends importing torch and Lightning; tests that need
    the process itself (signals, the interpreter's own exit path) use :func:`run_train_cli`.

    The helper answers for the code it runs: an exception that the process would report as a
    crash (Hydra's traceback and exit status 1) is raised here, and the test errors with it.
    Only an exception whose message matches ``expect`` (a regex: the failure the test means
    to provoke) is reported as the process would report it, with exit status 1. What
    train.py itself ends with (``sys.exit``: a one-line error, a signal's status) is a
    SystemExit, never raised."""
    from hydra._internal import utils as hydra_utils
    from hydra.core.global_hydra import GlobalHydra

    expected: list[BaseException] = []  # the expected failure, once Hydra has seen it
    calls = []
    report = hydra_utils.run_and_report  # a private function of Hydra's, borrowed here only

    def run_and_report(func):
        """Hydra's reporting (message, traceback, exit 1), for the expected failure only."""
        calls.append(func)
        try:
            return func()
        except Exception as error:
            if expect is None or not re.search(expect, str(error)):
                raise  # a crash: out of Hydra, out of this helper, into the test

            expected.append(error)
            return report(functools.partial(_raise, error))

    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level)
    saved_env = {key: os.environ.get(key) for key in {"HYDRA_FULL_ERROR", *(env or {})}}
    os.environ.update({"HYDRA_FULL_ERROR": "0", **(env or {})})
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    try:
        os.chdir(cwd)
        sys.argv = [str(REPO / "train.py"), *args]
        GlobalHydra.instance().clear()
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            mock.patch.object(hydra_utils, "run_and_report", run_and_report),
        ):
            try:
                _train_script().main()
            except SystemExit as exit_:  # what the interpreter does with it
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
                    returncode = 1
                else:
                    returncode = exit_.code or 0
            except Exception as error:  # out of Hydra: HYDRA_FULL_ERROR=1, or a crash
                if not any(error is e for e in expected):
                    raise
                traceback.print_exc()  # the expected error, as the interpreter prints it
                returncode = 1
        # the day Hydra reports errors some other way, this helper must learn it (or it passes crashes)
        assert calls, "Hydra no longer calls hydra._internal.utils.run_and_report: update run_train_main"
    except BaseException:
        sys.stdout.write(stdout.getvalue())  # the crashed run's output, in the test's report
        sys.stderr.write(stderr.getvalue())
        raise
    finally:
        GlobalHydra.instance().clear()
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for handler in root.handlers[:]:
            if handler not in saved_logging[0]:
                root.removeHandler(handler)
                handler.close()
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
    return subprocess.CompletedProcess(["train.py", *args], returncode, stdout.getvalue(), stderr.getvalue())
