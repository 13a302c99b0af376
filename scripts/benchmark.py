"""Epoch time of actlab's training against the textbook's loop and a minimal hand loop,
measured in one process on the same data, model, optimiser and device; prints the ratios.

    python scripts/benchmark.py                          # CPU, ReLU, real data
    python scripts/benchmark.py --device cuda --activation staf --versus relu
    python scripts/benchmark.py --activations            # per-activation forward/backward table
    python scripts/benchmark.py --pack 8                 # 8 runs: separate processes vs one pack vs floor

It reads FashionMNIST through ``actlab.data`` (the same files, reader and normalisation as
a run) and drives actlab only through its public entry points (the composed config and
``actlab.training.run``, whose run record gives the per-epoch times and the seconds spent
in the diagnostics).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from actlab.config import CONFIG_DIR, group_options, load_activation
from actlab.data.fashion_mnist import (
    FILES,
    SYSTEM_DIR,
    DataNotFoundError,
    load_split,
    locate_fashion_mnist,
    normalise,
)
from actlab.models import SimpleNetwork
from actlab.pack import StackedNetwork


def find_files(data_dir: str | None, system_dir: str | None) -> dict[str, Path]:
    """The FashionMNIST files, looked for as actlab's DataModule looks (never downloaded)."""
    try:
        return locate_fashion_mnist(data_dir, SYSTEM_DIR if system_dir is None else (system_dir or None), False)
    except DataNotFoundError as err:
        raise SystemExit(f"benchmark: {err}") from None


def load_data(files: dict[str, Path], device: torch.device, val_size: int = 5000) -> tuple[torch.Tensor, ...]:
    """Training and validation tensors on ``device``, read and normalised by actlab's data
    module (``load_split``, ``normalise``), images flattened: train_x, train_y, val_x, val_y."""
    images, labels = load_split(files["train_images"], files["train_labels"])
    images, labels = normalise(images).flatten(1).to(device), labels.to(device)
    return images[val_size:], labels[val_size:], images[:val_size], labels[:val_size]


