"""End-to-end runs: config composition, train.py, the run record, bad input, divergence."""

import csv
import inspect
import json
import math
import os
import shutil

import pytest
import torch
from conftest import compose_train, data_overrides, run_train_cli, run_train_main
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from actlab.config import CONFIG_DIR, group_options
from actlab.errors import ConfigError
from actlab.record import read_record, write_record
from actlab.training import run

GROUPS = ["activation", "model", "data", "optimizer", "scheduler", "trainer", "callbacks", "logger", "debug", "paths",
          "experiment", "hydra/launcher"]  # fmt: skip
RECORD_KEYS = {
    "status", "overrides", "activation", "depth", "hidden_shape", "seed", "epochs_completed",
    "test/acc", "test/loss", "val/acc_best", "val/acc_last", "fit_time_s", "epoch_time_s",
}  # fmt: skip


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_config_option_composes(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], output_dir=tmp_path, return_hydra_config=True)
    assert cfg.hydra.runtime.choices[group] == option  # the option asked for is the one composed
    if group == "experiment":
        assert_sets_only_known_keys(option, cfg, tmp_path)
    if group == "hydra/launcher":  # the plugin it names is installed and takes every setting given
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        parameters = inspect.signature(get_class(launcher.pop("_target_"))).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            assert set(launcher) <= set(parameters), set(launcher) - set(parameters)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    assert cfg.seed == 42


def leaf_paths(node, prefix: str = ""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig) and len(value):
            yield from leaf_paths(value, f"{path}.")
        else:
            yield path


def assert_sets_only_known_keys(experiment: str, composed: DictConfig, tmp_path) -> None:
    """An experiment config only sets keys the config has (a misspelt one would otherwise be
    merged in silently and change nothing), and sweeps over existing keys and group options."""
    own = OmegaConf.load(CONFIG_DIR / "experiment" / f"{experiment}.yaml")
    groups = [f"{key.removeprefix('override /')}={value}" for entry in own.get("defaults", []) for key, value in
              entry.items()]  # fmt: skip
    base = compose_train(groups, output_dir=tmp_path, return_hydra_config=True)  # the same groups, no experiment
    absent = object()
    params = own.get("hydra", {}).get("sweeper", {}).get("params") or {}

    def known(path: str) -> bool:  # in the config, or inside an entry it switches off (null) for experiments to fill
        parts = path.split(".")
        return OmegaConf.select(base, path, default=absent) is not absent or any(
            OmegaConf.select(base, ".".join(parts[:i]), default=absent) is None for i in range(1, len(parts))
        )

    unknown = [path for path in leaf_paths(own) if path != "defaults" and not path.startswith("hydra.sweeper.params.")
               and not known(path)]  # fmt: skip
    for key, values in params.items():
        if key in base.hydra.runtime.choices:  # a group: each value one of its options
            unknown += [f"{key}={v}" for v in str(values).split(",") if v.strip() not in group_options(key)]
        elif OmegaConf.select(base, key, default=absent) is absent:
            unknown.append(f"hydra.sweeper.params.{key}")
    assert not unknown, f"experiment={experiment} sets what the config does not have: {unknown}"
    for path in leaf_paths(own):  # and the experiment's values are the composed config's
        value = OmegaConf.select(own, path, throw_on_resolution_failure=False)
        if not path.startswith(("hydra.", "defaults")) and value is not None:
            assert OmegaConf.select(composed, path) == value, path


def test_defaults_reproduce_the_textbook_experiment(tmp_path):
    cfg = compose_train([], output_dir=tmp_path)
    assert cfg.model.depth == 4 and cfg.model.hidden_shape is None
    assert cfg.activation._target_ == "torch.nn.ReLU"
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum) == (1e-3, 0.9)
    assert cfg.data.batch_size == 128 and cfg.trainer.max_epochs == 15


def train_in_process(tmp_path, fake_data_dir, overrides, activation="relu"):
    out = tmp_path / "run"
    cfg = compose_train([*data_overrides(fake_data_dir), *overrides], output_dir=out)
    return run(cfg, out, activation=activation, overrides=overrides), out


@pytest.mark.parametrize("name", group_options("activation"))
def test_every_activation_trains_one_fast_dev_run_step(name, tmp_path, fake_data_dir):
    record, _ = train_in_process(tmp_path, fake_data_dir, [f"activation={name}", "debug=fdr", "logger=csv"], name)
    assert record["status"] == "completed", record.get("error")
    assert record["epochs_completed"] == 1 and record["history"]["train/loss"], record["history"]
    assert all(len(values) == 1 and math.isfinite(values[0]) for values in record["history"].values()), record[
        "history"
    ]
    correct = record["test/acc"] * 128  # one test batch: the 128 generated test images
    assert correct == round(correct) and 0 <= correct <= 128, record["test/acc"]
    assert math.isfinite(record["test/loss"]) and record["test/loss"] > 0


