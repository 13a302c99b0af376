"""Several optimiser steps per Lightning call (actlab.steps) give the numbers of one step per
call, bit for bit: in a single run and in a pack, with every kind of learning-rate schedule,
across epochs, a resume and a step limit."""

import csv
import logging
import types
from datetime import timedelta

import lightning as L
import pytest
import torch
from conftest import compose_train, data_overrides
from test_pack import members_for

from actlab.data.fashion_mnist import FashionMNISTDataModule
from actlab.errors import ConfigError
from actlab.pack.training import train_pack
from actlab.record import read_record
from actlab.steps import GroupedSteps
from actlab.training import run

# 384 training images in batches of 16: 24 steps an epoch, groups of 5 end with one of 4
SHORT = ["data.batch_size=16", "trainer.max_epochs=3", "logger=csv", "optimizer.lr=0.05"]
COMPARED = ("train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "val/f1")


@pytest.fixture
def calls(monkeypatch):
    """How many ``training_step`` calls each fit made (grouped, or one step per call: ``one_step``)."""
    made = []
    grouped, one_step = GroupedSteps.training_step, GroupedSteps.one_step

    def counted(self, dataloader_iter):
        made.append(self.trainer.global_step)
        return grouped(self, dataloader_iter)

    def counted_one(self, batch, batch_idx):
        made.append(self.trainer.global_step)
        return one_step(self, batch, batch_idx)

    monkeypatch.setattr(GroupedSteps, "training_step", counted)
    monkeypatch.setattr(GroupedSteps, "one_step", counted_one)
    return made


def single(tmp_path, fake_data_dir, name, *overrides):
    out = tmp_path / name
    cfg = compose_train([*data_overrides(fake_data_dir), *SHORT, *overrides], output_dir=out)
    record = run(cfg, out, activation="relu")
    assert record["status"] == "completed", record.get("error")
    return record, out


def logged_steps(out):
    with open(out / "csv" / "metrics.csv") as f:
        return [(row["step"], row["epoch"]) for row in csv.DictReader(f) if row.get("val/acc")]


def last_checkpoint(out):
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)


