"""Packed sweeps: a pack's members are the runs `python train.py <their overrides>` would do."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, compose_train, data_overrides, run_train_main
from hydra.utils import instantiate
from omegaconf import OmegaConf

from actlab.config import CONFIG_DIR, group_options
from actlab.errors import ConfigError
from actlab.models import SimpleNetwork
from actlab.pack import StackedNetwork
from actlab.pack.members import Member
from actlab.pack.training import check_packable, train_pack
from actlab.record import read_record
from actlab.training import run


def activation_factory(name):
    return instantiate(OmegaConf.load(CONFIG_DIR / "activation" / f"{name}.yaml"))


@pytest.mark.parametrize(("train_mode", "exact"), [(False, False), (True, False), (True, True)])
def test_every_activation_in_a_pack_matches_its_unpacked_network(train_mode, exact):
    """Outputs and gradients equal the unpacked network's: to float32 rounding, and (exact:
    each member computed alone, as in training) to the bit."""
    names = group_options("activation")
    nets = []
    keys = [name for name in names for _ in range(2)]  # two members side by side: one group of two each
    for i, name in enumerate(keys):
        torch.manual_seed(i)
        nets.append(SimpleNetwork(activation_factory(name), hidden_shape=[24, 16]).train(train_mode))
    stacked = StackedNetwork(nets, keys, exact=exact).train(train_mode)
    x = torch.randn(len(nets), 6, 784)
    y = stacked(x)

    def same(a, b):
        return torch.equal(a, b) if exact else torch.allclose(a, b, atol=1e-5)

    for k, (name, net) in enumerate(zip(keys, nets)):
        if name == "rrelu" and train_mode:
            continue  # random slopes: same law, not the same draws
        upstream = torch.randn(6, 10)
        (expected,) = [net(x[k])]
        assert same(y[k], expected), name
        grads = torch.autograd.grad((y[k] * upstream).sum(), list(stacked.parameters()), allow_unused=True,
                                    retain_graph=True)  # fmt: skip
        mine = dict(zip([n for n, _ in stacked.named_parameters()], grads))
        theirs = dict(zip([n for n, _ in net.named_parameters()], torch.autograd.grad(
            (expected * upstream).sum(), list(net.parameters()), allow_unused=True)))  # fmt: skip
        for layer in range(2):
            assert same(mine[f"weights.{layer}"][k], theirs[f"linears.{layer}.weight"]), name
            assert same(mine[f"biases.{layer}"][k], theirs[f"linears.{layer}.bias"]), name
        assert same(mine["weights.2"][k], theirs["head.weight"]), name
        by_tensor = {id(p): g for p, g in zip(stacked.parameters(), grads)}
        for param, (tensor, j) in stacked.member_slots(k).items():  # a trainable activation's own parameters
            if param.startswith("activations.") and j is not None and id(tensor) in by_tensor:
                assert same(by_tensor[id(tensor)][j], theirs[param]), (name, param)
        others = [j for j in range(len(nets)) if j != k]
        assert not mine["weights.0"][others].any(), name  # one member's loss reaches no other member


@pytest.mark.parametrize("members,batch", [(1, 128), (8, 128), (8, 88), (3, 1024)])
def test_member_cross_entropy_is_each_members_own_to_float32_rounding(members, batch):
    """The pack's loss layout (classes as dim 1, where a CPU vectorises along the batch) gives
    each member's per-sample cross-entropy and its gradients as ``F.cross_entropy`` over the
    member's own rows does, to float32 rounding (its exp is vectorised where the other's is
    not), large and tiny logits included."""
    from actlab.pack.stacked import member_cross_entropy

    generator = torch.Generator().manual_seed(batch)
    logits = torch.randn(members, batch, 10, generator=generator) * torch.tensor([1.0, 30.0, 1e-3]).repeat(4)[:10]
    targets = torch.randint(0, 10, (members, batch), generator=generator)
    mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    losses = member_cross_entropy(mine, targets)
    alone = torch.stack([F.cross_entropy(x, y, reduction="none") for x, y in zip(theirs, targets)])
    assert torch.allclose(losses, alone, rtol=1e-6, atol=0)
    losses.mean(1).sum().backward()
    alone.mean(1).sum().backward()
    assert torch.allclose(mine.grad, theirs.grad, rtol=1e-6, atol=1e-9)


def members_for(tmp_path, fake_data_dir, specs, extra=()):
    base = [*data_overrides(fake_data_dir), "trainer.max_epochs=2", *extra]
    members = []
    for seed, activation, *fields in specs:
        out = tmp_path / "pack" / f"{activation}-{seed}"
        overrides = [f"seed={seed}", f"activation={activation}", *fields]
        members.append(Member(compose_train([*base, *overrides], out), out, activation, overrides))
    return members, base


def single_run(tmp_path, base, seed, activation, *fields):
    out = tmp_path / "single" / "-".join([activation, str(seed), *(f.replace("=", "_") for f in fields)])  # one each
    return run(compose_train([*base, f"seed={seed}", f"activation={activation}", *fields], out), out, activation), out


def checkpoint_weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pack_members_equal_their_separate_runs(tmp_path, fake_data_dir, optimizer):
    specs = [(1, "relu"), (2, "relu"), (3, "staf"), (4, "prelu")]
    members, base = members_for(tmp_path, fake_data_dir, specs, [f"optimizer={optimizer}", "callbacks=none"])
    records = train_pack(members, "p")
    assert [r["status"] for r in records] == ["completed"] * 4
    assert [r["pack"]["index"] for r in records] == [0, 1, 2, 3] and {r["pack"]["size"] for r in records} == {4}
    for (seed, activation), member, packed in zip(specs, members, records):
        alone, out = single_run(tmp_path, [*base, f"optimizer={optimizer}", "callbacks=none"], seed, activation)
        for key in ("train/loss", "val/acc", "val/loss"):
            assert packed["history"][key] == pytest.approx(alone["history"][key], abs=1e-5), (activation, key)
        assert packed["test/acc"] == pytest.approx(alone["test/acc"], abs=1e-6)
        a, b = checkpoint_weights(out), checkpoint_weights(member.output_dir)
        assert set(a) == set(b)
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-5), (activation, name)


def test_exact_pack_members_equal_their_separate_runs_to_the_bit(tmp_path, fake_data_dir):
    """``hydra.launcher.exact=true``, at a rate where the batched default drifts from the single
    runs in the last bits (lr 0.1, SGD with momentum, two learning-rate groups, ReLU and PReLU):
    every member's weights, losses and test metrics are its single run's, bit for bit."""
    protocol = ["seed=3", "callbacks=none", "trainer.max_epochs=3"]
    overrides, sweep_dir = packed_sweep(tmp_path, fake_data_dir, *protocol, "activation=relu,prelu",
                                        "optimizer.lr=0.1,0.05", "hydra.launcher.exact=true")  # fmt: skip
    result = run_train_main(overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {p.parent: read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")}
    assert len(runs) == 4 and all(r["pack"]["size"] == 4 and r["pack"]["exact"] for r in runs.values())
    for run_dir, packed in runs.items():
        lr = packed["config"]["optimizer"]["lr"]
        alone, out = single_run(tmp_path, [*data_overrides(fake_data_dir), *protocol], 3, packed["activation"],
                                f"optimizer.lr={lr}")  # fmt: skip
        assert len(alone["history"]["train/loss"]) == 3
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/f1"):
            assert packed["history"][key] == alone["history"][key], (packed["activation"], lr, key)
        for key in ("test/loss", "test/acc", "test/f1"):
            assert packed[key] == alone[key], (packed["activation"], lr, key)
        a, b = checkpoint_weights(out), checkpoint_weights(run_dir)
        assert set(a) == set(b) and all(torch.equal(a[name], b[name]) for name in a), (packed["activation"], lr)


def test_a_diverging_member_is_recorded_and_frozen_and_the_others_go_on(tmp_path, fake_data_dir, caplog):
    specs = [(1, "relu"), (2, "relu"), (3, "leaky_relu", "activation.negative_slope=nan")]
    members, base = members_for(tmp_path, fake_data_dir, specs, ["callbacks=none"])
    with caplog.at_level("INFO"):
        records = train_pack(members, "p")
    assert [r["status"] for r in records] == ["completed", "completed", "diverged"]
    assert "nan" in records[2]["error"] and records[2]["epochs_completed"] < 2
    for member, record in zip(members, records):  # one closing line each, as a single run's
        (line,) = [m for m in caplog.messages if f"record {member.output_dir}/metrics.json" in m]
        assert line.startswith(f"run {record['status']} |")
    assert "run diverged | error: training loss is nan" in caplog.text
    # resumed, a diverged member is a result, as a completed one: skipped, in one line naming them
    again, _ = members_for(tmp_path, fake_data_dir, specs, ["callbacks=none", "resume=true"])
    caplog.clear()
    with caplog.at_level("INFO"):
        assert train_pack(again, "p") == [read_record(m.output_dir) for m in members]
    (line,) = [m for m in caplog.messages if m.startswith("resume:")]
    assert "skips 3 members already done" in line and f"{members[2].output_dir} (diverged)" in line
    alone, _ = single_run(tmp_path, [*base, "callbacks=none"], 2, "relu")
    assert records[1]["history"]["train/loss"] == pytest.approx(alone["history"]["train/loss"], abs=1e-5)


def test_diagnostics_reach_each_members_tensorboard_and_record(tmp_path, fake_data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    members, base = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "staf")])
    records = train_pack(members, "p")
    for member, record in zip(members, records):
        assert record["status"] == "completed" and record["dead/overall"] is not None
        assert len(record["diagnostics_epoch_s"]) == 2 and len(record["dead/at_init"]) == 4
        acc = EventAccumulator(str(member.output_dir / "tensorboard"), size_guidance={"histograms": 0})
        acc.Reload()
        assert [e.step for e in acc.Histograms("grad/layer_0_784x256")] == [0, 3, 6]
        assert {"dead/overall", "train/loss", "val/acc", "test/acc", "grad_norm/layer_0"} <= set(acc.Tags()["scalars"])
        assert "activation/shape" in acc.Tags()["images"]
        assert {p.name for p in (member.output_dir / "figures").iterdir()} == {
            "gradient_histograms.png", "layer_outputs.png", "dead_neurons.png"}  # fmt: skip
    # measured for the whole pack at once, yet each member's numbers are its own run's
    alone, out = single_run(tmp_path, base, 2, "staf")
    acc_alone = EventAccumulator(str(out / "tensorboard"))
    acc_alone.Reload()
    acc = EventAccumulator(str(members[1].output_dir / "tensorboard"))
    acc.Reload()
    for tag in ("grad_norm/layer_0", "grad_norm/layer_4", "output_std/layer_2", "dead/overall"):
        packed, single = [e.value for e in acc.Scalars(tag)], [e.value for e in acc_alone.Scalars(tag)]
        assert packed == pytest.approx(single, rel=1e-4, abs=1e-6), tag
    # the gradient flow in the record: the first step's and each epoch's training-gradient norms
    # (from the stacked gradients), the probe's output RMS and saturation, as the single run has them
    for key in ("flow/grad_norm_first_step", "flow/output_rms_at_init", "flow/saturated_at_init"):
        assert len(alone[key]) == 4 and records[1][key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
    assert records[0]["flow/saturated_at_init"] is None  # ReLU is unbounded
    flow = sorted(key for key in alone["history"] if key.startswith("flow/"))
    assert flow == sorted(f"flow/{name}/layer_{i}" for name in ("grad_norm", "output_rms", "saturated")
                          for i in range(4))  # fmt: skip
    for key in flow:
        assert len(alone["history"][key]) == 2, key
        assert records[1]["history"][key] == pytest.approx(alone["history"][key], rel=1e-4, abs=1e-6, nan_ok=True), key


def test_what_would_couple_members_is_refused(tmp_path, fake_data_dir):
    members, _ = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "relu")], ["+trainer.gradient_clip_val=1.0"])
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        check_packable(members)
    mixed, _ = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "relu", "optimizer.momentum=0.5")])
    with pytest.raises(ConfigError, match="equal configs"):
        check_packable(mixed)


def test_a_single_run_resumes_from_a_pack_members_checkpoint(tmp_path, fake_data_dir):
    members, base = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "tanh")], ["callbacks=none"])
    train_pack(members, "p")
    member = members[1]
    cfg = compose_train([*base, "callbacks=none", "seed=2", "activation=tanh", "trainer.max_epochs=3",
                         "resume=true"], member.output_dir)  # fmt: skip
    from omegaconf import open_dict

    record = read_record(member.output_dir)
    with open_dict(cfg):  # the record says completed; a longer run continues from it
        record["status"] = "interrupted"
    from actlab.record import write_record

    write_record(member.output_dir, record)
    resumed = run(cfg, member.output_dir, "tanh")
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["epochs_completed"] == 3 and len(resumed["history"]["val/acc"]) == 3
    assert resumed["history"]["val/acc"][:2] == record["history"]["val/acc"]


def packed_sweep(tmp_path, fake_data_dir, *args):
    from test_sweeps import generated_data_overrides

    sweep_dir = tmp_path / "sweep"
    overrides = ["-m", "hydra/launcher=packed", *args, *generated_data_overrides(fake_data_dir),
                 f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    return overrides, sweep_dir


def test_packed_launcher_groups_the_sweep_and_writes_every_job_as_if_alone(tmp_path, fake_data_dir):
    overrides, sweep_dir = packed_sweep(tmp_path, fake_data_dir, "experiment=smoke", "seed=1,2",
                                        "hydra.launcher.pack_size=3")  # fmt: skip
    result = run_train_main(overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = {p.parent.name: read_record(p.parent) for p in sweep_dir.glob("*/metrics.json")}
    assert len(records) == 8 and all(r["status"] == "completed" for r in records.values())
    # two depths -> two groups of 4, over pack_size 3: each cut into two equal packs of 2
    sizes = sorted((r.get("pack") or {}).get("size", 1) for r in records.values())
    assert sizes == [2] * 8
    for name, record in records.items():
        assert (sweep_dir / name / ".hydra" / "config.yaml").is_file()
        assert f"seed={record['seed']}" in name and record["depth"] == int(name.split("model.depth=")[1][0])
    summary = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep_dir)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert summary.returncode == 0 and "8 runs: 0 queued, 0 running, 8 completed" in summary.stdout


def test_one_dead_neuron_scan_for_the_pack_equals_each_members_own_scan():
    from actlab.callbacks import DeadNeuronMonitor, scan_dead_neurons
    from actlab.pack.diagnostics import scan_members

    nets = []
    for seed, name in enumerate(["relu", "relu", "leaky_relu", "tanh"]):
        torch.manual_seed(seed)
        net = SimpleNetwork(activation_factory(name), hidden_shape=[64, 48, 32])
        with torch.no_grad():  # dead and rarely-firing neurons, differently per member
            net.linears[1].bias[seed : seed + 3] = -100.0
            net.linears[0].bias[10:20] = -3.0 + seed
        nets.append(net.eval())
    stacked = StackedNetwork(nets, ["relu", "relu", "leaky_relu", "tanh"])
    inputs = torch.randn(5000, 784)
    monitor = DeadNeuronMonitor(batch_size=1024)
    together = scan_members(stacked, inputs, monitor)
    for net, mine in zip(nets, together):
        with torch.inference_mode():
            alone = scan_dead_neurons(net, inputs, batch_size=1024, settle_early=False)
        for a, b in zip(mine, alone):
            assert torch.equal(a.dead(), b.dead()) and torch.equal(a.near_dead(), b.near_dead())


def test_a_pack_follows_the_fair_protocol_like_its_separate_runs(tmp_path, fake_data_dir, caplog):
    """Early stopping per member (a stopped member leaves the stacked computation), a cosine
    schedule from each member's own rate, testing each member's best epoch."""
    protocol = ["callbacks=none", "trainer.max_epochs=6", "callbacks.early_stopping.patience=1", "test_ckpt=best",
                "scheduler=cosine", "logger=csv"]  # fmt: skip
    specs = [(1, "relu", "optimizer.lr=0.05"), (2, "tanh", "optimizer.lr=0.2"), (3, "staf", "optimizer.lr=0.05")]
    members, base = members_for(tmp_path, fake_data_dir, specs, protocol)
    with caplog.at_level("INFO", logger="actlab.pack.callbacks"):
        records = train_pack(members, "p")
    computed = [int(m.group(1)) for m in re.finditer(r"computing (\d) of 3 members", caplog.text)]
    stopped = sorted(r["stopped_epoch"] for r in records if r["stopped_epoch"] is not None)
    # the protocol makes every member stop early, not all in the same epoch...
    assert len(stopped) == 3 and len(set(stopped)) > 1, f"members stopped at epochs {stopped}"
    # ...so the stack is compacted: a later epoch computes fewer members than the first
    assert computed[0] == 3 and computed[-1] < 3, f"members computed per epoch: {computed}"
    # an epoch computes the members live at its start: one fewer after each stop
    assert computed == [3 - sum(s < epoch for s in stopped) for epoch in range(len(computed))], caplog.text
    for epoch in range(len(computed)):  # every member that ran an epoch timed the pack's epoch, whatever its place
        times = {r["epoch_times_s"][epoch] for r in records if len(r["epoch_times_s"]) > epoch}
        assert len(times) == 1, (epoch, times)
    for record in records:  # the summary's epoch time per model: the pack's epoch / the members it computed
        shares = [t / n for t, n in zip(record["epoch_times_s"], computed)]
        assert record["epoch_times_per_member_s"] == pytest.approx(shares)
    for (seed, activation, lr), packed, member in zip(specs, records, members):
        alone, alone_dir = single_run(tmp_path, [*base, *protocol], seed, activation, lr)
        # its CSV rows at its own epochs and steps, the test row's too (the pack trains on after it stops)
        assert csv_positions(member.output_dir) == csv_positions(alone_dir), activation
        for key in ("epochs_completed", "stopped_epoch", "best_epoch"):
            assert packed[key] == alone[key], (activation, key, packed[key], alone[key])
        assert packed["history"]["train/lr"] == pytest.approx(alone["history"]["train/lr"])
        assert packed["test_ckpt"]["epoch"] == alone["test_ckpt"]["epoch"] == alone["best_epoch"]
        for key in ("test/acc", "test/f1", "test/acc_class_3"):
            assert packed[key] == pytest.approx(alone[key], abs=1e-5), (activation, key)


def csv_positions(run_dir):
    """Each row of a run's metrics.csv: its epoch, its step and which metrics it holds."""
    import csv

    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return [(row["epoch"], row["step"], sorted(k for k, v in row.items() if v and "time" not in k))
                for row in csv.DictReader(file)]  # fmt: skip


