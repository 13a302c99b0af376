import subprocess
import sys

import pytest
import torch
from conftest import REPO
from PIL import Image
from torch import nn

from actlab.plotting import activation_figure, plot_activations, value_and_derivative


def test_value_and_derivative_by_autograd():
    x = torch.linspace(-2, 2, 5)
    y, dy = value_and_derivative(nn.Tanh(), x)
    assert torch.allclose(y, torch.tanh(x)) and torch.allclose(dy, 1 - torch.tanh(x) ** 2)


def test_plot_selected_activations_with_surfaces(tmp_path):
    paths = plot_activations(["relu", "staf", "rrelu"], tmp_path)
    assert {p.name for p in paths} == {
        "activations.png",
        "surface_relu.png",
        "surface_staf.png",
        "surface_rrelu.png",
    }
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 200


def test_activation_figure_is_a_figure():
    figure = activation_figure(nn.ReLU())
    assert len(figure.axes) == 1 and len(figure.axes[0].lines) >= 2


def test_script_plots_every_activation(tmp_path):
    script = str(REPO / "scripts" / "plot_activations.py")
    result = subprocess.run(
        [sys.executable, script, "--out", str(tmp_path), "--no-surfaces"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "activations.png").stat().st_size > 50_000


def test_the_confusion_matrix_is_an_image_and_a_table_in_tensorboard():
    import torch

    from actlab.tensorboard import confusion_matrix_image, log_confusion_matrix

    counts = torch.tensor([[8, 2, 0], [0, 10, 0], [5, 0, 5]])
    image = confusion_matrix_image(counts, cell=4)
    assert image.shape == (3, 12, 12) and image.min() >= 0 and image.max() <= 1
    # row-normalised: a class all right is the darkest blue, a cell never predicted is white
    assert torch.allclose(image[:, 6, 6], torch.tensor([0.03, 0.19, 0.42]))
    assert torch.equal(image[:, 2, 10], torch.ones(3))
    assert torch.allclose(image[:, 2, 2], 1 + 0.8 * (torch.tensor([0.03, 0.19, 0.42]) - 1))  # 80 % of class 0

    class Writer:
        def __init__(self):
            self.calls = []

        def add_image(self, tag, value, step):
            self.calls.append(("image", tag, tuple(value.shape), step))

        def add_text(self, tag, text, step):
            self.calls.append(("text", tag, text, step))

    writer = Writer()
    log_confusion_matrix([writer], counts, 7)
    assert writer.calls[0] == ("image", "test/confusion_matrix", (3, 72, 72), 7)
    assert writer.calls[1][3] == 7 and writer.calls[1][2].splitlines()[2:] == [
        "| 0 | 80.0 | 20.0 | 0.0 |",
        "| 1 | 0.0 | 100.0 | 0.0 |",
        "| 2 | 50.0 | 0.0 | 50.0 |",
    ]


def test_layer_histograms_of_a_run_that_blew_up_draw_its_finite_values(tmp_path):
    """A member that diverged mid-epoch has inf/NaN outputs: its figure is still drawn (a pack's
    fit-end figures once failed every member on torch.histc's non-finite range)."""
    from actlab.plotting import plot_layer_histograms

    blown = torch.tensor([1.0, float("inf"), -4.7e14, float("nan")])
    path = plot_layer_histograms(
        {"at init": [torch.randn(50), torch.randn(50)], "final": [blown, torch.full((3,), float("inf"))]},
        ["layer 0", "layer 1"],
        "output",
        tmp_path / "hist.png",
    )
    assert Image.open(path).size[0] > 0


def test_a_figure_that_cannot_be_drawn_warns_and_spares_the_run(tmp_path):
    import pytest

    from actlab.callbacks.diagnostic import Diagnostic

    class Broken(Diagnostic):
        def save_figure(self, directory):
            raise RuntimeError("cannot draw")

    with pytest.warns(UserWarning, match="Broken: no figure drawn in .*cannot draw"):
        Broken(figures_dir=str(tmp_path)).write_figures()


def test_an_activation_figure_that_cannot_be_drawn_warns_and_spares_the_run(tmp_path):
    from types import SimpleNamespace

    import pytest
    from lightning.pytorch.loggers import TensorBoardLogger

    from actlab.callbacks.activation_plot import ActivationPlot

    class Unplottable(nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot evaluate here")

    with pytest.warns(UserWarning, match="no activation/shape figure: .*cannot evaluate here"):
        ActivationPlot.draw(SimpleNamespace(activations=[Unplottable()]), [TensorBoardLogger(tmp_path)])


def test_learning_curves_go_through_the_epochs_that_were_validated(tmp_path, monkeypatch):
    """Validated every other epoch (null in a record, NaN in memory between): each line joins
    the epochs measured instead of being broken into nothing by the gaps."""
    import actlab.plotting as plotting

    drawn = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: drawn.append(fig) or path)
    seeds = [[None, 0.6, None, 0.7], [float("nan"), 0.8, float("nan"), 0.9]]
    plotting.plot_learning_curves({"relu": {2: seeds}}, "val/acc", tmp_path / "a.png")
    plotting.plot_overlaid_curves({"relu": seeds}, "val/acc", tmp_path / "b.png")
    for fig in drawn:
        (line,) = fig.axes[0].lines
        assert line.get_xydata().tolist() == [[2.0, pytest.approx(0.7)], [4.0, pytest.approx(0.8)]]
