"""Every activation of conf/activation/: value, gradient, finiteness, trainable parameters."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from actlab.activations import STAF, BSpline, Rational
from actlab.config import group_options, load_activation
from actlab.models import SimpleNetwork

ALL = group_options("activation")
# the families of the activation library (prelu listed once)
LIBRARY_NAMES = {
    "sigmoid", "tanh", "step", "softsign",
    "relu", "gelu", "mish", "silu", "swish", "elu", "selu", "softplus", "celu",
    "leaky_relu", "relu6", "hardswish", "rrelu", "prelu",
    "telu", "trainable_elu", "staf", "rational", "bspline", "snake", "adaptive_sigmoid",
    "swigelu", "hardshrink", "softshrink", "tanhshrink", "mixture", "none",
}  # fmt: skip
NOT_DIFFERENTIABLE = {"step"}  # zero gradient by design, tested on its own
RANDOM_IN_TRAINING = {"rrelu"}
TRAINABLE = {"prelu", "swish", "trainable_elu", "staf", "rational", "bspline", "snake",
             "adaptive_sigmoid", "mixture"}  # fmt: skip


def sigmoid(x):
    return 1 / (1 + torch.exp(-x))


# Independent formulas (textbook/paper definitions), evaluated in float64.
FORMULAS = {
    "sigmoid": sigmoid,
    "tanh": lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x)),
    "step": lambda x: (x > 0).double(),
    "softsign": lambda x: x / (1 + x.abs()),
    "relu": lambda x: torch.where(x > 0, x, 0 * x),
    "gelu": lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))),
    "mish": lambda x: x * torch.tanh(torch.log1p(torch.exp(x))),
    "silu": lambda x: x * sigmoid(x),
    "swish": lambda x: x * sigmoid(1.0 * x),
    "elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "selu": lambda x: 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1)),
    "softplus": lambda x: torch.log1p(torch.exp(x)),
    "celu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "leaky_relu": lambda x: torch.where(x > 0, x, 0.01 * x),
    "relu6": lambda x: x.clamp(0, 6),
    "hardswish": lambda x: x * (x + 3).clamp(0, 6) / 6,
    "rrelu": lambda x: torch.where(x > 0, x, x * (0.125 + 1 / 3) / 2),  # eval mode: mean slope
    "prelu": lambda x: torch.where(x > 0, x, 0.25 * x),
    "telu": lambda x: x * torch.tanh(torch.exp(x)),
    "trainable_elu": lambda x: torch.where(x > 0, x, torch.exp(x) - 1),
    "snake": lambda x: x + torch.sin(x) ** 2,
    "adaptive_sigmoid": sigmoid,
    "swigelu": lambda x: 0.5 * (x * sigmoid(x) + x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))),
    "hardshrink": lambda x: torch.where(x.abs() > 0.5, x, 0 * x),
    "softshrink": lambda x: torch.where(x > 0.5, x - 0.5, torch.where(x < -0.5, x + 0.5, 0 * x)),
    "tanhshrink": lambda x: x - torch.tanh(x),
    "none": lambda x: x,
    "mixture": lambda x: (
        0.25 * (x.clamp(min=0) + x * 0.5 * (1 + torch.erf(x / math.sqrt(2))) + torch.tanh(x) + x * sigmoid(x))
    ),
}
# Where PyTorch has the same function, ours must agree with it.
TORCH_REFERENCE = {"silu": F.silu, "swish": F.silu, "trainable_elu": F.elu, "telu": None}
TORCH_REFERENCE["telu"] = lambda x: x * torch.tanh(torch.exp(x))  # TanhExp, no PyTorch op


def build(name, **overrides):
    torch.manual_seed(0)
    return load_activation(name, **overrides)


def test_library_covers_the_spec_table():
    assert set(ALL) >= LIBRARY_NAMES, sorted(LIBRARY_NAMES - set(ALL))
    assert len(ALL) >= 30


def test_unknown_activation_lists_the_choices():
    with pytest.raises(ValueError, match="unknown activation 'nosuch'; choose one of: .*relu.*telu"):
        load_activation("nosuch")


GRID = torch.linspace(-6, 6, 241, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_value_matches_formula(name):
    act = build(name).double().eval()
    with torch.no_grad():
        assert torch.allclose(act(GRID), FORMULAS[name](GRID), atol=1e-8, rtol=1e-6), name


@pytest.mark.parametrize("name", sorted(TORCH_REFERENCE))
def test_agrees_with_pytorch(name):
    act = build(name).double()
    with torch.no_grad():
        assert torch.allclose(act(GRID), TORCH_REFERENCE[name](GRID), atol=1e-12)


def test_every_activation_has_a_formula_or_dedicated_test():
    dedicated = {"staf", "rational", "bspline"}
    assert set(ALL) <= set(FORMULAS) | dedicated


def test_staf_matches_its_sum_of_sines():
    act = build("staf").double()
    expected = sum(act.amplitude[i] * torch.sin(act.frequency[i] * GRID + act.phase[i]) for i in range(act.tau))
    with torch.no_grad():
        assert torch.allclose(act(GRID), expected, atol=1e-10)
    assert act.tau == 25 and act.amplitude.shape == (25,)
    # paper-style init: frequencies in [0, omega_0), phases in [-pi, pi)
    assert act.frequency.min() >= 0 and act.frequency.max() < act.omega_0
    assert act.phase.abs().max() <= math.pi


def test_rational_is_initialised_near_leaky_relu_and_matches_its_formula():
    act = Rational().double()
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    with torch.no_grad():
        assert (act(x) - F.leaky_relu(x, 0.01)).abs().max() < 0.05
        a, b = act.numerator, act.denominator
        expected = sum(a[j] * x**j for j in range(6)) / (1 + sum(b[k].abs() * x.abs() ** (k + 1) for k in range(4)))
        assert torch.allclose(act(x), expected, atol=1e-12)


def test_bspline_bases_form_a_partition_of_unity_and_vanish_outside():
    act = BSpline(grid_size=8, grid_range=3.0).double()
    inside = torch.linspace(-2.99, 2.99, 500, dtype=torch.float64)
    assert torch.allclose(act.basis(inside).sum(-1), torch.ones_like(inside), atol=1e-12)
    outside = torch.tensor([-100.0, -6.0, 6.0, 1e4], dtype=torch.float64)
    assert torch.all(act.basis(outside) == 0)
    with torch.no_grad():
        assert torch.allclose(act(outside), F.silu(outside))


# knot spacings exact in binary; otherwise the float32 knot buffer is uniform only to ~1e-7
@pytest.mark.parametrize("grid_size, grid_range", [(8, 3.0), (16, 4.0), (1, 2.0)])
def test_bspline_forward_is_the_cox_de_boor_sum(grid_size, grid_range):
    torch.manual_seed(grid_size)
    act = BSpline(grid_size=grid_size, grid_range=grid_range, init_scale=1.0).double()
    knots = act.knots
    x = torch.cat([torch.linspace(-3 * grid_range, 3 * grid_range, 2001, dtype=torch.float64), knots, knots + 1e-9])
    x = x.requires_grad_()
    fast = act.spline(x)
    reference = act.basis(x) @ act.coefficients
    assert torch.allclose(fast, reference, atol=1e-12)
    grads_fast = torch.autograd.grad(fast.sum(), [x, act.coefficients])
    inner = (x > knots[0] + 1e-6) & (x < knots[-1] - 1e-6)  # the recursion's x-gradient is 0 at its ends
    grads_ref = torch.autograd.grad(reference.sum(), [x, act.coefficients])
    assert torch.allclose(grads_fast[0][inner], grads_ref[0][inner], atol=1e-9)
    assert torch.allclose(grads_fast[1], grads_ref[1], atol=1e-9)
    assert torch.isnan(act(torch.tensor([float("nan")], dtype=torch.float64))).all()


def test_bspline_backward_takes_a_float32_gradient_for_bfloat16_inputs():
    """What CUDA autocast hands a packed B-spline's backward (a bf16-mixed pack on an H200 failed
    in index_add on it): the gradients come back in their inputs' dtypes, close to float32's."""
    from types import SimpleNamespace

    from actlab.activations.adaptive import _UniformCubicSpline

    torch.manual_seed(0)
    x, c = torch.randn(64).bfloat16().float(), torch.randn(8).bfloat16().float()  # the same points in both dtypes
    grad = torch.randn(64)
    wide = [_UniformCubicSpline.forward(x, c, -2.0, 2.0)]
    narrow = [_UniformCubicSpline.forward(x.bfloat16(), c.bfloat16(), -2.0, 2.0)]
    grads = []
    for (_, u, index, inside, padded), g in [(wide[0], grad), (narrow[0], grad)]:
        ctx = SimpleNamespace(saved_tensors=(u, index, inside, padded), needs_input_grad=(True, True), scale=2.0)
        grads.append(_UniformCubicSpline.backward(ctx, g)[:2])
    (gx, gc), (bx, bc) = grads
    assert bx.dtype == torch.bfloat16 and bc.dtype == torch.bfloat16
    # bf16 positions carry ~3 digits: the x-gradient's slopes move by up to ~0.1 here
    assert torch.allclose(bx.float(), gx, rtol=0.05, atol=0.2) and torch.allclose(bc.float(), gc, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", sorted(set(ALL) - NOT_DIFFERENTIABLE))
def test_gradcheck_in_float64(name):
    act = build(name).double()
    if name in RANDOM_IN_TRAINING:
        act.eval()
    # points away from kinks (0, +-0.5 for shrinks, 6 for relu6, -3/3 for hardswish)
    x = (torch.rand(24, dtype=torch.float64) * 8 - 4).requires_grad_(True)
    x.data[(x.data.abs() - 0.5).abs() < 0.05] += 0.2
    x.data[(x.data.abs() - 3).abs() < 0.05] += 0.2
    x.data[x.data.abs() < 0.05] += 0.2
    assert torch.autograd.gradcheck(act, (x,), eps=1e-6, atol=1e-5)
    names = [n for n, p in act.named_parameters() if p.requires_grad]
    if names:  # and with respect to the activation's own parameters

        def of_parameters(*values):
            return torch.func.functional_call(act, dict(zip(names, values)), (x.detach(),))

        values = tuple(act.get_parameter(n).detach().clone().requires_grad_(True) for n in names)
        assert torch.autograd.gradcheck(of_parameters, values, eps=1e-6, atol=1e-5)


def test_step_has_exactly_zero_gradient():
    act = build("step")
    x = torch.linspace(-2, 2, 9, requires_grad=True)
    y = act(x)
    assert y.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    y.sum().backward()
    assert torch.all(x.grad == 0)
    # in a network the layers below get zero (not missing) gradients
    net = SimpleNetwork(functools.partial(type(act)))
    F.cross_entropy(net(torch.randn(8, 784)), torch.randint(0, 10, (8,))).backward()
    assert all(torch.all(l.weight.grad == 0) for l in net.linears)
    assert net.head.weight.grad.abs().sum() > 0


EXTREMES = [1e4, -1e4, 100.0, -100.0, 88.8, -88.8, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_finite_values_and_gradients_at_extreme_inputs(name, dtype):
    act = build(name)
    x = torch.tensor(EXTREMES, dtype=dtype, requires_grad=True)
    y = act(x)
    assert y.dtype == dtype
    assert torch.isfinite(y).all(), (name, y)
    y.sum().backward()
    assert torch.isfinite(x.grad).all(), (name, x.grad)
    for n, p in act.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), (name, n, p.grad)


def test_telu_is_stable_where_the_naive_formula_is_not():
    x = torch.tensor([90.0, 200.0, 1e4], requires_grad=True)
    naive = x * torch.tanh(torch.exp(x))
    (naive_grad,) = torch.autograd.grad(naive.sum(), x)
    assert torch.isnan(naive_grad).all()  # the problem being solved
    y = build("telu")(x)
    y.sum().backward()
    assert torch.equal(y.detach(), x.detach()) and torch.allclose(x.grad, torch.ones(3))


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_trainable_parameters_are_per_layer_and_learn(name):
    factory = functools.partial(load_activation, name)
    torch.manual_seed(0)
    net = SimpleNetwork(lambda: factory())
    params = [list(a.parameters()) for a in net.activations]
    assert all(params), f"{name} registers no parameters"
    ids = {id(p) for layer in params for p in layer}
    assert len(ids) == sum(len(layer) for layer in params)  # nothing shared between layers
    F.cross_entropy(net(torch.randn(32, 784)), torch.randint(0, 10, (32,))).backward()
    for layer in params:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer), name
    shared = SimpleNetwork(lambda: factory(), share_activation=True)
    assert len({id(p) for a in shared.activations for p in a.parameters()}) == len(params[0])


def test_staf_is_vectorised_and_its_fused_backward_matches_autograd():
    act = STAF(tau=25).double()
    x = torch.randn(16, 32, dtype=torch.float64, requires_grad=True)
    act(x).pow(2).sum().backward()
    fused = [x.grad.clone()] + [p.grad.clone() for p in act.parameters()]
    x.grad = None
    act.zero_grad()
    z = x.unsqueeze(-1) * act.frequency + act.phase
    (torch.sin(z) @ act.amplitude).pow(2).sum().backward()
    reference = [x.grad] + [p.grad for p in act.parameters()]
    for a, b in zip(fused, reference):
        assert torch.allclose(a, b, atol=1e-10)