@dataclass
class Timing:
    name: str
    epoch_times: list[float]
    # seconds of each timed epoch spent inside the diagnostics (actlab with diagnostics on)
    diagnostic_times: list[float] = field(default_factory=list)

    @property
    def epoch_s(self) -> float:
        return statistics.median(self.epoch_times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _network(activation: str, device: torch.device, hidden_shape: list[int] | None = None) -> SimpleNetwork:
    torch.manual_seed(0)
    return SimpleNetwork(lambda: load_activation(activation), hidden_shape=hidden_shape).to(device)


def _sgd(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)


def _time_epochs(run_epoch: Callable[[], None], epochs: int, device: torch.device) -> list[float]:
    run_epoch()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        run_epoch()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def reference_loop(files: dict[str, Path], activation: str, device: torch.device, epochs: int,
                   steps: int | None, batch_size: int = 128) -> Timing:  # fmt: skip
    """The textbook's loop: torchvision FashionMNIST with per-sample ToTensor + Normalize, a
    shuffling DataLoader, and a plain loop that also evaluates the test set every epoch."""
    from torchvision import datasets, transforms

    root = Path(tempfile.mkdtemp(prefix="actlab-bench-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for key, stem in FILES.items():  # torchvision reads the decompressed files from root/raw
        source = files[key]
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    try:
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
        train = datasets.FashionMNIST(str(root), train=True, transform=transform, download=False)
        test = datasets.FashionMNIST(str(root), train=False, transform=transform, download=False)
        train_loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True)
        test_loader = torch.utils.data.DataLoader(test, batch_size=batch_size)
        net = _network(activation, device)
        optimizer = _sgd(net)

        def epoch() -> None:
            net.train()
            for i, (x, y) in enumerate(train_loader):
                if steps is not None and i >= steps:
                    break
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                optimizer.step()
            net.eval()
            correct = 0
            with torch.no_grad():
                for i, (x, y) in enumerate(test_loader):
                    if steps is not None and i >= max(1, steps // 10):
                        break
                    x, y = x.to(device), y.to(device)
                    correct += (net(x).argmax(1) == y).sum().item()

        return Timing("reference (textbook: torchvision + DataLoader)", _time_epochs(epoch, epochs, device))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def hand_loop(files: dict[str, Path], activation: str, device: torch.device, epochs: int,
              steps: int | None, batch_size: int = 128, val_size: int = 5000,
              hidden_shape: list[int] | None = None) -> Timing:  # fmt: skip
    """The floor for eager PyTorch: in-memory tensors on the device, batches gathered by
    ``index_select`` (~3x faster than ``x[idx]`` on a CPU; actlab's loaders gather so), no
    framework; the same train/validation split sizes as actlab's default run."""
    train_x, train_y, val_x, val_y = load_data(files, device, val_size)
    net = _network(activation, device, hidden_shape)
    optimizer = _sgd(net)
    n = len(train_y) if steps is None else min(len(train_y), steps * batch_size)

    def epoch() -> None:
        net.train()
        order = torch.randperm(len(train_y), device=device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]  # index_select: the fastest gather of rows on a CPU
            loss = F.cross_entropy(net(train_x.index_select(0, idx)), train_y.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.inference_mode():
            correct = torch.zeros((), device=device, dtype=torch.long)
            for start in range(0, len(val_y), 1024):
                logits = net(val_x[start : start + 1024])
                correct += (logits.argmax(1) == val_y[start : start + 1024]).sum()
            correct.item()

    return Timing("hand loop (in-memory tensors, plain PyTorch)", _time_epochs(epoch, epochs, device))


def actlab_epochs(data_dir: str | None, system_dir: str | None, activation: str, device: torch.device,
                  epochs: int, steps: int | None, callbacks: bool, hidden_shape: list[int] | None = None,
                  val_steps: int | None = None, extra: list[str] | None = None) -> Timing:  # fmt: skip
    """actlab's training exactly as ``train.py`` runs it (composed config, ``run``, plus
    ``extra`` overrides), timed by the run record's own per-epoch times (training steps +
    validation + diagnostics)."""
    from hydra import compose, initialize_config_dir

    from actlab.training import run

    output_dir = Path(tempfile.mkdtemp(prefix="actlab-bench-run-"))
    overrides = [
        f"activation={activation}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.max_epochs={epochs + 1}",
        f"callbacks={'default' if callbacks else 'none'}",
        f"data.data_dir={data_dir}" if data_dir else "data.data_dir=null",
        "data.download=false",
        "test_after_fit=false",
        "trainer.enable_model_summary=false",
        f"paths.output_dir={output_dir}",
    ]
    if system_dir is not None:  # "" = do not look in the Debian package's folder
        overrides.append(f"data.system_dir={system_dir or 'null'}")
    if steps is not None:
        overrides += [
            f"trainer.limit_train_batches={steps}",
            f"trainer.limit_val_batches={val_steps or max(1, steps // 10)}",
        ]
    if hidden_shape is not None:
        overrides.append(f"model.hidden_shape=[{','.join(map(str, hidden_shape))}]")
    overrides += extra or []
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        record = run(cfg, output_dir, activation=activation)
        if record["status"] != "completed":
            raise RuntimeError(f"benchmark run {record['status']}: {record.get('error')}")
        label = "actlab (Lightning, diagnostics " + ("on)" if callbacks else "off)")
        diagnostics = (record.get("diagnostics_epoch_s") or [])[1:]
        return Timing(label, record["epoch_times_s"][1:], diagnostics)  # first epoch is the warm-up
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def benchmark(device: str = "cpu", activation: str = "relu", rounds: int = 3, steps: int | None = None,
              data_dir: str | None = None, system_dir: str | None = None, skip_reference: bool = False,
              baseline_activation: str | None = None) -> dict[str, Timing]:  # fmt: skip
    """All measurements in one process. Machines drift (other tenants, clocks), so the loops
    are interleaved: each round times one epoch of the hand loop, of actlab with diagnostics
    and of actlab without (each after its own warm-up epoch); ratios are taken per round.
    With ``baseline_activation``, each round also times actlab (diagnostics off) with that
    activation, for "this activation's epoch / the baseline's epoch"."""
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    files = find_files(data_dir, system_dir)
    timings = {
        "hand": Timing("hand loop (in-memory tensors, plain PyTorch)", []),
        "on": Timing("actlab (Lightning, diagnostics on)", []),
        "off": Timing("actlab (Lightning, diagnostics off)", []),
    }
    runs = [("on", activation, True), ("off", activation, False)]
    if baseline_activation:
        timings["baseline"] = Timing(f"actlab with {baseline_activation} (diagnostics off)", [])
        runs.append(("baseline", baseline_activation, False))
    for _ in range(rounds):
        timings["hand"].epoch_times += hand_loop(files, activation, torch_device, 1, steps).epoch_times
        for key, name, callbacks in runs:
            run = actlab_epochs(data_dir, system_dir, name, torch_device, 1, steps, callbacks)
            timings[key].epoch_times += run.epoch_times
            timings[key].diagnostic_times += run.diagnostic_times
    if not skip_reference:
        timings["reference"] = reference_loop(files, activation, torch_device, 1, steps)
    return timings


def format_report(
    timings: dict[str, Timing], device: str, activation: str, baseline_activation: str | None = None
) -> str:
    """The table of epoch times and the ratios, each two ways: the median of the per-round
    ratios (both loops timed minutes apart at most) and the ratio of the best epochs (noise
    from other tenants only ever adds time, so the fastest epoch is the least disturbed)."""
    lines = [f"device={device} activation={activation} torch threads={torch.get_num_threads()}", ""]
    lines.append(f"{'loop':<50} {'epoch s (median)':>17}  per round")
    for t in timings.values():
        lines.append(f"{t.name:<50} {t.epoch_s:>17.3f}  {', '.join(f'{s:.3f}' for s in t.epoch_times)}")

    def ratios(a: str, b: str) -> tuple[float, float]:
        pairs = zip(timings[a].epoch_times, timings[b].epoch_times)
        return statistics.median(x / y for x, y in pairs), min(timings[a].epoch_times) / min(timings[b].epoch_times)

    def ratio_row(label: str, a: str, b: str) -> str:
        per_round, best = ratios(a, b)
        return f"{label:<41} = {per_round:6.2f}   {best:11.2f}"

    on_off = ratios("on", "off")
    lines += [
        "",
        f"{'ratio':<41}   {'median of rounds':>16}  {'best epochs':>11}",
        ratio_row("actlab (diagnostics on)  / hand loop", "on", "hand"),
        ratio_row("actlab (diagnostics off) / hand loop", "off", "hand"),
        f"{'diagnostics overhead (on / off - 1)':<41} = {on_off[0] - 1:+7.1%}  {on_off[1] - 1:+11.1%}",
    ]
    on = timings["on"]
    if any(d is not None for d in on.diagnostic_times):  # timed inside the same epochs: immune to drift
        shares = [d / (t - d) for t, d in zip(on.epoch_times, on.diagnostic_times) if d is not None]
        label = "time in diagnostics / rest of the epoch"
        lines.append(f"{label:<41} = {statistics.median(shares):+7.1%}  (same epochs; per round: "
                     f"{', '.join(f'{d:.3f} s' for d in on.diagnostic_times if d is not None)})")  # fmt: skip
    if "baseline" in timings:
        lines.append(ratio_row(f"{activation} / {baseline_activation} epoch (diagnostics off)", "off", "baseline"))
    if "reference" in timings:
        ratio = timings["reference"].epoch_s / timings["on"].epoch_s
        lines.append(f"{'reference / actlab (diagnostics on)':<41} = {ratio:6.2f}")
    return "\n".join(lines)


def activation_speed(names: list[str], device: str = "cpu", shape: tuple[int, int] = (128, 256),
                     repeats: int = 200) -> list[tuple[str, float, float]]:  # fmt: skip
    """Forward and forward+backward time (microseconds, median of ``repeats``) of each
    activation on one ``shape`` batch, as a layer of SimpleNetwork sees it."""
    torch_device = torch.device(device)
    results = []
    for name in names:
        torch.manual_seed(0)
        act = load_activation(name).to(torch_device)
        x = torch.randn(*shape, device=torch_device, requires_grad=True)
        forward, both = [], []
        for i in range(repeats + 10):
            _sync(torch_device)
            t0 = time.perf_counter()
            y = act(x)
            _sync(torch_device)
            t1 = time.perf_counter()
            y.backward(torch.ones_like(y))
            _sync(torch_device)
            t2 = time.perf_counter()
            if i >= 10:
                forward.append(t1 - t0)
                both.append(t2 - t0)
        results.append((name, 1e6 * statistics.median(forward), 1e6 * statistics.median(both)))
    return results


def _loss_once(layout: Callable, logits: torch.Tensor, targets: torch.Tensor, stage: str) -> None:
    if stage == "train":
        layout(logits, targets).mean(1).sum().backward()
    else:
        with torch.inference_mode():
            layout(logits, targets)


def loss_layouts(device: str = "cpu", repeats: int = 50) -> list[tuple[str, int, int, float, float]]:
    """Microseconds of a pack's members' cross-entropy (forward and backward of the mean, and
    the validation's forward alone) over logits ``(K, B, 10)`` laid out two ways: the usual
    ``(K*B, C)`` and the classes as dim 1, ``(K, C, B)`` (``member_cross_entropy`` on a CPU).
    Rows: (stage, K, B, usual us, classes-as-dim-1 us)."""
    torch_device = torch.device(device)
    layouts = (lambda x, y: F.cross_entropy(x.flatten(0, 1), y.flatten(), reduction="none").view(y.shape),
               lambda x, y: F.cross_entropy(x.transpose(1, 2), y, reduction="none"))  # fmt: skip
    rows = []
    for stage, members, batch in (("train", 8, 128), ("train", 64, 128), ("validate", 8, 1024)):
        logits = torch.randn(members, batch, 10, device=torch_device, requires_grad=stage == "train")
        targets = torch.randint(0, 10, (members, batch), device=torch_device)
        timed = []
        for layout in layouts:
            _loss_once(layout, logits, targets, stage)
            _sync(torch_device)
            start = time.perf_counter()
            for _ in range(repeats):
                _loss_once(layout, logits, targets, stage)
            _sync(torch_device)
            timed.append(1e6 * (time.perf_counter() - start) / repeats)
        rows.append((stage, members, batch, *timed))
    return rows


def _member_network(activation: str, seed: int, depth: int = 4, hidden_shape: list[int] | None = None
                    ) -> SimpleNetwork:  # fmt: skip
    """A member as a run builds it: its activation config's factory (per-layer widths for the
    activations that take them), its own initial weights, ``depth`` hidden layers (tapered)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    factory = instantiate(OmegaConf.load(CONFIG_DIR / "activation" / f"{activation}.yaml"))
    return SimpleNetwork(factory, depth=depth, hidden_shape=hidden_shape)


def lightning_floor(files: dict[str, Path], activation: str, device: torch.device, epochs: int, steps: int | None,
                    batch_size: int = 128, val_size: int = 5000,
                    hidden_shape: list[int] | None = None) -> Timing:  # fmt: skip
    """The floor for Lightning: the hand loop's arithmetic (the same batches by indexing, the
    same validation pass) under a Trainer with nothing of actlab's: a two-line
    ``training_step``, automatic optimisation, no callbacks, logger or checkpoints. What a
    single run costs above this is actlab's; what this costs above the hand loop is Lightning's."""
    import lightning as L

    train_x, train_y, val_x, val_y = load_data(files, device, val_size)
    n = len(train_y) if steps is None else min(len(train_y), steps * batch_size)

    class Batches:
        def __init__(self, train: bool) -> None:
            self.train = train

        def __len__(self) -> int:
            return -(-n // batch_size) if self.train else -(-len(val_y) // 1024)

        def __iter__(self):
            if not self.train:
                yield from ((val_x[i : i + 1024], val_y[i : i + 1024]) for i in range(0, len(val_y), 1024))
                return
            order = torch.randperm(len(train_y), device=device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield train_x.index_select(0, idx), train_y.index_select(0, idx)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _network(activation, device, hidden_shape)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            return (self.net(batch[0]).argmax(1) == batch[1]).sum()

        def configure_optimizers(self):
            return _sgd(self.net)

    times: list[float] = []

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            _sync(device)
            self.start = time.perf_counter()

        def on_validation_epoch_end(self, trainer, module) -> None:
            if not trainer.sanity_checking:
                _sync(device)
                times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(max_epochs=epochs + 1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[EpochTimer()])  # fmt: skip
    trainer.fit(Module(), train_dataloaders=Batches(True), val_dataloaders=Batches(False))
    return Timing("Lightning floor (bare LightningModule, no callbacks)", times[1:])  # the first epoch warms up


def stacked_hand_loop(files: dict[str, Path], activations: list[str], device: torch.device, members: int,
                      epochs: int, steps: int | None, batch_size: int = 128,
                      val_size: int = 5000, depth: int = 4, hidden_shape: list[int] | None = None,
                      with_metrics: bool = False) -> Timing:  # fmt: skip
    """The floor for training ``members`` models at once in eager PyTorch: the pack's stacked
    network (batched matrix products; each run of members with one activation one call), one
    SGD over the stacked tensors, each member its own batches; plus the validation pass. No
    framework, no bookkeeping. Members cycle through ``activations``, side by side as in a pack.
    ``with_metrics``: each member's epoch metrics too, as a pack computes them (actlab's
    ``EpochMetrics``: training loss and accuracy, validation loss, accuracy and F1), so that
    what a pack costs beyond it is the framework's alone."""
    train_x, train_y, val_x, val_y = load_data(files, device, val_size)
    names = sorted((activations[k % len(activations)] for k in range(members)), key=activations.index)
    net = StackedNetwork([_member_network(name, k, depth, hidden_shape) for k, name in enumerate(names)], names)
    net = net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    n = len(train_y) if steps is None else min(len(train_y), steps * batch_size)

    def epoch() -> None:
        orders = torch.stack([torch.randperm(len(train_y)) for _ in range(members)]).to(device)
        for start in range(0, n, batch_size):
            idx = orders[:, start : start + batch_size]
            flat = idx.reshape(-1)  # index_select: the fastest gather of rows on a CPU
            logits = net(train_x.index_select(0, flat).view(*idx.shape, *train_x.shape[1:]))
            targets = train_y.index_select(0, flat).view(idx.shape)
            # classes as dim 1: a CPU's log-softmax vectorises along the batch (actlab's member_cross_entropy)
            losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)
            if metrics is not None:
                metrics["train"].update(losses, logits, targets)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
        with torch.inference_mode():
            correct = torch.zeros(members, device=device, dtype=torch.long)
            for start in range(0, len(val_y), 1024):
                xb, yb = val_x[start : start + 1024], val_y[start : start + 1024]
                logits = net(xb.expand(members, *xb.shape))
                if metrics is None:
                    correct += (logits.argmax(-1) == yb).sum(1)
                    continue
                yb = yb.expand(members, -1)
                losses = F.cross_entropy(logits.transpose(1, 2), yb, reduction="none")
                metrics["val"].update(losses.mean(1), logits, yb)
            if metrics is None:
                correct.tolist()
            else:  # the epoch's values, read once, as a pack logs them
                values = [metrics[stage].compute_and_reset() for stage in ("train", "val")]
                torch.cat([v[name].flatten() for v in values for name in ("loss", "acc")] + [values[1]["f1"]]).tolist()

    metrics = None
    if with_metrics:
        from actlab.metrics import EpochMetrics

        metrics = {stage: EpochMetrics(members, 10, keep_predictions=stage == "val").to(device)
                   for stage in ("train", "val")}  # fmt: skip
    label = ",".join(activations) if len(activations) < 4 else f"{len(activations)} activations"
    label += "" if depth == 4 else f", depth {depth}"
    label += ", with the epoch metrics" if with_metrics else ""
    return Timing(f"stacked hand loop ({members} models, {label})", _time_epochs(epoch, epochs, device))


def data_overrides(data_dir: str | None, system_dir: str | None) -> list[str]:
    """The data overrides of a run launched with ``--data-dir`` / ``--system-dir`` (``""``: none
    of the Debian package's folder; None: the config's)."""
    overrides = [f"data.data_dir={data_dir}"] if data_dir else []
    if system_dir is not None:
        overrides.append(f"data.system_dir={system_dir or 'null'}")
    return overrides


def sweep_wall_time(launcher: list[str], members: int, activation: str, device: torch.device, epochs: int,
                    steps: int | None, data_dir: str | None, system_dir: str | None,
                    extra: list[str] | None = None) -> tuple[float, list, str]:  # fmt: skip
    """Wall time of ``python train.py -m seed=1..members`` with ``launcher`` overrides
    (start-up, data loading and testing included), the runs' records and the sweep's log."""
    import json
    import subprocess
    import sys

    sweep_dir = Path(tempfile.mkdtemp(prefix="actlab-bench-sweep-"))
    seeds = members // len(activation.split(","))  # every activation with seeds 1..seeds
    overrides = ["-m", f"seed={','.join(str(s) for s in range(1, seeds + 1))}", f"activation={activation}",
                 f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}", f"trainer.max_epochs={epochs}",
                 "callbacks=none", "data.download=false", f"hydra.sweep.dir={sweep_dir}", *launcher]  # fmt: skip
    overrides += data_overrides(data_dir, system_dir)
    if steps is not None:
        overrides += [f"trainer.limit_train_batches={steps}", f"trainer.limit_val_batches={max(1, steps // 10)}"]
    overrides += extra or []
    train = Path(__file__).resolve().parents[1] / "train.py"
    try:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(train), *overrides], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"benchmark sweep {launcher} failed: {result.stderr[-2000:]}")
        records = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
        return wall, records, result.stdout + result.stderr
    finally:
        shutil.rmtree(sweep_dir, ignore_errors=True)