def test_a_compacted_packs_own_checkpoint_rebuilds_the_same_stack():
    """Lightning's checkpoint of a pack whose stopped members left the stack (SLURM's requeue
    saves one) restores that stack into a fresh pack: its shape, every member's weights (the
    stopped ones' from the stash) and who is still training."""
    from actlab.pack.module import PackModule

    def pack():
        nets = []
        for seed, name in enumerate(["relu", "relu", "prelu", "prelu", "tanh"]):
            torch.manual_seed(seed)
            nets.append(SimpleNetwork(activation_factory(name), hidden_shape=[12, 8]))
        return PackModule(StackedNetwork(nets, ["relu", "relu", "prelu", "prelu", "tanh"]), torch.optim.SGD)

    saved = pack()
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(1.0)  # trained: not the initial weights a fresh pack has
    saved.stop_member(1)
    saved.stop_member(2)
    saved.compact([0, 3, 4])
    assert saved.net.height == 3 and saved.net.weights[0].shape[0] == 3 and sorted(saved.net.stash) == [1, 2]
    checkpoint = {"state_dict": saved.state_dict()}
    saved.on_save_checkpoint(checkpoint)
    fresh = pack()
    fresh.on_load_checkpoint(checkpoint)  # Lightning calls it before loading the weights
    fresh.load_state_dict(checkpoint["state_dict"])
    assert fresh.net.present == [0, 3, 4] and fresh.live == [True, False, False, True, True]
    for k in range(5):
        mine, theirs = fresh.member_state_dict(k), saved.member_state_dict(k)
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs), k
    fresh.expand()  # all five back, e.g. for testing
    assert fresh.net.height == 5 and torch.equal(fresh.member_state_dict(2)["net.head.weight"],
                                                 saved.member_state_dict(2)["net.head.weight"])  # fmt: skip


