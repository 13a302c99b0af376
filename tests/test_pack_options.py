"""Every option means in a pack what it means in a single run, or the job is refused for
packing (and runs as a single run): never silently dropped.

Each honoured option trains a pack of two and the first member's single run, and compares
what a user reads: the record's values, the TensorBoard tags, the checkpoint files."""

import csv

import pytest
import torch
from conftest import compose_train, data_overrides, run_train_main
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from actlab.pack.members import Member, packing_refusal
from actlab.pack.training import train_pack
from actlab.record import read_record
from actlab.training import run
from hydra_plugins.actlab_packed_launcher.packed_launcher import group_into_packs

BASE = ["trainer.max_epochs=2", "callbacks=none"]
SPECS = [(1, "relu"), (2, "tanh")]
# options (space-separated overrides) a pack honours
HONOURED = [
    "trainer.max_epochs=1",
    "trainer.max_epochs=3 +trainer.max_steps=5",
    "trainer.precision=bf16-mixed",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "trainer.deterministic=true",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.limit_train_batches=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=1",
    "+trainer.accumulate_grad_batches=2",
    "+trainer.benchmark=true",
    "+trainer.inference_mode=false",
    "trainer.enable_progress_bar=true",
    "callbacks=default",
    "callbacks.early_stopping.patience=1 trainer.max_epochs=4 optimizer.lr=1e-12",
    "callbacks.model_checkpoint.save_top_k=2 trainer.max_epochs=3",
    "callbacks.model_checkpoint.monitor=val/loss callbacks.model_checkpoint.mode=min",
    "+callbacks.model_checkpoint.every_n_epochs=2 trainer.max_epochs=3",
    "+callbacks.last_checkpoint.every_n_epochs=2 trainer.max_epochs=3",
    "callbacks.model_checkpoint=null test_ckpt=last",
    "test_ckpt=best optimizer.lr=0.05",
    "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor scheduler=cosine",
    "logger=csv",
    "logger=tensorboard",
    "scheduler=cosine scheduler.warmup_epochs=1 trainer.max_epochs=3",
    "scheduler=step scheduler.step_size=1",
    "scheduler=onecycle",
    "optimizer=adam optimizer.weight_decay=0.01",
    "optimizer.nesterov=true",
    "data.batch_size=64",
    "model.depth=2 model.init=kaiming",
]
REFUSED = {
    "+trainer.gradient_clip_val=1.0": "gradient_clip_val",
    "+trainer.gradient_clip_algorithm=value": "gradient_clip_algorithm",
    "debug=fdr": "fast_dev_run",
    "debug=overfit": "overfit_batches",
    "+trainer.val_check_interval=0.5": "val_check_interval",
    "+trainer.max_time=00:00:01:00": "max_time",
    "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer +callbacks.timer.duration=00:00:01:00": "1/K",
    "+trainer.min_epochs=2": "min_epochs",
    "+trainer.min_steps=2": "min_steps",
    "+trainer.reload_dataloaders_every_n_epochs=1": "reload_dataloaders",
    "trainer.devices=2": "devices",
    "trainer.check_val_every_n_epoch=2": "check_val_every_n_epoch",
    "+trainer.profiler=simple": "profiler",
    "+trainer.enable_checkpointing=false": "enable_checkpointing",
    "+trainer.detect_anomaly=true": "detect_anomaly",
    "scheduler=plateau": "plateau",
    "model.share_activation=true": "share_activation",
    "compile=true": "compile",
    "+optimizer.foo=1 optimizer._target_=torch.optim.RMSprop": "RMSprop",
    "+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging +callbacks.swa.swa_lrs=0.1": "swa",
    "callbacks.model_checkpoint.filename='{val/acc:.3f}'": "filename",
    "+callbacks.model_checkpoint.every_n_train_steps=2": "inside an epoch",
    "+logger.mlflow._target_=lightning.pytorch.loggers.MLFlowLogger": "mlflow",
}


def members_for(tmp_path, fake_data_dir, extra):
    members = []
    for seed, activation in SPECS:
        out = tmp_path / "pack" / f"{activation}-{seed}"
        overrides = [*data_overrides(fake_data_dir), *BASE, *extra, f"seed={seed}", f"activation={activation}"]
        members.append(Member(compose_train(overrides, out), out, activation, overrides))
    return members


def tensorboard_tags(run_dir):
    """A run's TensorBoard scalars (per tag, its points in the order written) and its histogram and
    image tags. Its stages write event files of their own (fit, test, HPARAMS), read here in the
    order they were opened: by the time and then the process-wide counter their names end with.
    (TensorBoard reads them in the order of their names, where within a second the counter
    compares as text, "10" before "9".)"""
    if not (run_dir / "tensorboard").is_dir():
        return None

    def opened(path):
        stamp, *_, counter = path.name.split(".")[3:]
        return int(stamp), int(counter)

    scalars, histograms, images = {}, set(), set()
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"), key=opened):
        for event in LegacyEventFileLoader(str(path)).Load():  # as written (no migration to tensors)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.HasField("histo"):
                    histograms.add(value.tag)
                elif value.HasField("image"):
                    images.add(value.tag)
    return {"scalars": scalars, "histograms": sorted(histograms), "images": sorted(images)}


