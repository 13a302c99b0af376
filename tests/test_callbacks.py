"""Diagnostics: dead-neuron logic, what reaches TensorBoard, and the textbook's observations."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import requires_real_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training import train_in_process
from torch import nn

from actlab.callbacks import (
    DeadNeuronCounter,
    DeadNeuronMonitor,
    dead_neuron_metrics,
    scan_dead_neurons,
    weight_gradients,
)
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


def test_settled_only_when_the_rest_of_the_probe_set_cannot_change_the_answer():
    counter = DeadNeuronCounter(probe_samples=1000)
    out = torch.ones(600, 3)
    out[:, 1] = 0.0  # neuron 1 silent so far
    counter.update(out)
    assert not counter.settled()  # neuron 1 might still fire, or stay dead
    out[0, 1] = 1.0  # now it fired once: not dead, but near zero on 599 of 600
    counter = DeadNeuronCounter(probe_samples=1000)
    counter.update(out)
    # neurons 0 and 2 can no longer reach 990 near-zero samples; neuron 1 still can (599 + 400)
    assert not counter.settled(0.99)
    assert counter.settled(0.5)  # 599 >= 500 already: near-dead at 50 %, whatever comes
    assert counter.near_dead(0.5).tolist() == [False, True, False]
    later = torch.ones(391, 3)
    later[:, 1] = 0.0
    counter.update(later)  # 990 near-zero samples: near-dead whatever the last 9 are
    assert counter.settled(0.99)
    assert counter.near_dead(0.99).tolist() == [False, True, False]
    assert counter.dead().tolist() == [False, False, False]


def make_net_with_dead_neurons(activation, seed):
    torch.manual_seed(seed)
    net = SimpleNetwork(activation, hidden_shape=[64, 48, 32])
    with torch.no_grad():  # kill some neurons outright, make others fire on few samples
        net.linears[1].bias[:3] = -100.0
        net.linears[2].bias[5:9] = -1.5
        net.linears[0].bias[10:20] = -3.0
    return net.eval()


@pytest.mark.parametrize("activation", [nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.Tanh])
@pytest.mark.parametrize("seed", [0, 1])
def test_scan_that_settles_early_gives_exactly_the_full_pass_answer(activation, seed):
    net = make_net_with_dead_neurons(activation, seed)
    inputs = torch.randn(9000, 784)
    with torch.inference_mode():
        early = scan_dead_neurons(net, inputs, batch_size=2048)
        full = scan_dead_neurons(net, inputs, batch_size=2048, settle_early=False)
        scanned, full_scanned = early[0].samples, full[0].samples
        reference = [DeadNeuronCounter(probe_samples=len(inputs)) for _ in net.linears]
        for counter, out in zip(reference, net.forward_hidden(inputs)):
            counter.update(out)
    assert full_scanned == len(inputs)
    for a, b, c in zip(early, full, reference):
        assert torch.equal(a.dead(), c.dead()) and torch.equal(b.dead(), c.dead())
        assert torch.equal(a.near_dead(0.99), c.near_dead(0.99)) and torch.equal(b.near_dead(0.99), c.near_dead(0.99))
    if activation is nn.ReLU:  # dead neurons: only the whole set proves them dead
        assert sum(int(c.dead().sum()) for c in reference) >= 3 and scanned == len(inputs)


def test_scan_drops_settled_layers_behind_the_deepest_undecided_one():
    torch.manual_seed(0)
    net = SimpleNetwork(nn.ReLU, hidden_shape=[64, 48, 32]).eval()
    with torch.no_grad():
        net.linears[0].bias[:2] = -1e3  # two dead neurons in the first layer
        net.linears[1].bias.fill_(1.0)  # layers behind it fire on almost every sample
        net.linears[2].bias.fill_(1.0)
    with torch.inference_mode():
        counters = scan_dead_neurons(net, torch.randn(20_000, 784))
    assert counters[0].samples == 20_000
    assert counters[1].samples < 5_000 and counters[2].samples < 5_000
    assert counters[0].dead().sum() == 2


def test_scan_of_a_healthy_network_stops_after_a_few_batches():
    torch.manual_seed(0)
    net = SimpleNetwork(nn.LeakyReLU).eval()
    with torch.inference_mode():
        counters = scan_dead_neurons(net, torch.randn(50_000, 784))
    assert counters[0].samples < 10_000 and all(c.samples <= counters[0].samples for c in counters)
    assert not any(bool(c.dead().any()) for c in counters)


def test_dead_neuron_metrics_per_layer_and_overall():
    counters = [DeadNeuronCounter(), DeadNeuronCounter()]
    for out_a, out_b in [([[0.0, 1.0]], [[1.0, 1.0, 0.0]]), ([[0.0, 0.0]], [[1.0, 0.0, 0.0]])]:
        counters[0].update(torch.tensor(out_a))
        counters[1].update(torch.tensor(out_b))
    metrics = dead_neuron_metrics(counters)
    assert metrics["dead/layer_0"] == 0.5 and metrics["dead/layer_1"] == pytest.approx(1 / 3)
    assert metrics["dead/overall"] == pytest.approx(2 / 5)


def _open_tensorboard_writers() -> set:
    """The live threads of TensorBoard event writers (one per writer not closed)."""
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    return {t for t in threading.enumerate() if isinstance(t, _AsyncWriterThread) and t.is_alive()}


def test_runs_and_packs_close_every_tensorboard_writer_they_open(tmp_path, fake_data_dir):
    """A run or a pack that has ended leaves no TensorBoard writer open (a sweep of many runs in
    one process would keep a thread and a file per run), and no event file of it is empty."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from test_pack import members_for

    from actlab.pack.training import train_pack

    before = _open_tensorboard_writers()
    record, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=1", "callbacks=none"], "relu")
    members, _ = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "tanh")], ["callbacks=none"])
    records = [record, *train_pack(members, "pack")]
    assert all(r["status"] == "completed" for r in records)
    assert _open_tensorboard_writers() <= before
    for run_dir in (out, *(m.output_dir for m in members)):
        files = sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
        assert files
        for path in files:  # beyond the header every event file starts with, it holds summaries
            assert sum(1 for _ in EventFileLoader(str(path)).Load()) > 1, path