def test_a_compacted_packs_loader_draws_only_the_stacks_batches_from_every_members_stream():
    from actlab.pack.data import MemberBatchLoader

    images, labels = torch.randn(40, 1, 28, 28), torch.arange(40)
    generators = [torch.Generator().manual_seed(k) for k in range(4)]
    rows = [None]
    loader = MemberBatchLoader(images, labels, 16, generators, lambda: rows[0])
    full = [(x.clone(), y.clone(), r.clone()) for x, y, r in loader]  # epoch 1: every member
    assert all(r.tolist() == [0, 1, 2, 3] and x.shape[0] == 4 for x, _, r in full)

    again = [torch.Generator().manual_seed(k) for k in range(4)]
    for g in again:  # epoch 1's shuffles, so that epoch 2 is compared stream by stream
        torch.randperm(40, generator=g)
    expected = [(x.clone(), y.clone()) for x, y, _ in MemberBatchLoader(images, labels, 16, again)]
    rows[0] = [1, 3]  # members 0 and 2 have left the stack
    compacted = list(loader)  # epoch 2
    for (x, y, r), (all_x, all_y) in zip(compacted, expected):
        assert r.tolist() == [1, 3] and torch.equal(y, all_y[[1, 3]]) and torch.equal(x, all_x[[1, 3]])