def pack_benchmark(device: str, activation: str, members: int, epochs: int, steps: int | None,
                   data_dir: str | None, system_dir: str | None, floor_only: bool = False,
                   depth: int = 4) -> str:  # fmt: skip
    """Model-epochs per second of ``members`` runs done four ways, and the pack's per-model
    epoch against the stacked hand loop's (the arithmetic floor of eager PyTorch). With
    several (comma-separated) activations, the members cycle through them."""
    torch_device = torch.device(device)
    files = find_files(data_dir, system_dir)
    floor = stacked_hand_loop(files, activation.split(","), torch_device, members, max(2, epochs), steps,
                              depth=depth)  # fmt: skip
    if floor_only:
        epoch = statistics.median(floor.epoch_times[1:] or floor.epoch_times)
        return f"{floor.name}: per-model epoch {epoch / members:.3f} s ({device}, {torch.get_num_threads()} threads)"
    ways = {
        "separate processes, basic launcher": ["hydra/launcher=basic"],
        "separate processes, local_parallel n_jobs=2": ["hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2"],
        f"one pack of {members} (hydra/launcher=packed)": ["hydra/launcher=packed"],
    }
    lines = [f"device={device} activation={activation} runs={members} epochs={epochs} torch threads="
             f"{torch.get_num_threads()} (diagnostics off)", "",
             f"{'way':<48} {'wall s':>8} {'model-epochs/s':>15}"]  # fmt: skip
    walls, packed_records = {}, []
    for name, launcher in ways.items():
        wall, records, _ = sweep_wall_time(launcher, members, activation, torch_device, epochs, steps, data_dir,
                                           system_dir)  # fmt: skip
        if len(records) != members or any(r["status"] != "completed" for r in records):
            raise RuntimeError(f"{name}: not every run completed")
        walls[name] = wall
        packed_records = records if "pack" in name else packed_records
        lines.append(f"{name:<48} {wall:>8.1f} {members * epochs / wall:>15.2f}")
    floor_epoch = statistics.median(floor.epoch_times[1:] or floor.epoch_times)
    lines.append(f"{floor.name + ' (epochs only)':<48} {'':>8} {members / floor_epoch:>15.2f}")
    pack_epochs = packed_records[0]["epoch_times_s"]
    pack_epoch = statistics.median(pack_epochs[1:] or pack_epochs)  # the first epoch warms up
    pack_name = f"one pack of {members} (hydra/launcher=packed)"
    lines += [
        "",
        f"per-model epoch: pack {pack_epoch / members:.3f} s, stacked hand loop {floor_epoch / members:.3f} s",
        f"{'pack epoch / stacked hand loop epoch':<48} = {pack_epoch / floor_epoch:.2f}",
        f"{'local_parallel sweep wall / pack sweep wall':<48} = "
        f"{walls['separate processes, local_parallel n_jobs=2'] / walls[pack_name]:.2f}",
        f"{'basic sweep wall / pack sweep wall':<48} = "
        f"{walls['separate processes, basic launcher'] / walls[pack_name]:.2f}",
    ]
    return "\n".join(lines)


