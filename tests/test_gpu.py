"""GPU checks; skipped where torch sees no CUDA device (CI has none)."""

import pytest
import torch
from test_training import train_in_process

from actlab.config import group_options

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", group_options("activation"))
def test_every_activation_trains_on_the_gpu(name, tmp_path, fake_data_dir):
    record, _ = train_in_process(tmp_path, fake_data_dir, [f"activation={name}", "trainer=gpu", "debug=fdr"], name)
    assert record["status"] == "completed" and record["accelerator"] == "cuda", record.get("error")


def test_data_lives_on_the_gpu_and_diagnostics_run_there(tmp_path, fake_data_dir):
    record, out = train_in_process(tmp_path, fake_data_dir, ["trainer=gpu", "trainer.max_epochs=2"])
    assert record["status"] == "completed" and record["dead/overall"] is not None
    from actlab.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(data_dir=str(fake_data_dir), system_dir=None, download=False, val_size=100)
    dm.trainer = type("T", (), {"strategy": type("S", (), {"root_device": torch.device("cuda", 0)})()})()
    dm.setup()
    assert dm.train_x.is_cuda and next(iter(dm.train_dataloader()))[0].is_cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", group_options("activation"))
def test_activations_are_finite_on_the_gpu(name, dtype):
    from actlab.config import load_activation

    act = load_activation(name).cuda()
    x = torch.tensor([1e4, -1e4, 100.0, -100.0, 88.8, -88.8, 0.0], device="cuda", dtype=dtype, requires_grad=True)
    y = act(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_pack_trains_on_the_gpu_and_matches_its_separate_run(precision, tmp_path, fake_data_dir):
    from test_pack import members_for, single_run

    extra = ["trainer=gpu", f"trainer.precision={precision}"]
    members, base = members_for(tmp_path, fake_data_dir, [(1, "relu"), (2, "staf"), (3, "bspline")], extra)
    from actlab.pack.training import train_pack

    records = train_pack(members, "gpu")
    assert all(r["status"] == "completed" and r["accelerator"] == "cuda" for r in records)
    alone, _ = single_run(tmp_path, [*base, *extra], 2, "staf")
    tolerance = 1e-4 if precision == "32-true" else 2e-2  # bf16 matmuls: the same rounding, not the same order
    assert records[1]["history"]["train/loss"] == pytest.approx(alone["history"]["train/loss"], abs=tolerance)


@pytest.mark.parametrize("name", ["prelu", "staf", "trainable_elu", "relu"])
def test_the_shape_figure_of_an_activation_trained_on_the_gpu(name):
    """The figure is drawn on the CPU; a trained activation's parameters are on the GPU (a pack of
    PReLU or STAF members on CUDA once failed every member at its first step on this)."""
    from actlab.config import load_activation
    from actlab.plotting import activation_figure, value_and_derivative

    act = load_activation(name).cuda()
    x = torch.linspace(-2, 2, 9)
    y, dy = value_and_derivative(act, x)
    assert y.device.type == "cpu" and dy.device.type == "cpu" and torch.isfinite(dy).all()
    assert activation_figure(act) is not None


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_a_run_in_groups_of_steps_on_the_gpu_is_the_run_of_one_step_per_call(precision, tmp_path, fake_data_dir):
    """Grouped steps (actlab.steps) on CUDA, under each precision's plugin: 16-mixed scales the
    loss and unscales before each optimiser step through Lightning's own calls, in a group as
    in one step per call."""
    from test_steps import SHORT, assert_same_run, single

    extra = [*SHORT, "trainer=gpu", f"trainer.precision={precision}", "scheduler=cosine"]
    alone, alone_dir = single(tmp_path, fake_data_dir, "one", *extra, "train_steps_per_call=1")
    grouped, grouped_dir = single(tmp_path, fake_data_dir, "g16", *extra, "train_steps_per_call=16")
    assert alone["accelerator"] == grouped["accelerator"] == "cuda"
    assert_same_run(alone, alone_dir, grouped, grouped_dir)