def checkpoint_contents(path):
    """What a checkpoint says of where its run was: epoch, step, early-stopping state, best path."""
    checkpoint = torch.load(path, weights_only=False)
    callbacks = checkpoint["callbacks"]
    (stopper,) = (state for key, state in callbacks.items() if key.startswith("EarlyStopping"))
    best = [state for key, state in callbacks.items() if key.startswith("ModelCheckpoint") and state["monitor"]]
    return {"epoch": checkpoint["epoch"], "global_step": checkpoint["global_step"],
            "stopper": {k: stopper[k] for k in ("wait_count", "stopped_epoch", "patience")},
            "best": [Path(state["best_model_path"]).name for state in best]}  # fmt: skip


def closing_line(messages, run_dir):
    """A run's closing line without what differs between a pack and a single run (times, paths)."""
    (line,) = [line for line in messages if f"record {run_dir}/metrics.json" in line]
    return [part.replace(str(run_dir), "<run>") for part in line.split(" | ") if "s/epoch" not in part]


def test_a_member_stopped_early_has_its_single_runs_checkpoints_record_and_closing_line(tmp_path, fake_data_dir,
                                                                                        caplog):  # fmt: skip
    """A member stopping below max_epochs saves its checkpoints at its stopping epoch (with the
    stopping state), tests its best epoch and says so in one closing line, as its single run."""
    from test_pack_options import assert_member_is_its_single_run

    protocol = ["callbacks=none", "trainer.max_epochs=6", "callbacks.early_stopping.patience=1",
                "callbacks.early_stopping.min_delta=0.05", "test_ckpt=best"]  # fmt: skip
    specs = [(1, "relu", "optimizer.lr=0.01"), (2, "relu", "optimizer.lr=0.1")]
    members, base = members_for(tmp_path, fake_data_dir, specs, protocol)
    with caplog.at_level("INFO"):
        records = train_pack(members, "p")
        singles = [tmp_path / "single" / f"relu-{seed}" for seed, *_ in specs]
        for (seed, activation, lr), out in zip(specs, singles):
            run(compose_train([*base, *protocol, f"seed={seed}", f"activation={activation}", lr], out), out, activation)
    assert any(r["stopped_epoch"] is not None and r["stopped_epoch"] < 5 for r in records), records
    for member, single, record in zip(members, singles, records):
        assert_member_is_its_single_run(member.output_dir, single)
        alone = read_record(single)
        assert record["test_ckpt"]["epoch"] == alone["test_ckpt"]["epoch"] == alone["best_epoch"]
        if alone["stopped_epoch"] is not None:
            assert checkpoint_contents(single / "checkpoints" / "last.ckpt")["epoch"] == alone["stopped_epoch"]
        for path in sorted((single / "checkpoints").glob("*.ckpt")):
            mine = checkpoint_contents(member.output_dir / "checkpoints" / path.name)
            assert mine == checkpoint_contents(path), (member.output_dir.name, path.name)
        assert closing_line(caplog.messages, member.output_dir) == closing_line(caplog.messages, single)