def test_the_hparams_row_is_written_once_beside_the_loggers_events(tmp_path, monkeypatch):
    """``write_hparams`` writes into the directory of the logger's writer, on the first process
    only (as the logger's own writer does: under DDP every other rank writes nothing)."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    import actlab.tensorboard as tensorboard

    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    logger.experiment.add_scalar("val/acc", 0.5, 0)
    logger.finalize("success")
    before = set(tmp_path.glob("events.out.tfevents.*"))
    monkeypatch.setattr(tensorboard.rank_zero_only, "rank", 1)
    tensorboard.write_hparams([logger], {"lr": 0.1}, {"test/acc": 0.8}, step=3)
    assert set(tmp_path.glob("events.out.tfevents.*")) == before
    monkeypatch.setattr(tensorboard.rank_zero_only, "rank", 0)
    tensorboard.write_hparams([logger], {"lr": 0.1}, {"test/acc": 0.8}, step=3)
    (written,) = set(tmp_path.glob("events.out.tfevents.*")) - before
    events = LegacyEventFileLoader(str(written)).Load()
    values = [(event.step, value.tag, value.simple_value) for event in events for value in event.summary.value]
    assert (3, "hparams/test/acc", pytest.approx(0.8)) in values
    assert {tag for _, tag, _ in values} >= {"_hparams_/experiment", "_hparams_/session_start_info"}


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
    for word in (b"activation", b"depth", b"lr", b"seed", b"hparams/test/acc", b"hparams/dead/overall"):
        assert word in hparams
    assert [e.value for e in acc.Scalars("hparams/test/acc")] == [pytest.approx(record["test/acc"])]
    # the record has the final dead ratios; static figures are in the run dir
    assert set(record) >= {"dead/overall", "dead/layer_0", "near_dead/overall", "dead/at_init"}
    # the gradient flow: per hidden layer, the first step's gradient norms and each epoch's numbers
    assert len(record["flow/grad_norm_first_step"]) == 3 and all(g > 0 for g in record["flow/grad_norm_first_step"])
    for i in range(3):
        assert len(record["history"][f"flow/grad_norm/layer_{i}"]) == 2
        assert [e.step for e in acc.Scalars(f"flow/output_rms/layer_{i}")] == expected_steps
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"gradient_histograms.png", "layer_outputs.png", "dead_neurons.png"}
    # the time each epoch spent in the diagnostics, a part of that epoch's time
    spent = record["diagnostics_epoch_s"]
    assert len(spent) == 2 and all(0 < s < t for s, t in zip(spent, record["epoch_times_s"]))


def test_callbacks_none_keeps_checkpoints_but_no_diagnostics(tmp_path, fake_data_dir):
    record, out = train_in_process(tmp_path, fake_data_dir, ["trainer.max_epochs=1", "callbacks=none"])
    assert record["status"] == "completed" and "dead/overall" not in record
    assert record["diagnostics_epoch_s"] == [None]  # no diagnostic ran
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
def real_data():
    dm = FashionMNISTDataModule(download=False)
    dm.setup()
    return dm


def measure_dead(data, activation, seed=0):
    torch.manual_seed(seed)
    net = SimpleNetwork(functools.partial(activation), hidden_shape=[2048, 1024, 1024, 512, 512, 256, 128])
    monitor = DeadNeuronMonitor(probe_size=20_000)
    monitor.measure(net, data, [], 0)
    return monitor.at_init


@requires_real_data
def test_untrained_deep_relu_net_dies_with_depth_like_the_textbook(real_data):
    dead = measure_dead(real_data, nn.ReLU)
    # textbook: ~0, 0, 0.6, 2.9, 22, 40, 45 %
    assert dead[0] == 0 and dead[1] < 0.01
    assert dead[-1] > 0.3 and dead[-2] > 0.3 and dead[4] > 0.1
    assert dead[-1] > 10 * max(dead[:3]) + 0.2
    assert measure_dead(real_data, nn.SiLU) == [0.0] * 7


@requires_real_data
def test_sigmoid_gradients_vanish_towards_the_input(real_data):
    norms = {}
    for name, activation in [("sigmoid", nn.Sigmoid), ("relu", nn.ReLU)]:
        torch.manual_seed(0)
        net = SimpleNetwork(functools.partial(activation))
        norms[name] = [float(g.norm()) for g in weight_gradients(net, *real_data.probe_set(1024))]
    assert norms["sigmoid"][0] < norms["relu"][0] / 20  # input layer: > an order of magnitude
    assert norms["sigmoid"] == sorted(norms["sigmoid"])  # and shrinking layer by layer towards the input


def test_run_history_checkpoint_taken_between_epochs_keeps_the_finished_epoch():
    from actlab.callbacks import RunHistory

    epoch = SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(ready=3)))  # all its batches
    progress = SimpleNamespace(epoch_loop=epoch)
    trainer = SimpleNamespace(callback_metrics={}, current_epoch=0, callbacks=[], loggers=[], fit_loop=progress,
                              num_training_batches=3, sanity_checking=False)  # fmt: skip
    history = RunHistory()
    history.setup(trainer, None, "fit")
    history.on_train_epoch_start(trainer, None)
    history.on_validation_end(trainer, None)  # the epoch was validated: its val/* are its own
    history.on_train_epoch_end(trainer, None)
    trainer.callback_metrics = {"train/loss": torch.tensor(0.5), "val/acc": torch.tensor(0.8)}  # logged after
    state = history.state_dict()  # e.g. SIGTERM before the next epoch starts
    assert state["history"] == {"train/loss": [0.5], "val/acc": [pytest.approx(0.8)]}
    history.on_train_epoch_start(trainer, None)  # not collected twice
    assert len(history.history["val/acc"]) == 1 and len(state["epoch_times"]) == 1


def test_histograms_are_binned_by_torch_keep_every_finite_value_and_drop_the_rest(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from actlab.tensorboard import add_histogram

    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    values = torch.cat([torch.randn(5000), torch.tensor([float("nan"), float("inf"), -float("inf")])])
    add_histogram([logger], "h", values, 3)
    add_histogram([logger], "constant", torch.full((10,), 2.0), 3)
    logger.experiment.flush()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0})
    acc.Reload()
    (event,) = acc.Histograms("h")
    histogram = event.histogram_value
    finite = values[torch.isfinite(values)]
    assert event.step == 3 and histogram.num == 5000 and sum(histogram.bucket) == 5000
    assert histogram.min == pytest.approx(float(finite.min())) and histogram.max == pytest.approx(float(finite.max()))
    assert histogram.sum == pytest.approx(float(finite.sum()), rel=1e-4, abs=1e-3)
    assert sum(acc.Histograms("constant")[0].histogram_value.bucket) == 10


@pytest.mark.parametrize(("activation", "edge"), [(nn.Tanh(), 2.178), (nn.Sigmoid(), 4.357), (nn.Softsign(), 3.472)])
def test_a_bounded_unit_is_saturated_where_its_slope_is_below_5_percent_of_its_steepest(activation, edge):
    from actlab.callbacks.gradient_flow import activation_slopes, saturation_profile

    threshold = saturation_profile(activation, torch.zeros(1, 3))
    slopes = activation_slopes(activation, torch.tensor([[edge - 0.01, -(edge + 0.01)]]))
    assert float(slopes[0, 0]) > threshold > float(slopes[0, 1].abs())  # the edge, both sides of zero


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.GELU(), nn.PReLU(3), nn.SiLU()])
def test_an_unbounded_activation_has_no_saturation(activation):
    from actlab.callbacks.gradient_flow import saturation_profile

    assert saturation_profile(activation, torch.zeros(1, 3)) is None


def test_layer_statistics_see_saturation_and_signal_size():
    from actlab.callbacks.gradient_flow import layer_statistics

    torch.manual_seed(0)
    inputs = torch.randn(256, 784)
    net = SimpleNetwork(nn.Tanh, hidden_shape=[64, 32])
    calm = layer_statistics(net, inputs)
    with torch.no_grad():
        net.linears[0].weight.mul_(100)  # pre-activations far out on tanh's flat tails
    saturated = layer_statistics(net, inputs)
    assert calm["saturated"][0] < 0.05 and saturated["saturated"][0] > 0.9
    assert 0.9 < saturated["output_rms"][0] <= 1.0 and calm["output_rms"][0] < 0.9  # tanh's outputs pinned at +-1
    relu = layer_statistics(SimpleNetwork(nn.ReLU, hidden_shape=[64]), inputs)
    assert relu["saturated"] == [None] and relu["output_rms"][0] > 0
    from actlab.activations.classic import Step

    assert layer_statistics(SimpleNetwork(Step, hidden_shape=[8]), inputs)["saturated"] == [1.0]  # flat everywhere


def test_a_metric_first_seen_late_keeps_its_epochs_places_in_the_history():
    from actlab.callbacks import RunHistory

    class Late:
        epoch_seconds: dict = {}

        def __init__(self):
            self.calls = 0

        def epoch_values(self):
            self.calls += 1
            return {"flow/x": float(self.calls)} if self.calls in (2, 4) else {}

        def record_fields(self):
            return {}

    history = RunHistory(diagnostics=[Late()])
    trainer = SimpleNamespace(callback_metrics={})
    for epoch in range(4):
        trainer.callback_metrics = {"val/acc": torch.tensor(0.1 * epoch)}
        history.epoch_times.append(1.0)
        history._pending = True
        history._collect(trainer)
    assert history.history["flow/x"][1] == 2.0 and history.history["flow/x"][3] == 4.0
    assert math.isnan(history.history["flow/x"][0]) and math.isnan(history.history["flow/x"][2])


def test_gradient_flow_samples_the_training_gradients_and_keeps_the_first_step():
    from actlab.callbacks import GradientFlow, RunHistory

    net = SimpleNetwork(nn.Sigmoid, hidden_shape=[8, 4])
    module = SimpleNamespace(net=net)
    flow = GradientFlow(probe_size=16, every_n_steps=2)
    data = SimpleNamespace(probe_set=lambda size: (torch.randn(size, 784), torch.zeros(size, dtype=torch.long)))
    flow.measure(net, data, [], 0)  # before the first step: the initial network
    norms = {}
    for step in range(5):
        for i, linear in enumerate(net.linears):
            linear.weight.grad = torch.full_like(linear.weight, float(step + i + 1))
        norms[step] = [float(linear.weight.grad.norm()) for linear in net.linears]
        flow.on_before_optimizer_step(SimpleNamespace(global_step=step), module, None)
    flow.measure(net, data, [], 5)  # an epoch's end
    values = flow.epoch_values()
    assert flow.record_fields()["flow/grad_norm_first_step"] == pytest.approx(norms[0])
    for i in range(2):  # steps 0, 2 and 4 sampled
        assert values[f"flow/grad_norm/layer_{i}"] == pytest.approx((norms[0][i] + norms[2][i] + norms[4][i]) / 3)
    assert set(values) == {f"flow/{n}/layer_{i}" for n in ("grad_norm", "output_rms", "saturated") for i in range(2)}
    assert all(v != v for v in flow.epoch_values().values())  # an epoch not measured: NaN, the history stays aligned
    # a resumed run keeps what was measured before its first step (it is not measured again)
    history = RunHistory(diagnostics=[flow])
    resumed = RunHistory(diagnostics=[GradientFlow()])
    resumed.load_state_dict(history.state_dict())
    fields = resumed.record_fields(None)
    assert fields["flow/grad_norm_first_step"] == pytest.approx(norms[0])
    assert fields["flow/saturated_at_init"] == flow.record_fields()["flow/saturated_at_init"] is not None


def test_gradient_flow_samples_gathered_before_a_checkpoint_count_in_the_resumed_measurement():
    """A checkpoint taken between two measurements (inside an epoch, or between measuring
    epochs) keeps the gradient-norm samples gathered so far: the resumed fit's next
    ``flow/grad_norm`` is the mean over every sample, as the uninterrupted fit's."""
    from actlab.callbacks import GradientFlow, RunHistory

    torch.manual_seed(0)
    net = SimpleNetwork(nn.Tanh, hidden_shape=[8, 4])
    data = SimpleNamespace(probe_set=lambda size: (torch.randn(size, 784), torch.zeros(size, dtype=torch.long)))
    steps = [torch.rand(2) for _ in range(6)]
    alone = GradientFlow(probe_size=16)
    for norms in steps:
        alone.add_gradient_norms(norms, first=False)
    alone.measure(net, data, [], 6)

    before = GradientFlow(probe_size=16)
    for norms in steps[:4]:
        before.add_gradient_norms(norms, first=False)
    state = RunHistory(diagnostics=[GradientFlow(), before]).state_dict()  # a second flow: kept apart by name
    after = GradientFlow(probe_size=16)
    history = RunHistory(diagnostics=[GradientFlow(), after])
    history.load_state_dict(state)
    for norms in steps[4:]:
        after.add_gradient_norms(norms, first=False)
    after.measure(net, data, [], 6)
    resumed, uninterrupted = after.epoch_values(), alone.epoch_values()
    for i in range(2):
        key = f"flow/grad_norm/layer_{i}"
        assert resumed[key] == pytest.approx(uninterrupted[key]) == pytest.approx(float(sum(s[i] for s in steps) / 6))


