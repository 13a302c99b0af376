"""End-to-end runs: config composition, train.py, the run record, bad input, divergence."""

import json

import pytest
from conftest import compose_train, data_overrides, run_train_cli
from omegaconf import OmegaConf

from actlab.config import group_options
from actlab.record import read_record
from actlab.training import ConfigError, run

GROUPS = ["activation", "model", "data", "optimizer", "trainer", "callbacks", "logger", "debug", "paths"]
RECORD_KEYS = {
    "status", "overrides", "activation", "depth", "hidden_shape", "seed", "epochs_completed",
    "test/acc", "test/loss", "val/acc_best", "val/acc_last", "fit_time_s", "epoch_time_s",
}  # fmt: skip


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_config_option_composes(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.seed == 42


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
    assert record["test/acc"] is not None


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
        ],
        "prelu",
    )
    assert record["status"] == "completed"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk) >= RECORD_KEYS, RECORD_KEYS - set(on_disk)
    assert on_disk["activation"] == "prelu" and on_disk["depth"] == 2 and on_disk["hidden_shape"] == [256, 64]
    assert on_disk["seed"] == 7 and on_disk["epochs_completed"] == 3
    assert len(on_disk["epoch_times_s"]) == 3 and on_disk["epoch_time_s"] > 0
    assert len(on_disk["history"]["val/acc"]) == 3 and len(on_disk["history"]["train/loss"]) == 3
    assert on_disk["val/acc_best"] == max(on_disk["history"]["val/acc"])
    # the generated data is easy: the model must learn it
    assert on_disk["test/acc"] > 0.5
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best_epoch=*.ckpt"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_same_seed_same_result(tmp_path, fake_data_dir):
    a, _ = train_in_process(tmp_path / "a", fake_data_dir, ["trainer.max_epochs=2", "callbacks=none"])
    b, _ = train_in_process(tmp_path / "b", fake_data_dir, ["trainer.max_epochs=2", "callbacks=none"])
    assert a["history"]["train/loss"] == b["history"]["train/loss"]
    assert a["test/acc"] == b["test/acc"]


def test_diverging_loss_is_recorded_not_crashed(tmp_path, fake_data_dir):
    record, out = train_in_process(
        tmp_path, fake_data_dir, ["optimizer.lr=1e6", "optimizer.momentum=0.99", "trainer.max_epochs=3"]
    )
    assert record["status"] == "diverged"
    assert "loss" in record["error"] and read_record(out)["status"] == "diverged"
    assert record["epochs_completed"] < 3


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
    ],
)
def test_bad_input_fails_before_training_and_is_recorded(override, error, message, tmp_path, fake_data_dir):
    with pytest.raises(error, match=message):
        train_in_process(tmp_path, fake_data_dir, [override])
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

    bad = run_train_cli(["activation=nosuch", *data_overrides(fake_data_dir)], cwd=tmp_path)
    assert bad.returncode != 0
    assert "nosuch" in bad.stderr and "telu" in bad.stderr and "staf" in bad.stderr  # lists the choices
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 1  # no run started


def test_cli_bad_value_exits_nonzero_with_clear_error(tmp_path, fake_data_dir):
    bad = run_train_cli(["model.depth=0", *data_overrides(fake_data_dir)], cwd=tmp_path)
    assert bad.returncode != 0 and "model.depth must be a positive integer" in bad.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert read_record(run_dir)["status"] == "failed"


def test_runs_sharing_a_machine_split_its_threads(monkeypatch):
    from actlab.training import default_threads

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert default_threads(None) is None
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert default_threads(4) == 2 and default_threads(16) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert default_threads(None) == 3