def assert_same_run(a, a_dir, b, b_dir, plateau_lag=False):
    for key in COMPARED:  # NaN (an epoch not validated, e.g. cut by max_steps) equals NaN here
        assert [v if v == v else None for v in a["history"][key]] == [v if v == v else None for v in b["history"][key]]
    for key in ("test/loss", "test/acc", "test/f1", "epochs_completed", "partial_epochs"):
        assert a[key] == b[key], key
    assert logged_steps(a_dir) == logged_steps(b_dir)  # the epoch metrics' x axis: optimiser steps
    ca, cb = last_checkpoint(a_dir), last_checkpoint(b_dir)
    assert ca["global_step"] == cb["global_step"] and ca["epoch"] == cb["epoch"]
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    if not plateau_lag:
        assert ca["lr_schedulers"] == cb["lr_schedulers"]
    else:  # Lightning's automatic optimisation saves the epoch's checkpoint before it steps a plateau
        # schedule (its last.ckpt holds the schedule one step behind); grouped steps step it first
        assert ca["lr_schedulers"][0]["last_epoch"] + 1 == cb["lr_schedulers"][0]["last_epoch"]
    momenta = [[s["momentum_buffer"] for s in c["optimizer_states"][0]["state"].values()] for c in (ca, cb)]
    assert all(torch.equal(x, y) for x, y in zip(*momenta))


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "plateau", "cosine bf16-mixed"])
def test_a_run_in_groups_of_steps_is_the_run_of_one_step_per_call(scheduler, tmp_path, fake_data_dir, calls):
    """Step (one-cycle), epoch (cosine) and plateau schedules, with the default diagnostics
    (their per-step gradient-norm samples included), and under bf16 autocast (a group's
    backward runs inside the training step): groups of 16 and of 5 (a short group at every
    epoch's end) against Lightning's automatic optimisation."""
    scheduler, *precision = scheduler.split()
    overrides = [f"scheduler={scheduler}", *(f"trainer.precision={p}" for p in precision)]
    if scheduler == "plateau":
        overrides.append("scheduler.patience=0")
    alone, alone_dir = single(tmp_path, fake_data_dir, "one", *overrides, "train_steps_per_call=1")
    assert len(calls) == 3 * 24  # one call a step
    for group in (16, 5):
        calls.clear()
        grouped, grouped_dir = single(tmp_path, fake_data_dir, f"g{group}", *overrides, f"train_steps_per_call={group}")
        assert len(calls) == 3 * -(-24 // group)  # groups, the last of each epoch shorter
        assert_same_run(alone, alone_dir, grouped, grouped_dir, plateau_lag=scheduler == "plateau")
        assert grouped["flow/grad_norm_first_step"] == alone["flow/grad_norm_first_step"]
        assert grouped["history"]["flow/grad_norm/layer_0"] == alone["history"]["flow/grad_norm/layer_0"]
    if scheduler == "plateau":  # the schedule did act: val/loss cannot improve every epoch at this rate
        assert len(set(alone["history"]["train/lr"])) > 1, alone["history"]["train/lr"]


@pytest.mark.parametrize("scheduler", ["none", "plateau"])
def test_a_step_limit_in_groups_stops_where_one_step_per_call_does(scheduler, tmp_path, fake_data_dir):
    """``trainer.max_steps`` inside an epoch: a group ends there, not at its size; a plateau
    schedule does not step after the cut epoch, as Lightning's does not."""
    limited = ["+trainer.max_steps=40", f"scheduler={scheduler}"]
    a, a_dir = single(tmp_path, fake_data_dir, "one", *limited, "train_steps_per_call=1")
    b, b_dir = single(tmp_path, fake_data_dir, "g16", *limited, "train_steps_per_call=16")
    assert a["partial_epochs"] == [{"epoch": 1, "batches": 16, "of": 24}]  # 40 = 24 + 16
    assert_same_run(a, a_dir, b, b_dir)


class InterruptAtEpoch(L.Callback):
    """Ctrl-C as epoch ``epoch`` starts (its checkpoints hold the epochs before it)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_run_in_groups_resumed_with_a_plateau_schedule_goes_on_as_the_uninterrupted_run(tmp_path, fake_data_dir):
    """The plateau schedule a grouped run steps before its epoch's checkpoint is the one the
    resumed run goes on with (the other schedules: tests/test_pack_resume.py, at the default
    train_steps_per_call)."""
    plateau = ["scheduler=plateau", "scheduler.patience=0", "train_steps_per_call=16"]
    whole, whole_dir = single(tmp_path, fake_data_dir, "whole", *plateau)
    with pytest.raises(SystemExit):
        interrupt = ["+callbacks.interrupt._target_=test_steps.InterruptAtEpoch", "+callbacks.interrupt.epoch=2"]
        single(tmp_path, fake_data_dir, "resumed", *plateau, *interrupt)
    again, again_dir = single(tmp_path, fake_data_dir, "resumed", *plateau, "resume=true")
    assert again["resumed_from"].endswith("last.ckpt") and again["epochs_completed"] == 3
    assert len(set(whole["history"]["train/lr"])) > 1, whole["history"]["train/lr"]  # the schedule acted
    assert_same_run(whole, whole_dir, again, again_dir)


def test_a_setting_that_works_per_lightning_step_keeps_one_step_per_call_and_says_so(tmp_path, fake_data_dir,
                                                                                     calls, caplog):  # fmt: skip
    with caplog.at_level(logging.INFO, logger="actlab.steps"):
        single(tmp_path, fake_data_dir, "clipped", "+trainer.gradient_clip_val=0.5", "train_steps_per_call=16",
               "trainer.max_epochs=1")  # fmt: skip
    assert len(calls) == 24  # one_step: Lightning's own training_step(batch, batch_idx), its loop drawing the batches
    assert any("train_steps_per_call=16 not applied): trainer.gradient_clip_val" in m for m in caplog.messages)


def test_pack_members_in_groups_of_steps_are_the_pack_of_one_step_per_call(tmp_path, fake_data_dir, calls):
    """A pack with a member stopped early (the stack compacts between epochs) and members of
    two learning rates (two optimiser groups over views of the stacked parameters)."""
    specs = [(1, "relu", "optimizer.lr=0.05"), (2, "relu", "optimizer.lr=0.05"), (3, "tanh", "optimizer.lr=0.02")]
    extra = [*SHORT[:2], "trainer.max_epochs=4", "callbacks=none", "callbacks.early_stopping.patience=1",
             "callbacks.early_stopping.min_delta=0.05"]  # fmt: skip
    runs, made = {}, {}
    for group in (1, 16):
        calls.clear()
        grouped = [*extra, f"train_steps_per_call={group}"]
        members, _ = members_for(tmp_path / f"g{group}", fake_data_dir, specs, grouped)
        runs[group] = (train_pack(members, f"p{group}"), members)
        made[group] = len(calls)
    assert made[16] <= made[1] / 8
    records, grouped = runs[1][0], runs[16][0]
    assert any(r.get("stop_reason") == "early_stopping" for r in records)  # a member left the stack
    for a, b, ma, mb in zip(records, grouped, runs[1][1], runs[16][1]):
        assert a["status"] == b["status"] == "completed"
        for key in COMPARED[:-1]:
            assert a["history"][key] == b["history"][key], key
        for key in ("test/acc", "stop_reason", "stopped_epoch", "epochs_completed"):
            assert a.get(key) == b.get(key), key
        wa, wb = (torch.load(m.output_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
                  for m in (ma, mb))  # fmt: skip
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_double_precision_runs_in_groups_on_float64_batches(tmp_path, fake_data_dir):
    """``trainer.precision=64-true`` with the default diagnostics: the images are float64 once
    for every batch and probe (float32 images into float64 weights would fail), the model
    summary's example input too."""
    record, out = single(tmp_path, fake_data_dir, "double", "trainer.precision=64-true", "trainer.max_epochs=1")
    weights = last_checkpoint(out)["state_dict"]
    assert all(w.dtype == torch.float64 for w in weights.values() if w.is_floating_point())
    assert 0 < record["history"]["train/loss"][0] < 10


class CountingDataModule(FashionMNISTDataModule):
    """A DataModule with a batch hook: it must see every training batch, grouped or not."""

    seen = 0

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.training and isinstance(batch, tuple):  # (the model summary's example input is not)
            CountingDataModule.seen += 1
        return batch


def test_a_batch_hook_sees_every_batch_of_a_group(tmp_path, fake_data_dir, calls):
    CountingDataModule.seen = 0
    single(tmp_path, fake_data_dir, "hooked", "data._target_=test_steps.CountingDataModule", "trainer.max_epochs=2",
           "train_steps_per_call=16")  # fmt: skip
    assert CountingDataModule.seen == 2 * 24 and len(calls) == 2 * 2


class UnsizedDataModule(FashionMNISTDataModule):
    """Training batches from an iterable without a length: the epoch ends at StopIteration."""

    def train_dataloader(self):
        batches = super().train_dataloader()
        return type("Unsized", (), {"__iter__": lambda _: iter(batches)})()


def test_a_training_loader_without_a_length_is_one_clear_error(tmp_path, fake_data_dir):
    """A training step that draws its own batches learns where an epoch ends from the loader's length."""
    out = tmp_path / "unsized"
    cfg = compose_train([*data_overrides(fake_data_dir), *SHORT, "data._target_=test_steps.UnsizedDataModule"], out)
    with pytest.raises(ConfigError, match="the training loader has no length"):
        run(cfg, out, activation="relu")
    assert read_record(out)["status"] == "failed"


def test_validation_counted_in_batches_keeps_one_step_per_call():
    from types import SimpleNamespace

    from actlab.steps import grouping_refusal

    trainer = SimpleNamespace(accumulate_grad_batches=1, gradient_clip_val=None, val_check_interval=1.0, callbacks=[])
    assert grouping_refusal(trainer) is None
    for interval in (1, 10, 0.5):  # an int counts batches (1: after every batch); a float < 1 is a share of the epoch
        trainer.val_check_interval = interval
        assert "val_check_interval" in grouping_refusal(trainer)


def test_accumulated_gradients_of_two_batches_are_the_gradient_of_their_union(tmp_path, fake_data_dir):
    """``trainer.accumulate_grad_batches=2`` keeps one step per call and Lightning's own loop:
    two accumulated batches of 16 step as one batch of 32 (the same samples, the same order)."""
    a, a_dir = single(tmp_path, fake_data_dir, "accumulated", "+trainer.accumulate_grad_batches=2",
                      "trainer.max_epochs=1", "train_steps_per_call=16")  # fmt: skip
    b, b_dir = single(tmp_path, fake_data_dir, "union", "data.batch_size=32", "trainer.max_epochs=1")
    wa, wb = (last_checkpoint(d)["state_dict"] for d in (a_dir, b_dir))
    assert last_checkpoint(a_dir)["global_step"] == last_checkpoint(b_dir)["global_step"] == 12
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


class StepHooks(L.Callback):
    """What a step's hooks see: the zero-grad, backward and optimiser-step hooks of every step
    (in their order, with the hook name the module has meanwhile, which ``self.log`` reads),
    the gradient when the optimiser step starts, and the batches Lightning counts as completed
    then (what a checkpoint written then, e.g. by SLURM's requeue signal, holds)."""

    seen: dict = {}

    def on_train_start(self, trainer, pl_module):
        StepHooks.seen["plain_batches"] = pl_module._plain_batches
        StepHooks.seen["direct"] = pl_module._direct

    def on_train_end(self, trainer, pl_module):
        StepHooks.seen["progress"] = trainer.fit_loop.epoch_loop.batch_progress.state_dict()

    def _saw(self, hook, trainer, pl_module):
        StepHooks.seen.setdefault("order", []).append((hook, pl_module._current_fx_name, trainer.global_step))

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        StepHooks.seen.setdefault("zero_grad", []).append(trainer.global_step)
        self._saw("on_before_zero_grad", trainer, pl_module)

    def on_before_backward(self, trainer, pl_module, loss):
        self._saw("on_before_backward", trainer, pl_module)

    def on_after_backward(self, trainer, pl_module):
        self._saw("on_after_backward", trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        progress = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        StepHooks.seen.setdefault("completed", []).append(progress)
        gradient = torch.cat([p.grad.flatten() for p in pl_module.parameters()])
        StepHooks.seen.setdefault("grad_norm", []).append(float(gradient.norm()))
        # the weights as the hook sees them: before this step's update
        StepHooks.seen.setdefault("weights", []).append(float(sum(p.double().sum() for p in pl_module.parameters())))
        self._saw("on_before_optimizer_step", trainer, pl_module)
        # a hook may log (grouped steps need batch_size, as any training_step(dataloader_iter) does)
        pl_module.log("train/hooked_step", float(trainer.global_step), reduce_fx="max", batch_size=1)


def test_every_step_runs_its_hooks_and_is_counted_as_it_completes(tmp_path, fake_data_dir):
    hooks = ["+callbacks.step_hooks._target_=test_steps.StepHooks", "trainer.max_epochs=2", "callbacks=none"]
    seen = {}
    for group in (1, 16):
        StepHooks.seen = {}
        single(tmp_path, fake_data_dir, f"g{group}", *hooks, f"train_steps_per_call={group}")
        seen[group] = StepHooks.seen
    assert seen[16]["plain_batches"]  # actlab's in-memory batches skip Lightning's batch preparation
    assert seen[16]["direct"] and not seen[1]["direct"]  # hooks called directly, not through Lightning's wrappers
    assert seen[1]["zero_grad"] == seen[16]["zero_grad"] == list(range(2 * 24))
    assert seen[1]["completed"] == seen[16]["completed"] == [*range(24), *range(24)]
    assert seen[1]["progress"] == seen[16]["progress"]  # every count of the fit's batches: ready ... completed
    assert seen[1]["order"] == seen[16]["order"]
    assert seen[16]["order"][:4] == [("on_before_zero_grad", "on_before_zero_grad", 0),
                                     ("on_before_backward", "on_before_backward", 0),
                                     ("on_after_backward", "on_after_backward", 0),
                                     ("on_before_optimizer_step", "on_before_optimizer_step", 0)]  # fmt: skip
    assert len(seen[16]["order"]) == 4 * 2 * 24
    assert seen[1]["grad_norm"] == seen[16]["grad_norm"] and min(seen[16]["grad_norm"]) > 0
    assert seen[1]["weights"] == seen[16]["weights"] and len(set(seen[16]["weights"])) == 2 * 24
    records = [read_record(tmp_path / f"g{group}") for group in (1, 16)]
    assert records[0]["history"]["train/hooked_step"] == records[1]["history"]["train/hooked_step"] == [23.0, 47.0]


@pytest.mark.parametrize("group", [1, 16])
def test_a_modules_own_step_hooks_and_backward_run_every_step(group, tmp_path, fake_data_dir, monkeypatch):
    """A module that overrides a step hook or ``backward`` gets each call, every step, with its
    name as the hook name (grouped steps call a hook only where something has it)."""
    from actlab.classifier import Classifier

    seen = []

    def hook(name):
        def record(self, *args):
            seen.append((name, self._current_fx_name))

        return record

    for name in ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step"):
        monkeypatch.setattr(Classifier, name, hook(name), raising=False)

    def backward(self, loss):
        seen.append(("backward", self._current_fx_name))
        loss.backward()

    monkeypatch.setattr(Classifier, "backward", backward)
    record, _ = single(tmp_path, fake_data_dir, f"g{group}", "trainer.max_epochs=1", "callbacks=none",
                       f"train_steps_per_call={group}")  # fmt: skip
    names = ["on_before_zero_grad", "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step"]
    assert seen == [(name, name) for name in names] * 24


def test_lightning_wrappers_step_where_they_do_more_than_call_hooks():
    """Grouped steps call the step hooks directly only where Lightning's backward and optimiser
    step would do nothing else: a gradient scaler, another strategy or a profiler keep them."""
    from actlab.steps import steps_only_call_hooks

    def direct(**settings):
        return steps_only_call_hooks(L.Trainer(**{"accelerator": "cpu", "devices": 1, "logger": False, **settings}))

    assert direct() and direct(precision="64-true") and direct(precision="bf16-true")
    assert not direct(profiler="simple")  # it times every hook call
    assert not direct(precision="16-mixed" if torch.cuda.is_available() else "bf16-mixed", **(
        {"accelerator": "cuda"} if torch.cuda.is_available() else {}))  # fmt: skip
    assert not direct(strategy="ddp_spawn", devices=2)


def test_callbacks_that_act_on_every_lightning_step_keep_one_step_per_call():
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from actlab.callbacks import DivergenceMonitor
    from actlab.steps import grouping_refusal

    class PerBatch(L.Callback):
        def on_train_batch_end(self, *args):
            pass

    def refusal(*callbacks):
        trainer = SimpleNamespace(accumulate_grad_batches=1, gradient_clip_val=None, val_check_interval=1.0,
                                  callbacks=list(callbacks))  # fmt: skip
        return grouping_refusal(trainer)

    fine = [ModelCheckpoint(monitor="val/acc"), TQDMProgressBar(), DivergenceMonitor(),
            LearningRateMonitor(logging_interval="epoch")]  # fmt: skip
    assert refusal(*fine) is None
    assert "every N training steps" in refusal(ModelCheckpoint(every_n_train_steps=5))
    assert "every N training steps or some time" in refusal(ModelCheckpoint(train_time_interval=timedelta(hours=1)))
    assert "LearningRateMonitor logs the rate per Lightning step" in refusal(LearningRateMonitor())
    assert "callback PerBatch acts on every Lightning step" in refusal(*fine, PerBatch())


@pytest.mark.parametrize(("before", "after"), [(1, 16), (16, 1)])
def test_a_run_resumed_in_the_other_mode_counts_its_steps_on(before, after, tmp_path, fake_data_dir):
    """Lightning keeps automatic and manual optimisation's step counts apart: a run interrupted
    at one step per call and resumed in groups (or the other way) goes on from its step, as the
    uninterrupted run (the one-cycle schedule sized to the run would fail past its last step)."""
    schedule = ["scheduler=onecycle"]
    whole, whole_dir = single(tmp_path, fake_data_dir, "whole", *schedule)
    interrupt = ["+callbacks.interrupt._target_=test_steps.InterruptAtEpoch", "+callbacks.interrupt.epoch=2"]
    with pytest.raises(SystemExit):
        single(tmp_path, fake_data_dir, "resumed", *schedule, f"train_steps_per_call={before}", *interrupt)
    again, again_dir = single(tmp_path, fake_data_dir, "resumed", *schedule, f"train_steps_per_call={after}",
                              "resume=true")  # fmt: skip
    assert last_checkpoint(again_dir)["global_step"] == 3 * 24
    assert_same_run(whole, whole_dir, again, again_dir)


def test_a_run_bounded_by_steps_does_not_resume_from_an_epochs_end(tmp_path, fake_data_dir):
    """Lightning resumes a run with trainer.max_steps from an epoch-end checkpoint by running that
    epoch's end again with no training (Lightning issue #19617): zero training metrics recorded
    over the epoch's real CSV rows. A clear error instead, before the record is touched."""
    from actlab.record import write_record

    record, out = single(tmp_path, fake_data_dir, "bounded", "+trainer.max_steps=48")  # 2 epochs of 24 steps
    assert record["epochs_completed"] == 2
    write_record(out, {**record, "status": "interrupted"})  # as if it had stopped early
    rows = (out / "csv" / "metrics.csv").read_text()
    cfg = compose_train(
        [*data_overrides(fake_data_dir), *SHORT, "+trainer.max_steps=72", "resume=true"], output_dir=out
    )
    with pytest.raises(ConfigError, match="19617"):
        run(cfg, out, activation="relu")
    assert read_record(out)["history"] == record["history"]
    assert (out / "csv" / "metrics.csv").read_text() == rows
    resumed = run(compose_train([*data_overrides(fake_data_dir), *SHORT, "resume=true"], output_dir=out), out, "relu")
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    assert (
        resumed["history"]["train/loss"][:2] == record["history"]["train/loss"]
        and min(resumed["history"]["train/loss"]) > 0
    )


class ProfiledHooks(L.Callback):
    """A profiler's record of the step hooks (Lightning's SimpleProfiler names each call)."""

    seen: dict = {}

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        pass

    def on_train_end(self, trainer, pl_module):
        ProfiledHooks.seen = {name: len(times) for name, times in trainer.profiler.recorded_durations.items()}


def test_a_profiler_sees_every_step_hook_of_a_grouped_run(tmp_path, fake_data_dir):
    """Under a profiler the grouped step calls the step hooks through Lightning's own hook calls
    (which time each), so the profile counts what one step per call's does."""
    profiled = ["+callbacks.profiled._target_=test_steps.ProfiledHooks", "callbacks=none", "trainer.max_epochs=1",
                "+trainer.profiler=simple"]  # fmt: skip
    counts = {}
    for group in (1, 16):
        ProfiledHooks.seen = {}
        single(tmp_path, fake_data_dir, f"p{group}", *profiled, f"train_steps_per_call={group}")
        counts[group] = ProfiledHooks.seen
    hooks = ["[Callback]ProfiledHooks.on_before_zero_grad", "[Callback]ProfiledHooks.on_before_optimizer_step",
             *(f"[LightningModule]Classifier.{hook}" for hook in ("on_before_zero_grad", "optimizer_zero_grad",
                                                                 "optimizer_step", "on_before_backward"))]  # fmt: skip
    for hook in hooks:
        assert counts[1].get(hook) == counts[16].get(hook) == 24, (hook, counts[1].get(hook), counts[16].get(hook))


class TorchStepHooks(L.Callback):
    """Registers torch optimiser step hooks (the optimiser's own, pre and post) as the fit
    starts, and counts their calls."""

    calls: dict[str, int] = {}

    def on_train_start(self, trainer, pl_module):
        TorchStepHooks.calls = {"pre": 0, "post": 0}
        optimizer = trainer.optimizers[0]

        def count(name):
            def hook(*args):
                TorchStepHooks.calls[name] += 1

            return hook

        optimizer.register_step_pre_hook(count("pre"))
        optimizer.register_step_post_hook(count("post"))


def test_torchs_optimiser_step_hooks_run_every_grouped_step(tmp_path, fake_data_dir):
    """Grouped steps step the optimiser without torch's per-call layers only where those would
    do nothing: a registered step hook is called every step, as in one step per call."""
    counted = {}
    for group in (1, 5):
        single(tmp_path, fake_data_dir, f"g{group}", "callbacks=none", "trainer.max_epochs=2",
               "+callbacks.hooks._target_=test_steps.TorchStepHooks", f"train_steps_per_call={group}")  # fmt: skip
        counted[group] = TorchStepHooks.calls
    assert counted[1] == counted[5] == {"pre": 48, "post": 48}


def _optimisers(seed: int) -> list[tuple[str, list[torch.nn.Parameter], torch.optim.Optimizer]]:
    """The same parameters under several torch optimisers (each its own copy)."""
    made = []
    settings = {"sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
                "nesterov": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                "adam": (torch.optim.Adam, {"lr": 1e-2}), "adamw": (torch.optim.AdamW, {"lr": 1e-2}),
                "rmsprop": (torch.optim.RMSprop, {"lr": 1e-2, "momentum": 0.5})}  # fmt: skip
    for name, (kind, options) in settings.items():
        generator = torch.Generator().manual_seed(seed)
        parameters = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((4, 3), (3,))]
        made.append((name, parameters, kind(parameters, **options)))
    return made


def test_a_plain_optimiser_step_is_torchs_step_bit_for_bit():
    """``plain_step`` (torch's per-call layers left out) and ``clear_gradients`` make the
    parameters and optimiser state of ``optimizer.step()`` and ``zero_grad()``, exactly, step after
    step; a learning-rate schedule sees the optimiser stepped (no warning), and steps alike."""
    import warnings

    from actlab.steps import clear_gradients, plain_step, steps_plainly

    torchs, plain = _optimisers(0), _optimisers(0)
    schedules = [torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5) for _, _, optimizer in torchs + plain]
    generator = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a schedule stepped before its optimiser would warn
        for _ in range(5):
            for (name, a, optimizer_a), (_, b, optimizer_b) in zip(torchs, plain):
                gradients = [torch.randn(p.shape, generator=generator) for p in a]
                for pa, pb, gradient in zip(a, b, gradients):
                    pa.grad, pb.grad = gradient.clone(), gradient.clone()
                optimizer_a.step()
                assert steps_plainly(optimizer_b), name
                plain_step(optimizer_b)
                optimizer_a.zero_grad()
                clear_gradients(optimizer_b)
                assert all(pa.grad is None and pb.grad is None for pa, pb in zip(a, b))
                assert all(torch.equal(pa, pb) for pa, pb in zip(a, b)), name
                assert not any(p.requires_grad is False for p in b)
            for schedule in schedules:
                schedule.step()
    for (name, _, optimizer_a), (_, _, optimizer_b) in zip(torchs, plain):
        sa, sb = optimizer_a.state_dict(), optimizer_b.state_dict()
        assert sa["param_groups"] == sb["param_groups"], name
        for i, state in sa["state"].items():
            assert all(torch.equal(v, sb["state"][i][k]) if torch.is_tensor(v) else v == sb["state"][i][k]
                       for k, v in state.items()), name  # fmt: skip