def test_short_run_writes_record_checkpoints_and_tensorboard(tmp_path, fake_data_dir):
    record, out = train_in_process(
        tmp_path,
        fake_data_dir,
        [
            "trainer.max_epochs=3",
            "activation=prelu",
            "model.depth=2",
            "seed=7",
            "optimizer=adam",
            "data.batch_size=32",
            "model.init=auto",
        ],
        "prelu",
    )
    assert record["status"] == "completed"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk) >= RECORD_KEYS, RECORD_KEYS - set(on_disk)
    assert on_disk["activation"] == "prelu" and on_disk["depth"] == 2 and on_disk["hidden_shape"] == [256, 64]
    assert on_disk["init"] == "kaiming" and on_disk["config"]["model"]["init"] == "auto"  # the scheme auto chose
    assert on_disk["seed"] == 7 and on_disk["epochs_completed"] == 3
    assert len(on_disk["epoch_times_s"]) == 3 and on_disk["epoch_time_s"] > 0
    assert len(on_disk["history"]["val/acc"]) == 3 and len(on_disk["history"]["train/loss"]) == 3
    assert on_disk["val/acc_best"] == max(on_disk["history"]["val/acc"])
    # the generated data is easy: the model must learn it
    assert on_disk["test/acc"] > 0.5
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best_epoch=*.ckpt"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_a_limit_debug_run_finds_its_data_through_the_environment_and_validates_on_the_test_set(
    tmp_path, fake_data_dir
):
    """One run through the entry point for three features: debug=limit, data.val_size=0 (the
    textbook's validation on the test set) and the data found through $ACTLAB_DATA_DIR alone."""
    run_dir = tmp_path / "run"
    args = ["debug=limit", "data.val_size=0", "data.batch_size=32", "data.system_dir=null", "data.download=false",
            "callbacks=none", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = run_train_main(args, cwd=tmp_path, env={"ACTLAB_DATA_DIR": str(fake_data_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_record(run_dir)
    assert record["status"] == "completed" and record["config"]["data"]["data_dir"] == str(fake_data_dir)
    assert record["epochs_completed"] == 2 and all(len(v) == 2 for v in record["history"].values())
    # debug=limit: 5 of the 16 training batches (512 images, none held out, in batches of 32) per epoch
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2 * 5
    # validation is the test set (its 128 images in one batch): the last epoch's, tested on the last checkpoint
    assert record["history"]["val/acc"][-1] == pytest.approx(record["test/acc"], abs=1e-6)
    assert record["history"]["val/loss"][-1] == pytest.approx(record["test/loss"], rel=1e-5)


def compile_unavailable() -> str | None:
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this platform"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++")):
        return "torch.compile's CPU backend needs a C++ compiler"
    return None


@pytest.mark.slow  # the compilation: ~14 s with Inductor's cache warm, ~40 s cold on 2 busy cores
@pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))
def test_compile_true_trains_the_compiled_network_like_the_eager_one(tmp_path, fake_data_dir):
    from torch._dynamo.utils import counters

    tiny = ["debug=fdr", "model.depth=1", "callbacks=none", "logger=csv"]
    counters.clear()
    compiled, _ = train_in_process(tmp_path / "compiled", fake_data_dir, [*tiny, "compile=true"])
    assert counters["stats"]["unique_graphs"] >= 1  # the run went through torch.compile
    eager, _ = train_in_process(tmp_path / "eager", fake_data_dir, tiny)
    assert compiled["status"] == eager["status"] == "completed", compiled.get("error")
    assert compiled["config"]["compile"] is True and eager["config"]["compile"] is False
    assert compiled["test/acc"] == eager["test/acc"]
    assert compiled["test/loss"] == pytest.approx(eager["test/loss"], rel=1e-4)
    assert compiled["history"]["train/loss"] == pytest.approx(eager["history"]["train/loss"], rel=1e-4)


def test_same_seed_same_result(tmp_path, fake_data_dir):
    a, _ = train_in_process(tmp_path / "a", fake_data_dir, ["trainer.max_epochs=2", "callbacks=none"])
    b, _ = train_in_process(tmp_path / "b", fake_data_dir, ["trainer.max_epochs=2", "callbacks=none"])
    assert a["history"]["train/loss"] == b["history"]["train/loss"]
    assert a["test/acc"] == b["test/acc"]


def test_diverging_loss_is_recorded_not_crashed(tmp_path, fake_data_dir, caplog):
    diverging = ["optimizer.lr=1e6", "optimizer.momentum=0.99", "trainer.max_epochs=3"]
    record, out = train_in_process(tmp_path, fake_data_dir, diverging)
    assert record["status"] == "diverged"
    assert "loss" in record["error"] and read_record(out)["status"] == "diverged"
    assert record["epochs_completed"] < 3
    # a diverged run is a result: resume=true skips it (as a pack does), saying so
    with caplog.at_level("INFO", logger="actlab.training"):
        again, _ = train_in_process(tmp_path, fake_data_dir, [*diverging, "resume=true"])
    assert again == read_record(out) and again["started_at"] == record["started_at"]
    assert f"resume: {out} already diverged, skipping" in caplog.messages


@pytest.mark.parametrize("limit", ["+trainer.max_time=00:00:00:01",
                                   "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer "
                                   "+callbacks.timer.duration=00:00:00:01"])  # fmt: skip