def test_a_members_checkpoint_is_written_from_its_own_states_alone(tmp_path, fake_data_dir, monkeypatch):
    """A member's checkpoint is dumped with that member's callback states and metrics only
    (the pack's hold every member's: copying them all for each of K members' checkpoints cost
    K² an epoch), and still equals its single run's in what it holds."""
    from actlab.pack.callbacks import MemberModelCheckpoint
    from actlab.pack.checkpoint import MEMBERS_KEY, PackCheckpointIO

    dumped, candidates = [], []
    save, monitor = PackCheckpointIO.save_checkpoint, MemberModelCheckpoint._monitor_candidates

    def recording_save(self, checkpoint, path, storage_options=None):
        owners = {int(key.rpartition("@member")[2]) for key in checkpoint["callbacks"].get(MEMBERS_KEY, {})}
        dumped.append((self._member_of(path), owners))
        save(self, checkpoint, path, storage_options)

    def recording_monitor(self, trainer):
        found = monitor(self, trainer)
        candidates.append((self.member, sorted(found)))
        return found

    monkeypatch.setattr(PackCheckpointIO, "save_checkpoint", recording_save)
    monkeypatch.setattr(MemberModelCheckpoint, "_monitor_candidates", recording_monitor)
    specs = [(1, "relu"), (2, "tanh"), (3, "relu")]
    members, base = members_for(tmp_path, fake_data_dir, specs, ["callbacks=none"])
    train_pack(members, "p")
    assert {k for k, _ in dumped} == {0, 1, 2} and len(dumped) >= 2 * 3  # last (and best when it improved) each epoch
    assert all(owners == {k} for k, owners in dumped)
    assert {k for k, _ in candidates} == {0, 1, 2}
    for k, keys in candidates:
        assert "epoch" in keys and "step" in keys and f"member/{k}/val/acc" in keys
        assert all(key.startswith(f"member/{k}/") for key in keys if key.startswith("member/"))
    _, alone = single_run(tmp_path, base, 2, "tanh", "callbacks=none")
    mine = torch.load(members[1].output_dir / "checkpoints" / "last.ckpt", weights_only=False)
    theirs = torch.load(alone / "checkpoints" / "last.ckpt", weights_only=False)
    assert sorted(mine["callbacks"]) == sorted(theirs["callbacks"])
    for key in ("loss_sum", "correct"):  # its row of the training epoch's sums, shaped as its single run's
        assert mine["train_epoch_sums"][key].shape == theirs["train_epoch_sums"][key].shape == (1,)
    for key, state in theirs["callbacks"].items():
        if key.startswith("ModelCheckpoint"):
            assert mine["callbacks"][key]["best_model_score"] == state["best_model_score"]
            assert Path(mine["callbacks"][key]["best_model_path"]).name == Path(state["best_model_path"]).name