def test_a_hook_a_profiler_or_a_replaced_step_keeps_torchs_step():
    """``steps_plainly`` says no wherever torch's layers do something: a step hook (the
    optimiser's or a global one), a profiler recording, a differentiable optimiser, a ``step``
    replaced on the optimiser (but by a schedule). torch's own layers are what it unwraps."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from actlab.steps import TORCH_STEP_LAYERS, _own_step, steps_plainly

    def optimizer(**options):
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, **options)

    for kind in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        step, grad_mode = _own_step(kind)
        assert grad_mode and step.__code__ not in TORCH_STEP_LAYERS and step.__name__ == "step"
    assert steps_plainly(optimizer())
    hooked = optimizer()
    handle = hooked.register_step_post_hook(lambda *args: None)
    assert not steps_plainly(hooked)
    handle.remove()
    assert steps_plainly(hooked)
    handle = register_optimizer_step_pre_hook(lambda *args: None)
    try:
        assert not steps_plainly(optimizer())
    finally:
        handle.remove()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert not steps_plainly(optimizer())
    assert not steps_plainly(optimizer(differentiable=True))
    replaced = optimizer()
    replaced.step = lambda closure=None: None
    assert not steps_plainly(replaced)
    scheduled = optimizer()
    torch.optim.lr_scheduler.StepLR(scheduled, 1)
    assert steps_plainly(scheduled)
    replaced_then_scheduled = optimizer()  # the schedule's wrapper wraps the replacement, not the class's step
    replaced_then_scheduled.step = types.MethodType(lambda self, closure=None: None, replaced_then_scheduled)
    torch.optim.lr_scheduler.StepLR(replaced_then_scheduled, 1)
    assert not steps_plainly(replaced_then_scheduled)


def test_a_step_or_zero_grad_replaced_or_profiled_is_the_one_called(monkeypatch):
    """A ``step`` replaced on an optimiser class after a plain step is the one the next plain step
    calls; ``clear_gradients`` calls a ``zero_grad`` replaced on the optimiser, and torch's own
    under a profiler (whose trace then shows it)."""
    from actlab.steps import clear_gradients, plain_step

    class Mine(torch.optim.SGD):
        pass

    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.grad = torch.ones(2)
    optimizer = Mine([parameter], lr=0.5)
    plain_step(optimizer)
    assert torch.equal(parameter.detach(), torch.full((2,), -0.5))
    calls = []
    monkeypatch.setattr(Mine, "step", lambda self, closure=None: calls.append("step"))
    plain_step(optimizer)
    assert calls == ["step"] and torch.equal(parameter.detach(), torch.full((2,), -0.5))
    optimizer.zero_grad = lambda set_to_none=True: calls.append("zero_grad")
    clear_gradients(optimizer)
    assert calls == ["step", "zero_grad"] and parameter.grad is not None
    del optimizer.zero_grad
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        clear_gradients(optimizer)
    assert parameter.grad is None
    assert any(event.name.startswith("Optimizer.zero_grad#") for event in profile.events())
