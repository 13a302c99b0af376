import functools

import pytest
import torch
from torch import nn

from actlab.activations import PReLU, TrainableELU
from actlab.models import SimpleNetwork, tapered_hidden_shape

relu = functools.partial(nn.ReLU)


def test_default_network_matches_the_textbook():
    net = SimpleNetwork(relu)
    assert net.hidden_shape == [256, 192, 128, 64]
    assert sum(p.numel() for p in net.parameters()) == 283_914
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert net(torch.randn(5, 784)).shape == (5, 10)


@pytest.mark.parametrize(
    "depth, expected",
    [(1, [256]), (2, [256, 64]), (4, [256, 192, 128, 64]), (8, [256, 229, 201, 174, 146, 119, 91, 64])],
)
def test_depth_tapers_linearly_from_256_to_64(depth, expected):
    assert tapered_hidden_shape(depth) == expected
    assert SimpleNetwork(relu, depth=depth).hidden_shape == expected


def test_explicit_hidden_shape_wins_over_depth():
    net = SimpleNetwork(relu, hidden_shape=[32, 16], depth=8)
    assert net.hidden_shape == [32, 16] and net.depth == 2
    assert [l.out_features for l in net.linears] == [32, 16] and net.head.in_features == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 0}, "model.depth must be a positive integer"),
        ({"depth": -3}, "model.depth must be a positive integer"),
        ({"hidden_shape": []}, "hidden_shape is empty"),
        ({"hidden_shape": [64, -1]}, "positive integers"),
        ({"hidden_shape": [64, 0]}, "positive integers"),
        (
            {"init": "glorot"},
            "unknown model.init 'glorot'; choose one of: default, kaiming, lecun, xavier, orthogonal, auto",
        ),
    ],
)
def test_impossible_shapes_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimpleNetwork(relu, **kwargs)


def test_one_activation_instance_per_layer_unless_shared():
    net = SimpleNetwork(functools.partial(TrainableELU))
    assert len({id(a) for a in net.activations}) == 4
    assert len(list(net.activations.parameters())) == 4
    shared = SimpleNetwork(functools.partial(TrainableELU), share_activation=True)
    assert len({id(a) for a in shared.activations}) == 1
    assert len(list(shared.activations.parameters())) == 1


def test_per_channel_prelu_gets_the_layer_width():
    net = SimpleNetwork(functools.partial(PReLU, per_channel=True))
    assert [a.weight.numel() for a in net.activations] == [256, 192, 128, 64]
    net = SimpleNetwork(functools.partial(PReLU))
    assert [a.weight.numel() for a in net.activations] == [1, 1, 1, 1]


@pytest.mark.parametrize("init", ["kaiming", "lecun", "xavier", "orthogonal"])
def test_weight_inits(init):
    torch.manual_seed(0)
    net = SimpleNetwork(relu, init=init)
    default = SimpleNetwork(relu)
    first = net.linears[0].weight
    assert torch.all(net.linears[0].bias == 0)
    if init == "kaiming":
        assert first.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.05)
    elif init == "lecun":
        assert first.std().item() == pytest.approx((1 / 784) ** 0.5, rel=0.05)
    elif init == "xavier":
        assert first.abs().max().item() <= (6 / (784 + 256)) ** 0.5 + 1e-6
    else:
        w = first  # 256 x 784: orthonormal rows
        assert torch.allclose(w @ w.T, torch.eye(256), atol=1e-4)
    assert not torch.allclose(first.std(), default.linears[0].weight.std(), rtol=0.01)


def test_no_activation_network_is_one_affine_map():
    torch.manual_seed(0)
    net = SimpleNetwork(functools.partial(nn.Identity)).double()
    x = torch.randn(64, 784, dtype=torch.float64)
    # collapse the stack into W x + b by hand
    weight, bias = torch.eye(784, dtype=torch.float64), torch.zeros(784, dtype=torch.float64)
    for linear in [*net.linears, net.head]:
        weight, bias = linear.weight @ weight, linear.weight @ bias + linear.bias
    assert torch.allclose(net(x), x @ weight.T + bias, atol=1e-10)
    # and it is affine: f(a x + (1 - a) y) == a f(x) + (1 - a) f(y)
    y = torch.randn(64, 784, dtype=torch.float64)
    assert torch.allclose(net(0.3 * x + 0.7 * y), 0.3 * net(x) + 0.7 * net(y), atol=1e-10)


def test_forward_hidden_returns_post_activation_outputs():
    net = SimpleNetwork(relu)
    outputs = net.forward_hidden(torch.randn(7, 784))
    assert [tuple(o.shape) for o in outputs] == [(7, 256), (7, 192), (7, 128), (7, 64)]
    assert all((o >= 0).all() for o in outputs)


def test_init_auto_gives_each_activation_its_own_and_refuses_one_it_does_not_know():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from actlab.config import CONFIG_DIR, group_options

    chosen = {}
    for name in group_options("activation"):  # every activation actlab ships has a stated init
        factory = instantiate(OmegaConf.load(CONFIG_DIR / "activation" / f"{name}.yaml"))
        chosen[name] = SimpleNetwork(factory, depth=1, init="auto").initialised_with
    assert {name: chosen[name] for name in ("relu", "prelu", "gelu", "selu", "tanh", "sigmoid", "softsign")} == {
        "relu": "kaiming", "prelu": "kaiming", "gelu": "kaiming", "selu": "lecun", "tanh": "xavier",
        "sigmoid": "xavier", "softsign": "xavier"}  # fmt: skip
    assert SimpleNetwork(relu).initialised_with == "default"

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    with pytest.raises(ValueError, match="model.init=auto has no init for activation Square; set one"):
        SimpleNetwork(Square, init="auto")
    # why it matters at depth: PyTorch's default shrinks a ReLU signal layer after layer, He keeps it
    torch.manual_seed(0)
    x = torch.randn(512, 784)
    deep_default, deep_auto = (SimpleNetwork(relu, depth=16, init=i).forward_hidden(x)[-1] for i in ("default", "auto"))
    assert deep_default.pow(2).mean().sqrt() < 0.1 < 0.3 < deep_auto.pow(2).mean().sqrt() < 3