def test_a_run_cut_short_by_its_time_limit_says_so_and_counts_only_its_full_epochs(limit, tmp_path, fake_data_dir):
    record, out = train_in_process(tmp_path, fake_data_dir, [*limit.split(), "trainer.max_epochs=1000",
                                                             "data.batch_size=4", "callbacks=none"])  # fmt: skip
    ran = len(record["epoch_times_s"])
    assert record["status"] == "completed" and record["stop_reason"] == "max_time" and 0 < ran < 1000
    assert record["stopped_epoch"] == ran - 1 == record["test_ckpt"]["epoch"] == len(record["history"]["val/acc"]) - 1
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == ran - 1
    if record["partial_epochs"]:  # cut inside its last epoch (all but surely: 96 batches an epoch)
        (cut,) = record["partial_epochs"]
        assert cut["epoch"] == ran - 1 and 0 < cut["batches"] < cut["of"] == 96
    assert record["epochs_completed"] == ran - len(record["partial_epochs"])


@pytest.mark.parametrize(
    "override, error, message",
    [
        ("optimizer.lr=0", ConfigError, "optimizer.lr must be > 0"),
        ("optimizer.lr=-0.1", ConfigError, "optimizer.lr must be > 0"),
        ("model.depth=0", ValueError, "model.depth must be a positive integer"),
        ("model.hidden_shape=[]", ValueError, "hidden_shape is empty"),
        ("model.hidden_shape=[128,-4]", ValueError, "positive integers"),
        ("data.batch_size=0", ValueError, "data.batch_size must be a positive integer"),
        ("data.val_size=100000", ValueError, "leaves no training data"),
        ("trainer.max_epochs=0", ConfigError, "max_epochs must be >= 1"),
        ("train_steps_per_call=0", ConfigError, "train_steps_per_call must be an integer >= 1"),
        ("train_steps_per_call=2.5", ConfigError, "train_steps_per_call must be an integer >= 1"),
        (
            "callbacks.early_stopping.patience=1 callbacks.early_stopping.monitor=val/acc_typo",
            ConfigError,
            "callbacks.early_stopping.monitor='val/acc_typo' is not a metric the run logs; choose one of: train/loss, "
            "train/acc, train/lr, val/loss, val/acc, val/f1",
        ),
        ("callbacks.model_checkpoint.monitor=val/los", ConfigError, "callbacks.model_checkpoint.monitor='val/los'"),
    ],
)
def test_bad_input_fails_before_training_and_is_recorded(override, error, message, tmp_path, fake_data_dir):
    with pytest.raises(error, match=message):
        train_in_process(tmp_path, fake_data_dir, override.split())
    record = read_record(tmp_path / "run")
    assert record["status"] == "failed" and message.split()[0] in record["error"]
    assert record["epochs_completed"] == 0


def test_resume_skips_a_completed_run(tmp_path, fake_data_dir):
    first, out = train_in_process(tmp_path, fake_data_dir, ["debug=fdr"])
    again, _ = train_in_process(tmp_path, fake_data_dir, ["debug=fdr", "resume=true"])
    assert again["started_at"] == first["started_at"]  # not re-run