def assert_member_is_its_single_run(member_dir, single_dir):
    packed, alone = read_record(member_dir), read_record(single_dir)
    assert packed["status"] == alone["status"] == "completed", (packed.get("error"), alone.get("error"))
    for key in ("epochs_completed", "stopped_epoch", "best_epoch", "depth", "hidden_shape", "num_parameters"):
        assert packed[key] == alone[key], key
    assert packed["test_ckpt"]["epoch"] == alone["test_ckpt"]["epoch"]
    assert set(packed["history"]) == set(alone["history"])
    for key, values in alone["history"].items():
        assert packed["history"][key] == pytest.approx(values, abs=1e-5, nan_ok=True), key
    tested = {k for k in alone if k.startswith("test/")}
    assert tested == {k for k in packed if k.startswith("test/")}
    for key in tested:
        assert packed[key] == pytest.approx(alone[key], abs=1e-5), key
    names = sorted(p.name for p in (single_dir / "checkpoints").glob("*.ckpt"))
    assert sorted(p.name for p in (member_dir / "checkpoints").glob("*.ckpt")) == names
    for name in names:  # the same files hold the same training state
        mine, theirs = (torch.load(d / "checkpoints" / name, weights_only=False) for d in (member_dir, single_dir))
        assert (mine["epoch"], mine["global_step"]) == (theirs["epoch"], theirs["global_step"]), name
        assert (
            mine["state_dict"].keys() == theirs["state_dict"].keys()
            and mine["callbacks"].keys() == theirs["callbacks"].keys()
        ), name
        for key, weights in theirs["state_dict"].items():
            assert torch.allclose(mine["state_dict"][key], weights, rtol=1e-4, atol=1e-5), (name, key)
    mine, theirs = tensorboard_tags(member_dir), tensorboard_tags(single_dir)
    assert (mine is None) == (theirs is None)
    if theirs:
        assert mine["histograms"] == theirs["histograms"] and mine["images"] == theirs["images"]
        assert set(mine["scalars"]) == set(theirs["scalars"]) and "epoch" in theirs["scalars"]
        for tag, points in theirs["scalars"].items():
            if tag.startswith(("hparams/", "epoch")) or tag == "lr-SGD" or "time" in tag:
                assert [s for s, _ in mine["scalars"][tag]] == [s for s, _ in points], tag
                continue
            assert [s for s, _ in mine["scalars"][tag]] == [s for s, _ in points], tag
            assert [v for _, v in mine["scalars"][tag]] == pytest.approx([v for _, v in points], abs=1e-4), tag
    if (single_dir / "csv" / "metrics.csv").is_file():
        assert_same_csv(member_dir / "csv" / "metrics.csv", single_dir / "csv" / "metrics.csv")


def assert_same_csv(mine_path, theirs_path):
    """The same columns, rows and values (timings aside) in both CSV logs."""
    mine, theirs = (list(csv.DictReader(path.open())) for path in (mine_path, theirs_path))
    assert mine and len(mine) == len(theirs) and mine[0].keys() == theirs[0].keys()
    for i, (a, b) in enumerate(zip(mine, theirs)):
        for column, value in b.items():
            if "time" in column:
                continue
            if value == "":
                assert a[column] == "", (i, column)
            else:
                assert float(a[column]) == pytest.approx(float(value), abs=1e-5, nan_ok=True), (i, column)


@pytest.mark.parametrize("option", HONOURED)
def test_an_honoured_option_means_in_a_pack_what_it_means_alone(option, tmp_path, fake_data_dir):
    extra = option.split()
    members = members_for(tmp_path, fake_data_dir, extra)
    assert packing_refusal(members[0].cfg) is None
    records = train_pack(members, "p")
    assert [r["pack"]["size"] for r in records] == [2, 2]
    seed, activation = SPECS[0]
    out = tmp_path / "single"
    cfg = compose_train([*data_overrides(fake_data_dir), *BASE, *extra, f"seed={seed}", f"activation={activation}"],
                        out)  # fmt: skip
    run(cfg, out, activation)
    assert_member_is_its_single_run(members[0].output_dir, out)


@pytest.mark.parametrize("option", list(REFUSED))
def test_an_option_a_pack_cannot_honour_refuses_packing(option, tmp_path, fake_data_dir):
    members = members_for(tmp_path, fake_data_dir, option.split())
    reason = packing_refusal(members[0].cfg)
    assert reason is not None and REFUSED[option] in reason
    assert group_into_packs(members, 64) == ([], [0, 1])  # both run as single runs