def test_a_resumed_fits_histogram_figure_does_not_call_its_first_measurement_the_initial_network(tmp_path):
    """A checkpoint keeps no distribution: a resumed fit's first measured one is named by its
    step in the figure, not "at init"; a fit from the start names the initial network's."""
    from actlab.callbacks import LayerOutputHistograms

    fresh, resumed = LayerOutputHistograms(), LayerOutputHistograms()
    for diagnostic, first_step in ((fresh, 0), (resumed, 40)):
        for step in (first_step, first_step + 20):
            diagnostic.remember(["layer_0_784x8"], [torch.randn(64)], step)
    assert fresh.first_label == "at init"
    assert "40" in resumed.first_label and "init" not in resumed.first_label
    resumed.save_figure(tmp_path)
    assert (tmp_path / resumed.figure_name).is_file()


def test_a_resumed_fits_dead_neuron_figure_shows_the_initial_network_and_its_final_state(tmp_path, monkeypatch):
    """The initial network's dead ratios come back from the checkpoint (with the layers'
    widths): a resumed fit that measures once more draws them against its final state, and one
    that measures nothing draws the initial network's alone, labelled by layer."""
    import actlab.plotting
    from actlab.callbacks import DeadNeuronMonitor

    drawn = []
    monkeypatch.setattr(actlab.plotting, "plot_dead_ratios", lambda series, widths, _: drawn.append((series, widths)))
    net = SimpleNetwork(nn.ReLU, hidden_shape=[8, 4])
    data = SimpleNamespace(probe_set=lambda size: (torch.randn(64, 784), torch.zeros(64, dtype=torch.long)))
    before = DeadNeuronMonitor()
    before.measure(net, data, [], 0)
    for measured_after_the_resume in (1, 0):
        resumed = DeadNeuronMonitor()
        resumed.load_checkpoint_state(before.checkpoint_state())
        for step in range(measured_after_the_resume):
            resumed.measure(net, data, [], 10 + step)
        resumed.save_figure(tmp_path)
        series, widths = drawn.pop()
        assert widths == [8, 4] and series["at init"] == before.at_init
        assert ("final" in series) == bool(measured_after_the_resume)


