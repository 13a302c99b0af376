"""FashionMNIST as a LightningDataModule that keeps the whole dataset as in-memory tensors.

The dataset (60k train / 10k test, 28x28 grey, 10 classes) is ~220 MB as float32, so it is
decoded once, normalised to [-1, 1] once, moved to the training device once (the GPU when
training on one), and batched by indexing. No per-sample PIL transforms, no DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from actlab.data.idx import CorruptDataError, read_idx
from actlab.data.resumable import ResumableEpoch, ResumesTrainLoader, epoch_batches_done
from actlab.errors import ConfigError, UserError

log = logging.getLogger(__name__)

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TRAIN_SIZE, TEST_SIZE, NUM_CLASSES = 60_000, 10_000, 10
HOW_TO_GET = (
    "get the data with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files land in "
    f"{SYSTEM_DIR}), or put the four *-ubyte(.gz) files from "
    "https://github.com/zalandoresearch/fashion-mnist into data.data_dir, "
    "or allow torchvision to download them (data.download=true, needs internet)"
)


class DataNotFoundError(UserError, FileNotFoundError):
    """None of the places FashionMNIST is looked for holds a usable copy."""


class TensorBatchLoader(ResumableEpoch):
    """Iterates over ``(images[idx], labels[idx])`` batches of tensors already in memory.

    Shuffling draws a fresh permutation each epoch from ``generator`` (by default one that
    starts from torch's global RNG state when the loader is made), so a seeded run sees the
    same batch order every time, whatever else draws random numbers between epochs. With
    ``batches_done`` (the fit's count, :func:`~actlab.data.resumable.epoch_batches_done`) a fit
    resumed inside an epoch goes on with that epoch's order (:mod:`actlab.data.resumable`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None = None,
                 batches_done: Callable[[], int | None] | None = None) -> None:  # fmt: skip
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle = batch_size, shuffle
        if shuffle and generator is None:
            generator = torch.Generator().set_state(torch.get_rng_state())
        self.generator = generator
        self.batches_done = batches_done

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def _shuffle_generators(self) -> list[torch.Generator]:
        return [self.generator] if self.shuffle else []

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._begin_epoch()
        return self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        first = self._skip() * self.batch_size
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.labels.device, non_blocking=True)
            for start in range(first, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                # index_select, not images[idx]: the same rows, gathered ~3x faster on a CPU
                yield self.images.index_select(0, idx), self.labels.index_select(0, idx)
        else:
            for start in range(first, n, self.batch_size):
                yield (
                    self.images[start : start + self.batch_size],
                    self.labels[start : start + self.batch_size],
                )


def _find_in(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` (plain or .gz), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for name in (f"{stem}.gz", stem):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


def locate_fashion_mnist(
    data_dir: str | Path | None, system_dir: str | Path = SYSTEM_DIR, download: bool = True
) -> dict[str, Path]:
    """Find the FashionMNIST files: ``data_dir``, then the Debian package, then torchvision.

    Raises DataNotFoundError naming every place looked at and how to get the data.
    """
    candidates: list[Path] = []
    if data_dir:
        data_dir = Path(data_dir).expanduser()
        candidates += [data_dir, data_dir / "FashionMNIST" / "raw"]
    if system_dir:
        candidates.append(Path(system_dir))
    for directory in candidates:
        if (found := _find_in(directory)) is not None:
            return found
    download_error = ""
    if download and data_dir:
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(data_dir), train=train, download=True)
            if (found := _find_in(data_dir / "FashionMNIST" / "raw")) is not None:
                return found
        except Exception as err:  # any network or disk failure lands in the one clear error
            download_error = f"; torchvision download into {data_dir} failed: {err}"
    looked = ", ".join(str(c) for c in candidates) or "(no directory configured)"
    raise DataNotFoundError(
        f"FashionMNIST not found. Looked for {', '.join(FILES.values())} (plain or .gz) in: "
        f"{looked}{download_error}. To fix: {HOW_TO_GET}."
    )


def how_to_repair(path: Path) -> str:
    """What to do about a damaged copy of the data at ``path``."""
    if Path(path).is_relative_to(SYSTEM_DIR):
        return "reinstall it: apt-get install --reinstall dataset-fashion-mnist"
    return f"delete {path} (the next run looks in the other places, or downloads it with data.download=true)"


def load_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split, check it is a set of 28x28 images with matching labels in 0..9; a
    damaged file's error says how to repair it."""
    try:
        return _load_split(images_path, labels_path)
    except CorruptDataError as err:
        damaged = labels_path if str(labels_path) in str(err) else images_path
        raise CorruptDataError(f"{err}. To fix: {how_to_repair(damaged)}") from err


def _load_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise CorruptDataError(f"{images_path}: expected N x 28 x 28 images, got {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptDataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise CorruptDataError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return images, labels.long()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (mean 0.5, std 0.5 after scaling to [0, 1])."""
    return images.float().div_(127.5).sub_(1.0)


class FashionMNISTDataModule(ResumesTrainLoader, L.LightningDataModule):
    """FashionMNIST held as tensors on the training device, with a seeded validation split.

    Args:
        data_dir: first place to look for the files (also where torchvision downloads to).
        batch_size: training batch size.
        val_size: samples carved from the training set for validation; 0 validates on the
            test set, as the textbook did.
        split_seed: seed of the train/validation split (fixed across runs so that every run
            of a sweep is validated on the same samples).
        eval_batch_size: batch size for validation and test (no gradients, so larger).
        download: let torchvision download the files when no local copy is found.
        system_dir: where the Debian package ``dataset-fashion-mnist`` installs the files.
    """

    num_classes = NUM_CLASSES
    input_size = 28 * 28  # features per flattened image: what the model's first layer takes

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        val_size: int = 5000,
        split_seed: int = 0,
        eval_batch_size: int = 1024,
        download: bool = True,
        system_dir: str | None = SYSTEM_DIR,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
        if not isinstance(val_size, int) or val_size < 0:
            raise ValueError(f"data.val_size must be an integer >= 0, got {val_size!r}")
        self.data_dir, self.system_dir, self.download = data_dir, system_dir, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed = val_size, split_seed
        self.train_x = self.train_y = self.val_x = self.val_y = self.test_x = self.test_y = None
        # the training batch order's random stream: saved in every checkpoint (state_dict), so
        # a resumed run shuffles its next epochs exactly as the uninterrupted run does
        self.shuffle_generator: torch.Generator | None = None

    def prepare_data(self) -> None:
        locate_fashion_mnist(self.data_dir, self.system_dir, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_x is not None:
            return
        files = locate_fashion_mnist(self.data_dir, self.system_dir, self.download)
        log.info("FashionMNIST from %s", files["train_images"].parent)
        train_x, train_y = load_split(files["train_images"], files["train_labels"])
        test_x, test_y = load_split(files["test_images"], files["test_labels"])
        if self.val_size >= len(train_y):
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training data: the training set has "
                f"{len(train_y)} samples; choose a value below that (0 validates on the test set)"
            )
        device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
        train_x, test_x = normalise(train_x).to(device), normalise(test_x).to(device)
        if self.trainer is not None:  # the precision's input dtype (float64 under 64-true), once for every batch
            convert = self.trainer.precision_plugin.convert_input
            train_x, test_x = convert(train_x), convert(test_x)
        train_y, test_y = train_y.to(device), test_y.to(device)
        if self.val_size:
            generator = torch.Generator().manual_seed(self.split_seed)
            order = torch.randperm(len(train_y), generator=generator).to(device)
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
            self.val_x, self.val_y = train_x[val_idx], train_y[val_idx]
            self.train_x, self.train_y = train_x[train_idx], train_y[train_idx]
        else:
            self.train_x, self.train_y = train_x, train_y
            self.val_x, self.val_y = test_x, test_y
        self.test_x, self.test_y = test_x, test_y

    def probe_set(self, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``size`` training samples (all for None), on the training device: the
        fixed probe set the diagnostics measure the network on."""
        if self.train_x is None:
            raise RuntimeError("probe_set() needs the data: call setup() first")
        return self.train_x[:size], self.train_y[:size]

    def train_dataloader(self) -> TensorBatchLoader:
        if self.shuffle_generator is None:  # the seeded global stream, from here on the loader's own
            self.shuffle_generator = torch.Generator().set_state(torch.get_rng_state())
        # overfitting a few batches (debug=overfit) means the same batches every epoch: Lightning
        # turns a DataLoader's shuffling off for it, and this loader is not one
        shuffle = not (self.trainer is not None and self.trainer.overfit_batches)
        return self._resumable(TensorBatchLoader(self.train_x, self.train_y, self.batch_size, shuffle=shuffle,
                                                 generator=self.shuffle_generator,
                                                 batches_done=epoch_batches_done(self.trainer)))  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        if self.shuffle_generator is None:
            return self._loader_state()
        return {"shuffle_generator": self.shuffle_generator.get_state(), **self._loader_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "shuffle_generator" in state_dict:
            self.shuffle_generator = torch.Generator().set_state(state_dict["shuffle_generator"])
        self._load_loader_state(state_dict)

    def val_dataloader(self) -> TensorBatchLoader:
        return TensorBatchLoader(self.val_x, self.val_y, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return TensorBatchLoader(self.test_x, self.test_y, self.eval_batch_size, shuffle=False)