def test_cli_fast_dev_run_and_unknown_activation(tmp_path, fake_data_dir):
    ok = run_train_cli(["debug=fdr", *data_overrides(fake_data_dir)], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    record = read_record(run_dir)
    assert record["status"] == "completed" and record["activation"] == "relu"
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    unknown = "In 'train': Could not find 'activation/nosuch'"
    bad = run_train_main(["activation=nosuch", *data_overrides(fake_data_dir)], cwd=tmp_path, expect=unknown)
    assert bad.returncode == 1 and unknown in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    choices = bad.stderr.split("Available options in 'activation':", 1)[1].split("Config search path:")[0].split()
    assert {"telu", "staf", "relu"} <= set(choices) and len(choices) == len(group_options("activation"))
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 1  # no run started


def test_the_in_process_helper_raises_a_crash_and_reports_only_the_expected_failure(
    tmp_path, fake_data_dir, monkeypatch
):
    """A crash is the test's error, not an exit status 1 that a `returncode != 0` check would take."""

    def crash(*args, **kwargs):
        raise KeyError("a bug in actlab")

    monkeypatch.setattr("actlab.training.run", crash)  # train.py imports it when it runs
    args = [*data_overrides(fake_data_dir), f"hydra.run.dir={tmp_path / 'run'}"]
    for expect in (None, "another failure"):
        with pytest.raises(KeyError, match="a bug in actlab"):
            run_train_main(args, cwd=tmp_path, expect=expect)
    reported = run_train_main(args, cwd=tmp_path, expect="a bug in actlab")  # as the process shows it
    assert reported.returncode == 1 and reported.stderr.strip().splitlines()[-3:] == [
        "KeyError: 'a bug in actlab'",
        "",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
    ], reported.stderr[-3000:]


def test_cli_bad_value_exits_nonzero_with_clear_error(tmp_path, fake_data_dir):
    bad = run_train_main(["model.depth=0", *data_overrides(fake_data_dir)], cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert bad.returncode == 1 and bad.stderr.splitlines() == [
        f"error: model.depth must be a positive integer, got 0 (traceback in {run_dir / 'metrics.json'}; "
        "HYDRA_FULL_ERROR=1 shows it here)"], bad.stderr[-3000:]  # fmt: skip
    assert read_record(run_dir)["status"] == "failed"


@pytest.mark.parametrize(
    "override, message",
    [("model.depth=abc", "model.depth must be a positive integer, got 'abc'"),
     ("optimizer.lr=0", "optimizer.lr must be > 0, got 0"),
     ("activation=staf activation.tau=0", "STAF needs tau >= 1 terms, got 0"),
     ("callbacks.early_stopping.patience=1 callbacks.early_stopping.monitor=val/acc_typo",
      "callbacks.early_stopping.monitor='val/acc_typo' is not a metric the run logs; choose one of: train/loss")],
)  # fmt: skip
def test_a_config_mistake_is_one_clear_line_and_the_record_keeps_the_traceback(override, message, tmp_path,
                                                                                fake_data_dir):  # fmt: skip
    run_dir = tmp_path / "run"
    args = [*override.split(), *data_overrides(fake_data_dir), f"hydra.run.dir={run_dir}"]
    # the script as a process once; in this process for the other mistakes (the same entry point)
    bad = (run_train_cli if override.startswith("model") else run_train_main)(args, cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    (error_line,) = bad.stderr.strip().splitlines()  # one line on screen, nothing on stdout
    assert not bad.stdout.strip(), bad.stdout
    assert error_line.startswith("error: ") and message in error_line
    assert str(run_dir / "metrics.json") in error_line and "HYDRA_FULL_ERROR=1" in error_line
    assert "Traceback" in read_record(run_dir)["traceback"]
    if not override.startswith("optimizer"):
        return  # the full traceback on request: checked once
    full = run_train_main(args, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"}, expect=message)
    assert full.returncode == 1 and "Traceback" in full.stderr, full.stderr[-3000:]
    assert full.stderr.strip().splitlines()[-1] == f"actlab.errors.ConfigError: {message}"


def test_runs_sharing_a_machine_split_its_threads(monkeypatch):
    from actlab.training import default_threads

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert default_threads(None) is None
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert default_threads(4) == 2 and default_threads(16) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert default_threads(None) == 3


def test_a_bad_activation_field_fails_when_the_activation_is_built(tmp_path, fake_data_dir):
    with pytest.raises(ConfigError, match="negative_slope.*abc"):
        train_in_process(tmp_path, fake_data_dir, ["activation=leaky_relu", "activation.negative_slope=abc"])
    assert read_record(tmp_path / "run")["status"] == "failed"


def test_the_model_takes_its_input_and_class_counts_from_the_data(tmp_path, fake_data_dir):
    from actlab.training import build_data_and_classifier

    cfg = compose_train(data_overrides(fake_data_dir), output_dir=tmp_path)
    datamodule, module = build_data_and_classifier(cfg)
    assert module.net.linears[0].in_features == datamodule.input_size == 784
    assert module.net.head.out_features == datamodule.num_classes == 10
    with pytest.raises(Exception, match="num_classes"):  # not a model setting any more
        compose_train(["model.num_classes=5"], output_dir=tmp_path)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_trainer_gpu_without_cuda_says_what_torch_sees_and_the_fix(tmp_path, fake_data_dir):
    with pytest.raises(ConfigError, match=r"trainer=gpu asks for a CUDA GPU.*sees none.*trainer=cpu"):
        train_in_process(tmp_path, fake_data_dir, ["trainer=gpu"])
    assert "trainer=cpu" in read_record(tmp_path / "run")["error"]


def test_a_run_ends_with_one_line_saying_how_it_went_and_no_noise(tmp_path, fake_data_dir):
    result = run_train_cli(["trainer.max_epochs=2", *data_overrides(fake_data_dir)[:-2]], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    record = read_record(run_dir)
    (last,) = [line for line in output.splitlines() if "run completed |" in line]
    assert f"test acc {100 * record['test/acc']:.2f}%" in last and "2 epochs" in last
    assert f"record {run_dir / 'metrics.json'}" in last and f"tensorboard --logdir {run_dir}" in last
    # not a terminal: one line per epoch instead of a progress bar
    assert "epoch 1/2" in output and "epoch 2/2" in output and "Epoch 0:" not in output and "it/s]" not in output
    for noise in ("litlogger", "LeafSpec", "`srun` command", "Total FLOPs: 0"):
        assert noise not in output


def test_a_corrupt_last_checkpoint_falls_back_and_never_loses_the_history(tmp_path, fake_data_dir):
    first, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=3", "callbacks=none"])
    checkpoints = out / "checkpoints"
    (best,) = checkpoints.glob("best_epoch=*.ckpt")
    best_epoch = int(best.stem.split("=")[1])
    write_record(out, {**first, "status": "interrupted"})
    (checkpoints / "last.ckpt").write_bytes(b"not a checkpoint")
    resumed, _ = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=4", "callbacks=none", "resume=true"])
    assert resumed["status"] == "completed" and resumed["resumed_from"] == str(best)
    assert "last.ckpt does not load" in resumed["resume_warning"]
    assert resumed["epochs_completed"] == 4  # the best epoch's history, then the epochs after it
    assert resumed["history"]["val/acc"][: best_epoch + 1] == first["history"]["val/acc"][: best_epoch + 1]
    assert resumed["previous_attempt"]["history"] == first["history"]  # the abandoned attempt is kept

    for path in checkpoints.glob("*.ckpt"):
        path.write_bytes(b"")
    write_record(out, {**resumed, "status": "interrupted"})
    fresh, _ = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=1", "callbacks=none", "resume=true"])
    assert fresh["status"] == "completed" and fresh["resumed_from"] is None
    assert "starting afresh" in fresh["resume_warning"] and fresh["previous_attempt"]["epochs_completed"] == 4


def test_a_resumed_run_keeps_its_csv_rows_and_writes_each_epoch_once(tmp_path, fake_data_dir):
    csv_run = ["callbacks=none", "logger=csv", "callbacks.model_checkpoint.monitor=val/loss",
               "callbacks.model_checkpoint.mode=min"]  # fmt: skip
    first, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=3", *csv_run])
    write_record(out, {**first, "status": "interrupted"})
    (out / "checkpoints" / "last.ckpt").unlink()  # so the resume falls back to the best epoch's checkpoint
    (best,) = (out / "checkpoints").glob("best_epoch=*.ckpt")
    best_epoch = int(best.stem.split("=")[1])

    def val_rows():
        with open(out / "csv" / "metrics.csv", newline="") as file:
            return [(int(r["epoch"]), float(r["val/acc"])) for r in csv.DictReader(file) if r["val/acc"]]

    before = val_rows()
    assert [epoch for epoch, _ in before] == [0, 1, 2]
    resumed, _ = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=4", *csv_run, "resume=true"])
    assert resumed["resumed_from"] == str(best)
    after = val_rows()
    assert [epoch for epoch, _ in after] == [0, 1, 2, 3]  # each once: the epochs after the best one trained again
    assert after[: best_epoch + 1] == before[: best_epoch + 1]  # the earlier attempt's rows, kept
    assert [value for _, value in after] == pytest.approx(resumed["history"]["val/acc"], abs=1e-6)


def test_the_closing_line_points_to_what_the_loggers_wrote(tmp_path, fake_data_dir):
    from actlab.console import summary_line

    record, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=1", "callbacks=none", "logger=csv"])
    line = summary_line(record)
    assert f"metrics: {out / 'csv' / 'metrics.csv'}" in line and "tensorboard" not in line
    assert (out / "csv" / "metrics.csv").is_file()


def test_the_overfit_debug_config_memorises_its_batches(tmp_path, fake_data_dir):
    """``debug=overfit``: the same few batches every epoch (the loader stops shuffling), and
    the loss approaches zero, as the config promises a sound loop does."""
    record, _ = train_in_process(tmp_path, fake_data_dir, ["debug=overfit", "callbacks=none", "logger=csv"])
    assert record["status"] == "completed" and record["epochs_completed"] == 100
    assert record["history"]["train/acc"][-1] == 1.0 and record["history"]["train/loss"][-1] < 0.05


def test_an_epoch_without_validation_records_none_and_not_the_last_validations_values(tmp_path, fake_data_dir):
    """With check_val_every_n_epoch=2, Lightning's logged val/* between validations are the
    last validation's: the history has NaN (null in the record) there, one value per epoch in
    every list, and the best and last validation accuracy are those of the epochs validated."""
    record, _ = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2",
                                                           "callbacks=none"])  # fmt: skip
    history = record["history"]
    assert {len(values) for values in history.values()} == {4}

    def missing(value):
        return value is None or math.isnan(value)

    for key in ("val/acc", "val/loss", "val/f1"):
        assert missing(history[key][0]) and missing(history[key][2]), key
        assert not missing(history[key][1]) and not missing(history[key][3]), key
    validated = {1: history["val/acc"][1], 3: history["val/acc"][3]}
    assert record["val/acc_best"] == max(validated.values()) == validated[record["best_epoch"]]
    assert record["val/acc_last"] == validated[3]


def test_a_resumed_run_keeps_its_diagnostics_csv_rows(tmp_path, fake_data_dir):
    """The diagnostics' rows (gradient norms, layer outputs, dead units) carry a step but no
    epoch: a run resumed with logger=csv keeps those of its earlier epochs too, and its
    metrics.csv holds the rows of the uninterrupted run."""

    def rows(run_dir):
        with open(run_dir / "csv" / "metrics.csv", newline="") as file:
            return sorted((r["step"], r["epoch"], tuple(sorted(k for k, v in r.items() if v and "time" not in k)))
                          for r in csv.DictReader(file))  # fmt: skip

    base = [*data_overrides(fake_data_dir), "logger=csv", "seed=3", "test_after_fit=false"]  # as if interrupted
    out = tmp_path / "resumed"
    first = run(compose_train([*base, "trainer.max_epochs=2"], output_dir=out), out, activation="relu")
    write_record(out, {**first, "status": "interrupted"})
    assert any(not r[1] and r[0] != "0" for r in rows(out))  # an epoch's diagnostics, after the first step
    run(compose_train([*base, "trainer.max_epochs=3", "resume=true"], output_dir=out), out, activation="relu")
    alone = tmp_path / "alone"
    run(compose_train([*base, "trainer.max_epochs=3"], output_dir=alone), alone, activation="relu")
    assert rows(out) == rows(alone)


def interrupted_then_resumed(tmp_path, base, first_epochs, epochs, activation):
    """A run of ``first_epochs`` whose record says interrupted, resumed with ``resume=true`` to
    ``epochs``, and the same run done without stopping: (first record, resumed record,
    uninterrupted record, the resumed run's directory, the uninterrupted one's)."""
    out, alone = tmp_path / "resumed", tmp_path / "alone"
    first = run(compose_train([*base, f"trainer.max_epochs={first_epochs}"], output_dir=out), out, activation)
    write_record(out, {**first, "status": "interrupted"})
    again = [*base, f"trainer.max_epochs={epochs}", "resume=true"]
    resumed = run(compose_train(again, output_dir=out), out, activation)
    uninterrupted = run(compose_train([*base, f"trainer.max_epochs={epochs}"], output_dir=alone), alone, activation)
    return first, resumed, uninterrupted, out, alone


def test_a_run_resumed_inside_an_epoch_keeps_that_epochs_training_metrics(tmp_path, fake_data_dir):
    """With check_val_every_n_epoch=2 the checkpoints are taken at validation's end, inside the
    epoch: the resumed fit ends that epoch without training it again. The checkpoint keeps the
    epoch's running sums, so its training loss and accuracy are those of all its batches (they
    read 0 before, NaN if the sums were lost), and the resumed run's history is the uninterrupted
    run's."""
    base = [*data_overrides(fake_data_dir), "trainer.check_val_every_n_epoch=2", "callbacks=none", "seed=4"]
    first, resumed, uninterrupted, _, _ = interrupted_then_resumed(tmp_path, base, 4, 6, "relu")
    assert resumed["history"]["train/loss"][3] == pytest.approx(first["history"]["train/loss"][3], abs=1e-6)
    for key, values in uninterrupted["history"].items():
        assert resumed["history"][key] == pytest.approx(values, abs=1e-5, nan_ok=True), key


def test_a_run_resumed_inside_an_epoch_keeps_that_epochs_gradient_flow(tmp_path, fake_data_dir):
    """The same resume inside an epoch (checkpoints at validation's end, before the epoch's
    diagnostics): the gradient norms sampled in that epoch before the checkpoint count in its
    ``flow/grad_norm``, which is the uninterrupted run's (it was NaN before)."""
    only_flow = ["callbacks.gradient_histograms=null", "callbacks.layer_outputs=null", "callbacks.dead_neurons=null",
                 "callbacks.activation_parameters=null", "callbacks.activation_plot=null",
                 "callbacks.gradient_flow.every_n_steps=3"]  # fmt: skip
    base = [*data_overrides(fake_data_dir), "trainer.check_val_every_n_epoch=2", *only_flow, "seed=4"]
    _, resumed, uninterrupted, _, _ = interrupted_then_resumed(tmp_path, base, 2, 3, "tanh")
    flow = [key for key in uninterrupted["history"] if key.startswith("flow/grad_norm/")]
    assert flow and not math.isnan(uninterrupted["history"][flow[0]][1])
    for key in flow:
        assert resumed["history"][key] == pytest.approx(uninterrupted["history"][key], rel=1e-5), key


def test_a_resumed_run_records_the_initial_networks_dead_ratios_and_figures_not_its_first_measurement(
        tmp_path, fake_data_dir):  # fmt: skip
    """``dead/at_init`` is the network's before its first step: a resumed run records the
    uninterrupted run's, not the first epoch it measured after the resume; and its histogram
    figures name their first series for what it is."""
    diagnostics = ["callbacks.activation_parameters=null", "callbacks.activation_plot=null",
                   "callbacks.dead_neurons.probe_size=256", "callbacks.gradient_flow=null"]  # fmt: skip
    base = [*data_overrides(fake_data_dir), *diagnostics, "seed=5"]
    first, resumed, uninterrupted, out, _ = interrupted_then_resumed(tmp_path, base, 2, 3, "relu")
    assert resumed["resumed_from"] and resumed["dead/at_init"] == uninterrupted["dead/at_init"] == first["dead/at_init"]
    assert (out / "figures" / "dead_neurons.png").is_file()


def csv_rows(run_dir):
    """``run_dir``'s metrics.csv rows in file order, as (step, epoch, the keys with a value)."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return [(r["step"], r["epoch"], tuple(sorted(k for k, v in r.items() if v and "time" not in k)))
                for r in csv.DictReader(file)]  # fmt: skip


def test_a_run_resumed_inside_an_epoch_keeps_the_csv_row_of_its_validation(tmp_path, fake_data_dir):
    """With check_val_every_n_epoch=2 the checkpoint is taken at validation's end, after that
    validation's row and before the epoch's training row: the resumed run logs the training
    row again and not the validation's, so the earlier validation row stays (it was dropped,
    as every earlier row from the resumed run's first step on), and the resumed metrics.csv
    holds the uninterrupted run's rows."""
    base = [*data_overrides(fake_data_dir), "trainer.check_val_every_n_epoch=2", "callbacks=none", "logger=csv",
            "seed=4", "test_after_fit=false"]  # fmt: skip
    *_, out, alone = interrupted_then_resumed(tmp_path, base, 2, 4, "relu")
    assert sum("val/acc" in keys for _, _, keys in csv_rows(alone)) == 2
    assert csv_rows(out) == csv_rows(alone)


def test_a_run_killed_between_its_test_and_its_record_has_one_test_row_after_the_resume(tmp_path, fake_data_dir):
    """A run stopped after its test row was written but before its record said completed is
    tested again on resume: its metrics.csv has the one test row of that second test."""
    base = [*data_overrides(fake_data_dir), "callbacks=none", "logger=csv", "seed=6", "trainer.max_epochs=2"]
    out = tmp_path / "run"
    first = run(compose_train(base, output_dir=out), out, activation="relu")
    write_record(out, {**first, "status": "interrupted"})  # as if killed before the record was completed
    before = csv_rows(out)
    again = run(compose_train([*base, "resume=true"], output_dir=out), out, "relu")
    assert again["status"] == "completed" and again["resumed_from"] and again["test/acc"] == first["test/acc"]
    assert sum("test/acc" in keys for _, _, keys in before) == 1
    assert csv_rows(out) == before


def test_a_resume_says_where_it_goes_on_from(tmp_path, fake_data_dir, caplog):
    """One log line: the run, how its record had ended, and the checkpoint, epoch and step it
    goes on from (or inside which epoch, for a checkpoint taken inside one)."""
    base = [*data_overrides(fake_data_dir), "callbacks=none", "seed=7"]
    out = tmp_path / "run"
    first = run(compose_train([*base, "trainer.max_epochs=2"], output_dir=out), out, activation="relu")
    write_record(out, {**first, "status": "interrupted"})
    last = out / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=False)["global_step"]
    with caplog.at_level("INFO"):
        run(compose_train([*base, "trainer.max_epochs=3", "resume=true"], output_dir=out), out, "relu")
    (line,) = [m for m in caplog.messages if m.startswith("resume:")]
    assert step > 0 and line == f"resume: {out} (interrupted) from {last} (after epoch 2, step {step})"


def tensorboard_scalars(run_dir):
    """Every scalar tag's (step, value) pairs as TensorBoard shows the run's event files (the
    earlier attempt's purged where a resume asked for it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# of the default diagnostics, the dead-neuron scan alone (on a small probe): quick, and it logs rows of its own
DEAD_NEURONS_ONLY = ["callbacks.activation_parameters=null", "callbacks.activation_plot=null",
                     "callbacks.dead_neurons.probe_size=256", "callbacks.gradient_flow=null",
                     "callbacks.gradient_histograms=null", "callbacks.layer_outputs=null"]  # fmt: skip


def test_a_resumed_runs_tensorboard_shows_each_step_once(tmp_path, fake_data_dir):
    """A run resumed from a checkpoint older than what it had logged (here its best epoch's,
    the last one gone) logs those epochs again: TensorBoard shows each step once, the
    uninterrupted run's scalars (the earlier attempt's events after the checkpoint are purged)."""
    base = [*data_overrides(fake_data_dir), *DEAD_NEURONS_ONLY, "logger=tensorboard", "seed=8", "test_after_fit=false",
            "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=max"]  # fmt: skip
    out = tmp_path / "resumed"
    first = run(compose_train([*base, "trainer.max_epochs=3"], output_dir=out), out, activation="relu")
    write_record(out, {**first, "status": "interrupted"})
    (out / "checkpoints" / "last.ckpt").unlink()  # the resume falls back to the worst-loss (best here) epoch
    resumed = run(compose_train([*base, "trainer.max_epochs=3", "resume=true"], output_dir=out), out, "relu")
    assert resumed["resumed_from"] and "best_epoch=" in resumed["resumed_from"]
    alone = tmp_path / "alone"
    run(compose_train([*base, "trainer.max_epochs=3"], output_dir=alone), alone, "relu")
    mine, theirs = tensorboard_scalars(out), tensorboard_scalars(alone)
    # the final HPARAMS row is a file of its own, read in name order: see the pack's test of this
    theirs = {tag: values for tag, values in theirs.items() if not tag.startswith("hparams/")}
    assert set(mine) >= set(theirs) and "val/acc" in mine and "dead/overall" in mine
    for tag, values in theirs.items():
        assert [step for step, _ in mine[tag]] == [step for step, _ in values], tag
        assert [value for _, value in mine[tag]] == pytest.approx([value for _, value in values], abs=1e-5), tag


def test_testing_the_best_epoch_after_a_resume_keeps_every_csv_row(tmp_path, fake_data_dir):
    """``test_ckpt=best`` makes Lightning restore the best epoch's checkpoint for the test, its
    callbacks' states included: the run's history and its CSV bookkeeping stay the fit's (a
    run resumed after its fit, e.g. killed while testing, kept only the rows up to its best
    epoch's checkpoint otherwise, dropping its last epoch's diagnostics rows)."""
    base = [*data_overrides(fake_data_dir), *DEAD_NEURONS_ONLY, "logger=csv", "seed=2", "optimizer.lr=0.05",
            "trainer.max_epochs=4", "test_ckpt=best"]  # fmt: skip
    out = tmp_path / "run"
    first = run(compose_train(base, output_dir=out), out, activation="relu")
    assert first["best_epoch"] < 3  # the best epoch's checkpoint is not the last one
    write_record(out, {**first, "status": "interrupted"})  # as if killed while testing
    before = csv_rows(out)
    again = run(compose_train([*base, "resume=true"], output_dir=out), out, "relu")
    assert again["status"] == "completed" and again["history"] == first["history"]
    assert csv_rows(out) == before


def test_where_a_fit_goes_on_from_for_its_loggers(tmp_path, monkeypatch, caplog):
    """What TensorBoard is told to hide of an earlier attempt: from a resume's checkpoint, its
    step; with no checkpoint of its own but Lightning's SLURM requeue checkpoint (a requeued job
    goes on by itself), that one's, said in the log; a fresh start asked to resume, everything
    earlier (-1); a plain fresh start, nothing."""
    from omegaconf import OmegaConf

    from actlab.training import Resume, resume_step

    torch.save({"epoch": 1, "global_step": 7, "loops": {}}, tmp_path / "hpc_ckpt_1.ckpt")
    torch.save({"epoch": 2, "global_step": 9, "loops": {}}, tmp_path / "hpc_ckpt_2.ckpt")
    resume, plain = OmegaConf.create({"resume": True}), OmegaConf.create({})
    assert resume_step(Resume("last.ckpt", {"global_step": 5}), plain, tmp_path) == 5
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert resume_step(Resume(), plain, tmp_path) is None  # not under SLURM: Lightning does not look
    assert resume_step(Resume(), resume, tmp_path) == -1
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "actlab")
    with caplog.at_level("INFO"):
        assert resume_step(Resume(), plain, tmp_path) == 9  # the newest requeue checkpoint
    assert f"from Lightning's SLURM requeue checkpoint {tmp_path / 'hpc_ckpt_2.ckpt'}" in caplog.text


def test_a_checkpoint_inside_an_epoch_from_before_the_resumable_loaders_is_resumed_with_a_warning(tmp_path):
    """A checkpoint taken inside an epoch's training by an actlab whose loaders did not keep
    their order resumes the epoch's remaining batches from a fresh shuffle (Lightning warned;
    actlab's loaders, resumable now, silence that): ``resume=true`` says so in the log and the
    record's ``resume_warning``; a checkpoint with the loaders' state, one at an epoch's end and
    one past the epoch's training (at its validation) do not."""
    from actlab.data.resumable import fresh_shuffle_warning
    from actlab.training import CHECKPOINT_DIR, resume_point

    def checkpoint(started, processed, last_batch, data):
        epochs = {"ready": started, "started": started, "processed": processed, "completed": processed}
        batches = {"current": {"ready": 3, "started": 3, "processed": 3, "completed": 3}, "is_last_batch": last_batch}
        return {"epoch": processed, "global_step": 10, "FashionMNISTDataModule": data,
                "loops": {"fit_loop": {"epoch_progress": {"current": epochs, "total": epochs},
                                       "epoch_loop.batch_progress": batches}}}  # fmt: skip

    old = {"shuffle_generator": torch.zeros(3)}
    new = {**old, "train_epoch": {"generators": [torch.zeros(3)], "batches_done": 3}}
    assert "fresh shuffle" in fresh_shuffle_warning(checkpoint(2, 1, False, old))
    assert fresh_shuffle_warning(checkpoint(2, 1, False, new)) is None  # the loaders' own state
    assert fresh_shuffle_warning(checkpoint(2, 2, True, old)) is None  # an epoch's end
    assert fresh_shuffle_warning(checkpoint(2, 1, True, old)) is None  # the epoch's training done
    (tmp_path / CHECKPOINT_DIR).mkdir()
    torch.save(checkpoint(2, 1, False, old), tmp_path / CHECKPOINT_DIR / "last.ckpt")
    resume = resume_point(tmp_path)
    assert resume.path.endswith("last.ckpt") and "fresh shuffle" in resume.warning