@pytest.mark.parametrize("on_train_epoch_end", [True, False])
def test_every_row_a_member_logged_is_on_disk_before_its_checkpoint_is_written(
    tmp_path, fake_data_dir, monkeypatch, on_train_epoch_end
):
    """A pack writes its members' loggers once an epoch, after the epoch's training metrics (its
    validation's rows wait for them); a checkpoint taken before that (a best checkpoint saved
    at validation's end) still finds every row logged before it on disk: a run killed right
    after it resumes with none of them lost."""
    from actlab.csv_logger import CSVLogger
    from actlab.pack.checkpoint import PackCheckpointIO

    seen = []
    save = PackCheckpointIO.save_checkpoint

    def checking_save(self, checkpoint, path, storage_options=None):
        k = self._member_of(path)
        if k is not None:
            loggers = self.module.trainer.loggers[0].member_loggers[k]
            (csv,) = [logger for logger in loggers if isinstance(logger, CSVLogger)]
            on_disk = Path(csv.experiment.metrics_file_path)
            rows = len(on_disk.read_text().splitlines()) - 1 if on_disk.exists() else 0
            seen.append((k, Path(path).name, rows, csv.rows_logged()))
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(PackCheckpointIO, "save_checkpoint", checking_save)
    where = f"callbacks.model_checkpoint.save_on_train_epoch_end={str(on_train_epoch_end).lower()}"
    members, _ = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "tanh")],
                             ["callbacks=none", "logger=csv", "trainer.max_epochs=3", f"+{where}"])  # fmt: skip
    records = train_pack(members, "p")
    assert all(r["status"] == "completed" for r in records)
    best = [entry for entry in seen if entry[1].startswith("best")]
    assert best and len(seen) > len(best)  # best checkpoints, at validation's end or the epoch's, and last ones
    for k, name, on_disk, logged in seen:
        assert on_disk == logged > 0, (k, name, on_disk, logged)