def test_a_requeue_signal_during_a_fit_is_handled_only_at_a_training_calls_start(caplog):
    """SLURM's requeue signal saves a checkpoint from its handler. During a fit it is noted and
    handled only at a training call's start (elsewhere Lightning resumed some places wrongly:
    tests/test_pack_resume.py), once however often it came; a span inside (a pack member's own
    checkpoint) hands it on. Once the fit ends the handler is back, and a signal noted meanwhile
    handled; once a fit fails, one noted is dropped (its checkpoint would be taken wherever the
    failure struck), with a warning."""
    import os
    import signal

    from actlab.callbacks.requeue import RequeueGuard, requeue_signals_deferred

    handled = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))
    lightnings_handler = signal.getsignal(signal.SIGUSR1)  # saves the requeue checkpoint
    try:
        guard = RequeueGuard()
        guard.on_train_start(None, None)
        os.kill(os.getpid(), signal.SIGUSR1)  # inside a step, say
        with requeue_signals_deferred():  # a member's checkpoint
            os.kill(os.getpid(), signal.SIGUSR1)
        for hook in ("on_train_epoch_end", "on_train_epoch_start", "on_validation_start"):
            getattr(guard, hook)(None, None)
        assert handled == []
        guard.on_train_batch_start(None, None, None, 0)  # a call's start: handled there, once
        assert handled == [signal.SIGUSR1]
        guard.on_train_batch_start(None, None, None, 1)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handled == [signal.SIGUSR1]
        guard.on_train_end(None, None)
        assert handled == [signal.SIGUSR1] * 2 and signal.getsignal(signal.SIGUSR1) is lightnings_handler
        os.kill(os.getpid(), signal.SIGUSR1)  # after the fit: at once
        assert len(handled) == 3
        failing = RequeueGuard()
        failing.on_train_start(None, None)
        os.kill(os.getpid(), signal.SIGUSR1)
        failing.on_exception(None, None, RuntimeError("SIGTERM"))
        assert len(handled) == 3 and signal.getsignal(signal.SIGUSR1) is lightnings_handler
        assert "the job is not requeued" in caplog.text
    finally:
        signal.signal(signal.SIGUSR1, previous)