TINY = [16]  # 784-16-10: a step's arithmetic is negligible, so its time is the framework's


def stacked_loop_in_fresh_process(data_dir: str | None, system_dir: str | None, device: str, members: int,
                                  epochs: int, steps: int, with_metrics: bool) -> list[float]:  # fmt: skip
    """The tiny stacked hand loop's epoch times, timed in a fresh interpreter as a packed sweep's
    epochs are: where a process's memory lands moves these loops' step by up to ~15 % from one
    process to the next (0.75-0.87 ms measured on a 2-core VM), so the floor gets a draw of its own
    each round, as the pack does, not one draw for every round."""
    import json
    import subprocess
    import sys

    code = (f"import json, sys, torch; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import benchmark as b; files = b.find_files({data_dir!r}, {system_dir!r}); "
            f"t = b.stacked_hand_loop(files, ['relu'], torch.device({device!r}), {members}, {epochs}, {steps}, "
            f"hidden_shape=b.TINY, with_metrics={with_metrics}); print(json.dumps(t.epoch_times))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the stacked hand loop failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def pack_epochs_in_process(data_dir: str | None, system_dir: str | None, device: torch.device, members: int,
                           epochs: int, steps: int) -> list[float]:  # fmt: skip
    """A tiny pack's epoch times (after one that warms up), trained in this process by
    ``actlab.pack.training.train_pack`` (what a packed sweep's launcher calls) from the configs
    its sweep composes: beside a loop timed in the same process, both share the process's draw of
    memory placement, so their ratio is the framework's share alone."""
    from hydra import compose, initialize_config_dir

    from actlab.pack.members import Member
    from actlab.pack.training import train_pack

    root = Path(tempfile.mkdtemp(prefix="actlab-bench-pack-"))
    base = ["activation=relu", f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}", "callbacks=none",
            f"trainer.max_epochs={epochs + 1}", f"trainer.limit_train_batches={steps}",
            f"trainer.limit_val_batches={max(1, steps // 10)}", f"model.hidden_shape=[{TINY[0]}]",
            "data.download=false", "test_after_fit=false", "trainer.enable_model_summary=false",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    base += data_overrides(data_dir, system_dir)
    try:
        pack = []
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            for seed in range(1, members + 1):
                out, mine = root / f"seed-{seed}", [f"seed={seed}"]
                pack.append(Member(compose("train", overrides=[*base, *mine, f"paths.output_dir={out}"]), out,
                                   "relu", mine))  # fmt: skip
        records = train_pack(pack, "benchmark")
        if any(r["status"] != "completed" for r in records):
            raise RuntimeError(f"the pack did not complete: {[r.get('error') for r in records]}")
        return records[0]["epoch_times_s"][1:]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what every run imports (torch, torchvision,
    torchmetrics, Lightning, Hydra, matplotlib)."""
    import subprocess
    import sys

    code = "import torch, torchvision, torchmetrics, lightning, hydra, matplotlib"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def _epochs_done(log: str) -> list[tuple[float, float]]:
    """The pack log's timestamped ``epoch k/N done in S s`` lines: (when, S) each."""
    import re
    from datetime import datetime

    stamp = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]"
    done = [(datetime.strptime(m[0], "%Y-%m-%d %H:%M:%S,%f").timestamp(), float(m[1]))
            for m in re.findall(stamp + r".*epoch \d+/\d+ done in ([\d.]+) s", log)]  # fmt: skip
    if not done:
        raise RuntimeError("the packed sweep's log has no epoch lines")
    return done