def test_a_refused_job_runs_alone_in_the_same_sweep_with_one_line_saying_why(tmp_path, fake_data_dir):
    from test_sweeps import generated_data_overrides

    sweep_dir = tmp_path / "sweep"
    result = run_train_main(["-m", "hydra/launcher=packed", "activation=relu,tanh", "scheduler=none,plateau",
                            "trainer.max_epochs=2", "callbacks=none", "logger=csv",
                            *generated_data_overrides(fake_data_dir), f"hydra.sweep.dir={sweep_dir}"],
                           tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")]
    assert len(records) == 4 and all(r["status"] == "completed" for r in records)
    plateau = [r for r in records if r["config"]["scheduler"]]
    assert len(plateau) == 2 and all("pack" not in r for r in plateau)
    assert all(r["pack"]["size"] == 2 for r in records if not r["config"]["scheduler"])
    refusals = [line for line in (result.stdout + result.stderr).splitlines() if "runs as a single run" in line]
    assert len(refusals) == 2 and all("plateau" in line for line in refusals)


def test_jobs_whose_directories_name_a_colon_share_a_pack(tmp_path, fake_data_dir):
    """Hydra writes an override's colon `\\:` in a job's directory name (a time, say): the jobs
    still group by their settings (the directory in each config is no difference)."""
    members = []
    for seed in (1, 2):
        out = tmp_path / "sweep" / f"note=12\\:30,seed={seed}"
        overrides = [*data_overrides(fake_data_dir), *BASE, f"seed={seed}"]
        members.append(Member(compose_train([*overrides, f"paths.output_dir='{out}'"]), out, "relu", overrides))
    assert group_into_packs(members, 64) == ([[0, 1]], [])


@pytest.mark.parametrize("optimizer", [
    "optimizer=sgd scheduler=none",
    "optimizer=sgd scheduler=step scheduler.step_size=1 scheduler.warmup_epochs=1 trainer.max_epochs=3",
    "optimizer=adam scheduler=cosine",
    "optimizer=adam scheduler=onecycle trainer.log_every_n_steps=1",
])  # fmt: skip
def test_members_with_their_own_rate_and_weight_decay_are_their_single_runs(optimizer, tmp_path, fake_data_dir):
    """Members differing in optimizer.lr and optimizer.weight_decay (not side by side: three
    parameter groups) train as their single runs: records, TensorBoard (LearningRateMonitor's
    lr-<optimiser> included), CSV, and the optimiser and schedule states in their checkpoints."""
    extra = [*optimizer.split(), "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor"]
    lr = 0.05 if "sgd" in optimizer else 0.003
    specs = [(1, "relu", lr, 0.0), (2, "tanh", 4 * lr, 0.01), (3, "prelu", lr, 0.0)]
    members, singles = [], []
    for seed, activation, rate, decay in specs:
        own = [*data_overrides(fake_data_dir), *BASE, *extra, f"seed={seed}", f"activation={activation}",
               f"optimizer.lr={rate}", f"optimizer.weight_decay={decay}"]  # fmt: skip
        out = tmp_path / "pack" / f"{activation}-{seed}"
        members.append(Member(compose_train(own, out), out, activation, own))
        single = tmp_path / "single" / f"{activation}-{seed}"
        run(compose_train(own, single), single, activation)
        singles.append(single)
    # equal settings side by side (three parameter groups), then by activation config: prelu, relu; tanh
    assert group_into_packs(members, 64) == ([[2, 0, 1]], [])
    records = train_pack(members, "p")
    assert [r["pack"]["size"] for r in records] == [3, 3, 3]
    for member, single in zip(members, singles):
        assert_member_is_its_single_run(member.output_dir, single)
        rates = [tensorboard_tags(d)["scalars"][f"lr-{type_name(optimizer)}"] for d in (member.output_dir, single)]
        assert [v for _, v in rates[0]] == pytest.approx([v for _, v in rates[1]], rel=1e-6)
        mine, theirs = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
                        for d in (member.output_dir, single))  # fmt: skip
        assert_nearly_equal(mine["optimizer_states"], theirs["optimizer_states"], "optimizer_states")
        assert_nearly_equal(mine["lr_schedulers"], theirs["lr_schedulers"], "lr_schedulers")


def type_name(optimizer):
    return "Adam" if "adam" in optimizer else "SGD"


def assert_nearly_equal(a, b, where):
    """Equal structures, numbers and tensors to float32 rounding."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for key in b:
            assert_nearly_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert isinstance(a, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nearly_equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(b):
        assert torch.allclose(torch.as_tensor(a).float(), b.float(), rtol=1e-5, atol=1e-6), where
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6), where
    else:
        assert a == b, where
