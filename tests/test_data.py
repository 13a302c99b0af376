import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HAS_REAL_DATA, make_fake_fashion_mnist, requires_real_data, write_idx

from actlab.data import CorruptDataError, DataNotFoundError, FashionMNISTDataModule, read_idx
from actlab.data.fashion_mnist import locate_fashion_mnist


def module(data_dir, **kwargs):
    defaults = dict(data_dir=str(data_dir), system_dir=None, download=False, val_size=100)
    return FashionMNISTDataModule(**{**defaults, **kwargs})


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert torch.equal(read_idx(tmp_path / name), torch.from_numpy(array))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3 + b"\x01" * 7, "header says shape"),
        (b"\x12\x34\x56\x78rest", "not an IDX file"),
        (b"\x00\x00\x08\x03\x00", "truncated"),
    ],
)
def test_corrupt_idx_is_rejected(tmp_path, payload, message):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(CorruptDataError, match=message):
        read_idx(path)


def test_bad_gzip_is_corrupt(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(CorruptDataError, match="cannot read"):
        read_idx(path)


def test_datamodule_holds_normalised_tensors_and_a_seeded_split(fake_data_dir):
    dm = module(fake_data_dir)
    dm.setup()
    assert dm.train_x.shape == (412, 28, 28) and dm.val_x.shape == (100, 28, 28)
    assert dm.test_x.shape == (128, 28, 28)
    assert dm.train_x.dtype == torch.float32 and dm.train_y.dtype == torch.int64
    assert dm.train_x.min() >= -1 and dm.train_x.max() <= 1
    assert dm.train_x.min() == -1 and dm.train_x.max() > 0.9  # 0 -> -1, 250 -> 0.96
    again = module(fake_data_dir)
    again.setup()
    assert torch.equal(dm.val_y, again.val_y) and torch.equal(dm.val_x, again.val_x)
    other = module(fake_data_dir, split_seed=1)
    other.setup()
    assert not torch.equal(dm.val_x, other.val_x)
    # train and validation are disjoint and together the whole training file
    whole = read_idx(fake_data_dir / "train-images-idx3-ubyte.gz").float().div(127.5).sub(1)
    joined = torch.cat([dm.train_x, dm.val_x]).flatten(1)
    assert torch.equal(joined.sort(0).values, whole.flatten(1).sort(0).values)


def test_val_size_zero_monitors_on_the_test_set(fake_data_dir):
    dm = module(fake_data_dir, val_size=0)
    dm.setup()
    assert len(dm.train_y) == 512 and torch.equal(dm.val_x, dm.test_x)


def test_batches_by_indexing_cover_every_sample_once(fake_data_dir):
    dm = module(fake_data_dir, batch_size=100)
    dm.setup()
    loader = dm.train_dataloader()
    assert len(loader) == 5  # 412 samples -> 4 full batches + 12
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 412 and torch.equal(labels.sort().values, dm.train_y.sort().values)
    assert [len(y) for _, y in dm.val_dataloader()] == [100]


def test_the_batch_order_follows_the_seed_and_resumes_from_the_datamodules_state(fake_data_dir):
    def first_batch(seed):
        dm = module(fake_data_dir, batch_size=100)
        dm.setup()
        torch.manual_seed(seed)
        return next(iter(dm.train_dataloader()))[1]

    assert torch.equal(first_batch(0), first_batch(0)) and not torch.equal(first_batch(0), first_batch(1))
    dm = module(fake_data_dir, batch_size=100)
    dm.setup()
    loader = dm.train_dataloader()
    next(iter(loader))  # epoch 0
    state = dm.state_dict()  # what a checkpoint at the end of epoch 0 holds
    epoch_1 = next(iter(loader))[1]
    resumed = module(fake_data_dir, batch_size=100)
    resumed.setup()
    resumed.load_state_dict(state)
    torch.manual_seed(123)  # whatever the global stream is now
    assert torch.equal(next(iter(resumed.train_dataloader()))[1], epoch_1)


def test_val_size_larger_than_the_training_set_fails_before_training(fake_data_dir):
    with pytest.raises(ValueError, match="data.val_size=600 leaves no training data"):
        module(fake_data_dir, val_size=600).setup()


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": -5}, {"val_size": -1}])
def test_bad_sizes_fail_at_construction(fake_data_dir, kwargs):
    with pytest.raises(ValueError, match="data\\."):
        module(fake_data_dir, **kwargs)


def test_missing_data_names_every_place_and_the_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        locate_fashion_mnist(empty, system_dir=tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert str(empty) in message and str(tmp_path / "nowhere") in message
    assert "train-images-idx3-ubyte" in message and "apt-get install dataset-fashion-mnist" in message


def test_failed_download_is_reported_in_the_same_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataNotFoundError, match="torchvision download into .* failed: network unreachable"):
        locate_fashion_mnist(tmp_path, system_dir=None, download=True)


def test_lookup_order_prefers_data_dir_then_system_dir(tmp_path):
    first = make_fake_fashion_mnist(tmp_path / "first", n_train=20, n_test=10)
    second = make_fake_fashion_mnist(tmp_path / "second", n_train=20, n_test=10)
    assert locate_fashion_mnist(first, second, download=False)["train_images"].parent == first
    assert locate_fashion_mnist(tmp_path / "missing", second, download=False)["test_labels"].parent == second
    # torchvision's layout inside data_dir is found too
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    make_fake_fashion_mnist(raw, n_train=20, n_test=10)
    assert locate_fashion_mnist(tmp_path / "tv", None, download=False)["train_images"].parent == raw


def test_corrupt_file_in_the_dataset_fails_clearly(tmp_path):
    data = make_fake_fashion_mnist(tmp_path / "d", n_train=20, n_test=10)
    (data / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab"))
    with pytest.raises(CorruptDataError, match="train-labels-idx1-ubyte.gz") as error:
        module(data, val_size=0).setup()
    assert str(error.value).endswith(f"To fix: delete {data / 'train-labels-idx1-ubyte.gz'} (the next run looks in "
                                     "the other places, or downloads it with data.download=true)")  # fmt: skip
    from actlab.data.fashion_mnist import SYSTEM_DIR, how_to_repair

    assert how_to_repair(Path(SYSTEM_DIR) / "x.gz") == "reinstall it: apt-get install --reinstall dataset-fashion-mnist"


def test_mismatched_label_count_is_corrupt(tmp_path):
    data = make_fake_fashion_mnist(tmp_path / "d", n_train=20, n_test=10)
    write_idx(data / "t10k-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8))
    with pytest.raises(CorruptDataError, match="9 labels for 10 images"):
        module(data, val_size=0).setup()


@requires_real_data
def test_real_dataset_from_the_debian_package():
    assert HAS_REAL_DATA
    dm = FashionMNISTDataModule(data_dir=None, download=False, val_size=5000)
    dm.setup()
    assert len(dm.train_y) == 55_000 and len(dm.val_y) == 5000 and len(dm.test_y) == 10_000
    assert torch.bincount(dm.test_y).tolist() == [1000] * 10