def pack_phases(log: str, wall: float, started: float) -> tuple[float, float, float]:
    """Seconds of a packed sweep before its first step, inside its epochs and after its last
    step, from the pack log's timestamped ``epoch k/N done in S s`` lines (``started``: the
    process's start, on the same clock as the log's timestamps)."""
    done = _epochs_done(log)
    first_step = done[0][0] - done[0][1]
    epochs = done[-1][0] - first_step
    return first_step - started, epochs, started + wall - done[-1][0]


def between_epochs(log: str, epoch_times: list[float]) -> float:
    """Seconds a pack spends between one epoch's end and the next one's start (its members'
    checkpoints and records: outside the epoch's clock, inside the sweep's wall), per epoch: from
    the pack log's epoch lines (each logged as an epoch ends, to the millisecond) and the
    epochs' own times in a member's record (to the microsecond)."""
    done = _epochs_done(log)
    if len(done) < 2:
        return float("nan")
    return (done[-1][0] - done[0][0] - sum(epoch_times[1 : len(done)])) / (len(done) - 1)


def overhead_benchmark(device: str, members: int = 8, steps: int = 200, rounds: int = 3, epochs: int = 3,
                       data_dir: str | None = None, system_dir: str | None = None) -> str:  # fmt: skip
    """What is not arithmetic, on a tiny model (784-16-10, diagnostics off): per-step
    milliseconds of the hand loop and a single run (also with ``train_steps_per_call=1``,
    Lightning's own one step per call), of the stacked hand loop and a pack of
    ``members`` (each way ``epochs`` epochs a round, after one that warms up; each round also the
    pack and the stacked loop, without and with the metrics, paired in this process,
    :func:`pack_epochs_in_process`); and a packed
    sweep of ``members`` tiny runs: seconds before its first step,
    inside its epochs, after its last step, beside the time it takes to import the libraries."""
    from actlab.pack.training import train_pack  # noqa: F401  (imported before timing)

    torch_device = torch.device(device)
    files = find_files(data_dir, system_dir)
    ms = {"hand": [], "lightning": [], "single": [], "single_1": [], "stacked": [], "stacked_metrics": [], "pack": []}
    paired, paired_metrics = [], []  # per round, the pack's step over the stacked loop's (without and with the
    # metrics), all timed in this process
    for _ in range(rounds):  # interleaved: the machine's drift hits every way alike
        ms["hand"] += [1e3 * t / steps for t in hand_loop(files, "relu", torch_device, epochs, steps, hidden_shape=TINY
                                                          ).epoch_times]  # fmt: skip
        ms["lightning"] += [1e3 * t / steps for t in lightning_floor(files, "relu", torch_device, epochs, steps,
                                                                      hidden_shape=TINY).epoch_times]  # fmt: skip
        single = actlab_epochs(data_dir, system_dir, "relu", torch_device, epochs, steps, False, TINY, val_steps=40)
        ms["single"] += [1e3 * t / steps for t in single.epoch_times]
        single = actlab_epochs(data_dir, system_dir, "relu", torch_device, epochs, steps, False, TINY, val_steps=40,
                               extra=["train_steps_per_call=1"])  # fmt: skip
        ms["single_1"] += [1e3 * t / steps for t in single.epoch_times]
        for key, with_metrics in (("stacked", False), ("stacked_metrics", True)):  # each a process, as the pack
            times = stacked_loop_in_fresh_process(data_dir, system_dir, device, members, epochs, steps, with_metrics)
            ms[key] += [1e3 * t / steps for t in times]
        started = time.time()
        wall, records, log = sweep_wall_time(["hydra/launcher=packed"], members, "relu", torch_device, epochs + 1,
                                             steps, data_dir, system_dir,
                                             [f"model.hidden_shape=[{TINY[0]}]"])  # fmt: skip
        if len(records) != members or any(r["status"] != "completed" for r in records):
            raise RuntimeError("the packed sweep did not complete")
        ms["pack"] += [1e3 * t / steps for t in records[0]["epoch_times_s"][1:]]  # the first epoch warms up
        here = stacked_hand_loop(files, ["relu"], torch_device, members, epochs, steps, hidden_shape=TINY)
        packed = pack_epochs_in_process(data_dir, system_dir, torch_device, members, epochs, steps)
        here_metrics = stacked_hand_loop(files, ["relu"], torch_device, members, epochs, steps, hidden_shape=TINY,
                                         with_metrics=True)  # fmt: skip
        paired.append(statistics.median(packed) / statistics.median(here.epoch_times))
        paired_metrics.append(statistics.median(packed) / statistics.median(here_metrics.epoch_times))
    before, inside, after = pack_phases(log, wall, started)
    between = between_epochs(log, records[0]["epoch_times_s"])
    imports = import_seconds()
    median = {k: statistics.median(v) for k, v in ms.items()}
    return "\n".join([
        f"overhead on a tiny model (784-{TINY[0]}-10, relu, diagnostics off, {device}, {torch.get_num_threads()} "
        f"threads, {steps} steps an epoch; medians over {rounds} interleaved rounds of {epochs} epochs each, after "
        f"one that warms up)", "",
        f"{'per step':<40} {'ms':>8}",
        f"{'hand loop (one model)':<40} {median['hand']:>8.2f}",
        f"{'Lightning floor (bare module)':<40} {median['lightning']:>8.2f}   "
        f"{median['lightning'] / median['hand']:.2f}x",
        f"{'single run (Lightning)':<40} {median['single']:>8.2f}   {median['single'] / median['hand']:.2f}x"
        f"   ({median['single'] / median['lightning']:.2f}x the Lightning floor)",
        f"{'  the same, one step per call':<40} {median['single_1']:>8.2f}   "
        f"{median['single_1'] / median['hand']:.2f}x   (train_steps_per_call=1)",
        f"{f'stacked hand loop ({members} models)':<40} {median['stacked']:>8.2f}",
        f"{'  the same, with the epoch metrics':<40} {median['stacked_metrics']:>8.2f}   "
        f"{median['stacked_metrics'] / median['stacked']:.2f}x   (a pack's train/val loss, accuracy, F1)",
        f"{f'pack of {members} (Lightning)':<40} {median['pack']:>8.2f}   "
        f"{median['pack'] / median['stacked']:.2f}x   ({median['pack'] / median['stacked_metrics']:.2f}x the "
        f"stacked loop with the metrics)",
        f"{'  the same, paired in one process':<40} {'':>8}   {statistics.median(paired):.2f}x   (each round's pack "
        f"and stacked loop in this process: {min(paired):.2f}x-{max(paired):.2f}x)",
        f"{'    against the loop with the metrics':<40} {'':>8}   {statistics.median(paired_metrics):.2f}x   "
        f"(rounds {min(paired_metrics):.2f}x-{max(paired_metrics):.2f}x)", "",
        f"packed sweep of {members} tiny runs x {epochs + 1} epochs (last round): {wall:.1f} s wall",
        f"{'  importing the libraries':<40} {imports:>8.1f} s  (a fresh interpreter, alone)",
        f"{'  before the first step':<40} {before:>8.1f} s  (imports included)",
        f"{'  inside the epochs':<40} {inside:>8.1f} s  ({1e3 * between:.0f} ms between two epochs: the members' "
        f"checkpoints and records)",
        f"{'  after the last step':<40} {after:>8.1f} s",
        f"{'  outside the epochs, beyond imports':<40} {before + after - imports:>8.1f} s",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--activation",
        default="relu",
        help="an activation (with --pack: a comma-separated list the members cycle through)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds (a timed epoch per loop each; with --overhead: --epochs)",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps per epoch (default: all)")
    parser.add_argument("--data-dir", default=None, help="first place to look for FashionMNIST")
    parser.add_argument("--system-dir", default=None, help="second place ('none' to skip the Debian copy)")
    parser.add_argument(
        "--versus",
        default=None,
        metavar="ACTIVATION",
        help="also time actlab with this activation, e.g. --activation staf --versus relu",
    )
    parser.add_argument("--skip-reference", action="store_true", help="skip the (slow) textbook loop")
    parser.add_argument("--activations", action="store_true", help="time every activation on a 128x256 batch")
    parser.add_argument("--pack", type=int, default=None, metavar="K",
                        help="model-epochs/s of K runs: separate processes, a pack, the stacked floor")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per run with --pack; with --overhead, timed epochs per way a round")  # fmt: skip
    parser.add_argument("--floor-only", action="store_true", help="with --pack: only the stacked hand loop")
    parser.add_argument("--depth", type=int, default=4, help="with --floor-only: hidden layers of the members")
    parser.add_argument("--loss-layouts", action="store_true",
                        help="a pack's loss, forward and backward, in its two layouts (us)")  # fmt: skip
    parser.add_argument("--overhead", action="store_true",
                        help="per-step ms on a tiny model (hand loop, single run, stacked loop, pack of --pack K, "
                             "default 8) and a packed sweep's seconds outside its epochs")  # fmt: skip
    args = parser.parse_args()
    unknown = [a for a in args.activation.split(",") if a not in group_options("activation")]
    if unknown or ("," in args.activation and not args.pack):
        parser.error(f"--activation: unknown {unknown}" if unknown else "several activations need --pack")
    if args.depth != 4 and not args.floor_only:
        parser.error("--depth applies to the stacked floor only (--pack K --floor-only)")
    if args.pack and not args.floor_only and args.pack % len(args.activation.split(",")):
        parser.error("--pack K: K must be a multiple of the number of activations (each gets K/n seeds)")
    if args.activations:
        print(f"{'activation':<18} {'forward us':>11} {'fwd+bwd us':>11}  (128x256 batch, {args.device})")
        for name, forward, both in activation_speed(group_options("activation"), args.device):
            print(f"{name:<18} {forward:>11.1f} {both:>11.1f}")
        return
    if args.loss_layouts:
        print(f"{'stage':<9} {'K':>3} {'B':>5} {'(K*B, C) us':>12} {'(K, C, B) us':>13}  ({args.device})")
        for stage, members, batch, usual, transposed in loss_layouts(args.device):
            print(f"{stage:<9} {members:>3} {batch:>5} {usual:>12.1f} {transposed:>13.1f}")
        return
    system_dir = None if args.system_dir is None else ("" if args.system_dir == "none" else args.system_dir)
    if args.overhead:
        print(overhead_benchmark(args.device, args.pack or 8, args.steps or 200, args.rounds, args.epochs,
                                 args.data_dir, system_dir))  # fmt: skip
        return
    if args.pack:
        print(pack_benchmark(args.device, args.activation, args.pack, args.epochs, args.steps, args.data_dir,
                             system_dir, args.floor_only, args.depth))  # fmt: skip
        return
    timings = benchmark(args.device, args.activation, args.rounds, args.steps, args.data_dir, system_dir,
                        args.skip_reference, args.versus)  # fmt: skip
    print(format_report(timings, args.device, args.activation, args.versus))


if __name__ == "__main__":
    main()