def test_the_lightning_internals_a_pack_borrows_are_still_there():
    """MemberEarlyStopping stops one member with Lightning's own rule, through the two private
    methods below: EarlyStopping's public hooks must still call the one and it must still apply
    the other. If this fails, Lightning changed them: adapt MemberEarlyStopping."""
    from unittest import mock

    from lightning.pytorch.callbacks import EarlyStopping

    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=1)
    stopper._check_on_train_epoch_end = True
    trainer = mock.MagicMock(fast_dev_run=False, sanity_checking=False)
    trainer.state.fn = "fit"
    with mock.patch.object(EarlyStopping, "_run_early_stopping_check") as check:
        stopper.on_train_epoch_end(trainer, None)
    check.assert_called_once_with(trainer)
    assert stopper._evaluate_stopping_criteria(torch.tensor(0.5)) == (False, mock.ANY)
    assert stopper._evaluate_stopping_criteria(torch.tensor(0.4))[0] is True
    assert stopper.wait_count == 1

    # MemberModelCheckpoint writes through ModelCheckpoint's _save_checkpoint and narrows what its
    # _monitor_candidates copies: the one must still be where a checkpoint is written, the other
    # still Lightning's logged metrics with int epoch and step (which the member's copy repeats)
    from lightning.pytorch.callbacks import ModelCheckpoint

    from actlab.pack.callbacks import MemberModelCheckpoint

    trainer = mock.MagicMock(current_epoch=4, global_step=40, loggers=[])
    trainer.callback_metrics = {"val/acc": torch.tensor(0.5), "member/0/val/acc": torch.tensor(0.25)}
    ModelCheckpoint(monitor="val/acc")._save_checkpoint(trainer, "somewhere.ckpt")
    trainer.save_checkpoint.assert_called_once_with("somewhere.ckpt", False)
    lightning = ModelCheckpoint(monitor="val/acc")._monitor_candidates(trainer)
    member = MemberModelCheckpoint(0, monitor="val/acc")._monitor_candidates(trainer)
    assert lightning.keys() == member.keys() == {"val/acc", "member/0/val/acc", "epoch", "step"}
    assert all(torch.equal(lightning[key], member[key]) and lightning[key].dtype == member[key].dtype
               for key in lightning)  # fmt: skip