def test_a_fresh_start_over_an_earlier_attempts_files_shows_only_its_own_tensorboard_steps(tmp_path, fake_data_dir):
    """``resume=true`` over an attempt that left no checkpoint that loads starts afresh: the
    earlier attempt's TensorBoard events are hidden, so the scalars are the new run's alone."""
    base = [*data_overrides(fake_data_dir), "callbacks=none", "logger=tensorboard", "seed=8", "test_after_fit=false"]
    out = tmp_path / "run"
    first = run(compose_train([*base, "trainer.max_epochs=2", "optimizer.lr=0.2"], output_dir=out), out, "relu")
    write_record(out, {**first, "status": "interrupted"})
    for checkpoint in (out / "checkpoints").glob("*.ckpt"):
        checkpoint.write_bytes(b"truncated")
    again = run(compose_train([*base, "trainer.max_epochs=2", "resume=true"], output_dir=out), out, "relu")
    assert again["resumed_from"] is None and "starting afresh" in again["resume_warning"]
    alone = tmp_path / "alone"
    run(compose_train([*base, "trainer.max_epochs=2"], output_dir=alone), alone, "relu")
    mine, theirs = tensorboard_scalars(out), tensorboard_scalars(alone)
    for tag in (tag for tag in theirs if not tag.startswith("hparams/")):
        assert [step for step, _ in mine[tag]] == [step for step, _ in theirs[tag]], tag
        assert [value for _, value in mine[tag]] == pytest.approx([value for _, value in theirs[tag]], abs=1e-5), tag
