"""Diagnostics: dead-neuron logic, what reaches TensorBoard, and the textbook's observations."""

import functools
from types import SimpleNamespace

import pytest
import torch
from conftest import requires_real_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training import train_in_process
from torch import nn

from actlab.callbacks import DeadNeuronCounter, DeadNeuronMonitor, GradientHistograms, dead_neuron_ratios
from actlab.data import FashionMNISTDataModule
from actlab.models import SimpleNetwork
from actlab.record import read_record


def test_dead_neuron_counter_across_batches():
    batch_1 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    batch_2 = torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    counter = DeadNeuronCounter()
    counter.update(batch_1)
    counter.update(batch_2)
    assert counter.dead().tolist() == [False, False, True, False]  # only neuron 2 never fired
    assert counter.samples == 4


def test_near_dead_uses_the_tolerance_and_fraction():
    out = torch.zeros(100, 3)
    out[:, 0] = 1e-7  # tiny but never exactly zero: near-dead, not dead
    out[0, 1] = 0.5  # fires on 1 % of samples: near-dead at the 99 % threshold
    out[:5, 2] = 0.5  # fires on 5 %: alive
    counter = DeadNeuronCounter(near_dead_tol=1e-6)
    counter.update(out)
    assert counter.dead().tolist() == [False, False, False]
    assert counter.near_dead(0.99).tolist() == [True, True, False]


def test_dead_ratios_per_layer():
    layer_a = [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0]])]
    layer_b = [torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    ratios = dead_neuron_ratios(zip(layer_a, layer_b))
    assert ratios == [0.5, pytest.approx(1 / 3)]


def test_tensorboard_gets_every_layer_at_init_and_each_epoch(tmp_path, fake_data_dir):
    record, out = train_in_process(
        tmp_path, fake_data_dir, ["trainer.max_epochs=2", "activation=staf", "model.depth=3"], "staf"
    )
    assert record["status"] == "completed"
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    steps_per_epoch = (512 - 128) // 128  # generated train set minus val_size, batch 128
    expected_steps = [0, steps_per_epoch, 2 * steps_per_epoch]
    sizes = ["784x256", "256x160", "160x64", "64x10"]
    for i, size in enumerate(sizes):
        assert [e.step for e in acc.Histograms(f"grad/layer_{i}_{size}")] == expected_steps
        assert [e.step for e in acc.Scalars(f"grad_norm/layer_{i}")] == expected_steps
    for i, size in enumerate(sizes[:-1]):
        assert [e.step for e in acc.Histograms(f"outputs/layer_{i}_{size}")] == expected_steps
        for name in ("dead", "near_dead", "output_mean", "output_std"):
            assert [e.step for e in acc.Scalars(f"{name}/layer_{i}")] == expected_steps
        assert [e.step for e in acc.Histograms(f"act_param/layer_{i}/frequency")] == expected_steps
    assert [e.step for e in acc.Scalars("dead/overall")] == expected_steps
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/loss"} <= set(tags["scalars"])
    assert "activation/shape" in tags["images"]
    # HPARAMS: one summary naming the hyper-parameters and the real metrics (no hp_metric)
    assert "hp_metric" not in tags["scalars"]
    hparams = acc.summary_metadata["_hparams_/experiment"].plugin_data.content
    for word in (b"activation", b"depth", b"lr", b"seed", b"test/acc", b"dead/overall"):
        assert word in hparams
    # the record has the final dead ratios; static figures are in the run dir
    assert set(record) >= {"dead/overall", "dead/layer_0", "near_dead/overall", "dead/at_init"}
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"gradient_histograms.png", "layer_outputs.png", "dead_neurons.png"}


def test_callbacks_none_keeps_checkpoints_but_no_diagnostics(tmp_path, fake_data_dir):
    record, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=1", "callbacks=none"])
    assert record["status"] == "completed" and "dead/overall" not in record
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "figures").exists()
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert not acc.Tags()["histograms"] and not any(t.startswith("dead/") for t in acc.Tags()["scalars"])


def test_diagnostics_do_not_change_training(tmp_path, fake_data_dir):
    with_diagnostics, _ = train_in_process(tmp_path / "a", fake_data_dir, ["trainer.max_epochs=2"])
    without, _ = train_in_process(tmp_path / "b", fake_data_dir, ["trainer.max_epochs=2", "callbacks=none"])
    assert with_diagnostics["history"]["train/loss"] == without["history"]["train/loss"]
    assert read_record(tmp_path / "a" / "run")["test/acc"] == without["test/acc"]


@pytest.fixture(scope="module")
def real_trainer_stub():
    dm = FashionMNISTDataModule(download=False)
    dm.setup()
    return SimpleNamespace(datamodule=dm, loggers=[])


def measure_dead(trainer, activation, seed=0):
    torch.manual_seed(seed)
    net = SimpleNetwork(functools.partial(activation), hidden_shape=[2048, 1024, 1024, 512, 512, 256, 128])
    monitor = DeadNeuronMonitor(probe_size=20_000)
    monitor.measure(trainer, SimpleNamespace(net=net), 0)
    return monitor.history[0][1]


@requires_real_data
def test_untrained_deep_relu_net_dies_with_depth_like_the_textbook(real_trainer_stub):
    dead = measure_dead(real_trainer_stub, nn.ReLU)
    # textbook: ~0, 0, 0.6, 2.9, 22, 40, 45 %
    assert dead[0] == 0 and dead[1] < 0.01
    assert dead[-1] > 0.3 and dead[-2] > 0.3 and dead[4] > 0.1
    assert dead[-1] > 10 * max(dead[:3]) + 0.2
    assert measure_dead(real_trainer_stub, nn.SiLU) == [0.0] * 7


@requires_real_data
def test_sigmoid_gradients_vanish_towards_the_input(real_trainer_stub):
    norms = {}
    for name, activation in [("sigmoid", nn.Sigmoid), ("relu", nn.ReLU)]:
        torch.manual_seed(0)
        callback = GradientHistograms(probe_size=1024)
        callback.measure(real_trainer_stub, SimpleNamespace(net=SimpleNetwork(functools.partial(activation))), 0)
        norms[name] = callback.norms[0][1]
    assert norms["sigmoid"][0] < norms["relu"][0] / 20  # input layer: > an order of magnitude
    assert norms["sigmoid"] == sorted(norms["sigmoid"])  # and shrinking layer by layer towards the input


def test_run_history_checkpoint_taken_between_epochs_keeps_the_finished_epoch():
    from actlab.callbacks import RunHistory

    trainer = SimpleNamespace(callback_metrics={})
    history = RunHistory()
    history.setup(trainer, None, "fit")
    history.on_train_epoch_start(trainer, None)
    history.on_train_epoch_end(trainer, None)
    trainer.callback_metrics = {"train/loss": torch.tensor(0.5), "val/acc": torch.tensor(0.8)}  # logged after
    state = history.state_dict()  # e.g. SIGTERM before the next epoch starts
    assert state["history"] == {"train/loss": [0.5], "val/acc": [pytest.approx(0.8)]}
    history.on_train_epoch_start(trainer, None)  # not collected twice
    assert len(history.history["val/acc"]) == 1 and len(state["epoch_times"]) == 1