def test_the_library_state_a_pack_reads_is_still_shaped_as_it_expects():
    """The other borrowed internals, pinned in one place: a member callback's state key is its
    single run's (Lightning builds it from the class name and settings, and the member's key is
    that text with its own class and metric prefix taken out), and a member checkpoint's
    scheduler state splits per group by torch's ``base_lrs`` / ``_last_lr`` (SequentialLR:
    ``_schedulers``). If this fails, a library changed them: adapt actlab.pack."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    import actlab.callbacks
    from actlab.callbacks import early_stopping
    from actlab.pack.callbacks import MemberEarlyStopping, MemberModelCheckpoint
    from actlab.pack.checkpoint import PER_GROUP_SCHEDULER_KEYS

    alone = ModelCheckpoint(monitor="val/acc", mode="max", filename="best_{epoch:03d}")
    ours = actlab.callbacks.ModelCheckpoint(monitor="val/acc", mode="max", filename="best_{epoch:03d}")
    assert ours.state_key == alone.state_key  # built once, Lightning's key: its checkpoints are Lightning's
    member = MemberModelCheckpoint(3, monitor="val/acc", mode="max", filename="best_{epoch:03d}")
    assert member.state_key == f"{alone.state_key}@member3"
    assert member.monitor == "member/3/val/acc"  # it reads its own metric
    stopper = early_stopping(patience=2, monitor="val/loss")
    member_stopper = early_stopping(patience=2, monitor="val/loss", build=lambda **kw: MemberEarlyStopping(1, **kw))
    assert isinstance(stopper, EarlyStopping) and member_stopper.state_key == f"{stopper.state_key}@member1"
    assert stopper.state_key == EarlyStopping(monitor="val/loss", mode="min", patience=2, check_finite=False).state_key
    assert (member_stopper.mode, member_stopper.patience) == (stopper.mode, stopper.patience) == ("min", 2)

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [parameter]}, {"params": [torch.nn.Parameter(torch.zeros(2))]}], lr=0.1)
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, 0.1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5)
    state = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[2]).state_dict()
    assert "_schedulers" in state
    for inner in state["_schedulers"]:
        assert all(len(inner[key]) == 2 for key in PER_GROUP_SCHEDULER_KEYS)  # one entry per parameter group


def test_a_resumed_pack_keeps_each_members_diagnostics_state(tmp_path, fake_data_dir):
    """As a single run's: with gradient flow measured every second epoch, a checkpoint between
    two measurements keeps each member's gradient-norm samples since the last one, and the
    resumed pack's ``flow/grad_norm`` history is the uninterrupted pack's, member by member;
    so is each member's ``dead/at_init`` (the initial network's, not measured again)."""
    from actlab.record import write_record

    only_flow = ["callbacks.gradient_histograms=null", "callbacks.layer_outputs=null",
                 "callbacks.dead_neurons.probe_size=256", "callbacks.activation_parameters=null",
                 "callbacks.activation_plot=null", "callbacks.gradient_flow.every_n_steps=3",
                 "callbacks.gradient_flow.every_n_epochs=2"]  # fmt: skip
    specs = [(1, "relu"), (2, "tanh")]
    first, _ = members_for(tmp_path / "resumed", fake_data_dir, specs, [*only_flow, "trainer.max_epochs=3"])
    for member, record in zip(first, train_pack(first, "p")):
        write_record(member.output_dir, {**record, "status": "interrupted"})
    again, _ = members_for(tmp_path / "resumed", fake_data_dir, specs, [*only_flow, "trainer.max_epochs=4",
                                                                        "resume=true"])  # fmt: skip
    resumed = train_pack(again, "p")
    alone, _ = members_for(tmp_path / "alone", fake_data_dir, specs, [*only_flow, "trainer.max_epochs=4"])
    for mine, theirs in zip(resumed, train_pack(alone, "p")):
        assert mine["resumed_from"] and mine["epochs_completed"] == theirs["epochs_completed"] == 4
        assert mine["dead/at_init"] == pytest.approx(theirs["dead/at_init"], abs=1e-6)
        flow = [key for key in theirs["history"] if key.startswith("flow/grad_norm/")]
        assert flow and not math.isnan(theirs["history"][flow[0]][3])  # measured at epoch 3 (0-based)
        for key in flow:
            assert mine["history"][key] == pytest.approx(theirs["history"][key], rel=1e-5, nan_ok=True), key


def test_a_resumed_packs_tensorboard_shows_each_step_once(tmp_path, fake_data_dir):
    """As a single run's: members resumed from checkpoints older than what they had logged show
    each step once in TensorBoard, the uninterrupted pack's scalars."""
    from test_training import tensorboard_scalars

    from actlab.record import write_record

    protocol = ["callbacks=none", "logger=tensorboard", "trainer.max_epochs=3", "test_after_fit=false",
                "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=max"]  # fmt: skip
    specs = [(1, "relu"), (2, "tanh")]
    first, _ = members_for(tmp_path / "resumed", fake_data_dir, specs, protocol)
    for member, record in zip(first, train_pack(first, "p")):
        write_record(member.output_dir, {**record, "status": "interrupted"})
        (member.output_dir / "checkpoints" / "last.ckpt").unlink()  # back to the worst-loss epoch's checkpoint
    again, _ = members_for(tmp_path / "resumed", fake_data_dir, specs, [*protocol, "resume=true"])
    resumed = train_pack(again, "p")
    alone, _ = members_for(tmp_path / "alone", fake_data_dir, specs, protocol)
    train_pack(alone, "p")
    for record, mine, theirs in zip(resumed, again, alone):
        assert "best_epoch=" in record["resumed_from"]
        ours, reference = tensorboard_scalars(mine.output_dir), tensorboard_scalars(theirs.output_dir)
        assert set(ours) >= {tag for tag in reference if not tag.startswith("hparams/")} and "val/acc" in ours
        # the final HPARAMS row is a file of its own: TensorBoard reads a directory's files in name order,
        # and in runs this short the resumed run's may sort before its main file, whose purge then hides it
        for tag in (tag for tag in reference if not tag.startswith("hparams/")):
            assert [step for step, _ in ours[tag]] == [step for step, _ in reference[tag]], (record["activation"], tag)


def test_a_requeue_signal_during_a_members_checkpoint_saves_every_members_state(tmp_path):
    """A member's own checkpoint holds its callback states alone; SLURM's requeue signal landing
    while it is written saves the pack's checkpoint from its handler, which must hold every
    member's (it held only that member's, and the others resumed with no history: a requeued
    pack member recorded 296 of its 300 epochs). The handler now runs once that save is done."""
    import os
    import signal
    from types import SimpleNamespace

    from actlab.pack.callbacks import MemberCallbacks, MemberEarlyStopping, MemberModelCheckpoint

    checkpoint = MemberModelCheckpoint(0, dirpath=str(tmp_path))
    members = MemberCallbacks([MemberEarlyStopping(0, "val/acc"), MemberEarlyStopping(1, "val/acc"), checkpoint])
    saved = {}

    def save_checkpoint(filepath, weights_only=False):
        os.kill(os.getpid(), signal.SIGUSR1)  # the requeue signal, in the middle of the member's save
        saved["member's own"] = sorted(members.state_dict())

    def requeue(signum, frame):  # what Lightning's handler does: save the pack's checkpoint
        saved["requeue"] = sorted(members.state_dict())

    trainer = SimpleNamespace(save_checkpoint=save_checkpoint, global_step=0, is_global_zero=True, loggers=[])
    previous = signal.signal(signal.SIGUSR1, requeue)
    try:
        checkpoint._save_checkpoint(trainer, str(tmp_path / "member.ckpt"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert len(saved["member's own"]) == 2 and all("@member0" in key for key in saved["member's own"])
    assert len(saved["requeue"]) == 3 and any("@member1" in key for key in saved["requeue"])
    assert signal.getsignal(signal.SIGUSR1) is previous
