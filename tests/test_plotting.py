import subprocess
import sys

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
