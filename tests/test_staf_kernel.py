"""STAF's fused CPU kernel: the same function and gradients as the float64 formula, on every
shape and thread count, and a clean fallback to the PyTorch path where it cannot be built."""

import math

import pytest
import torch

from actlab.activations import STAF, staf_kernel

requires_kernel = pytest.mark.skipif(staf_kernel.load() is None, reason="no C compiler: STAF uses its PyTorch path")


def reference(x: torch.Tensor, act: STAF) -> torch.Tensor:
    """The formula in float64 with autograd: sum_i C_i sin(W_i x + P_i)."""
    z = x.unsqueeze(-1) * act.frequency + act.phase
    return (torch.sin(z) * act.amplitude).sum(-1)


def grads(act: STAF, x: torch.Tensor, upstream: torch.Tensor, fn) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    act.zero_grad()
    (fn(x, act) * upstream).sum().backward()
    return [x.grad, act.amplitude.grad, act.frequency.grad, act.phase.grad]


@requires_kernel
@pytest.mark.parametrize("shape", [(1,), (7,), (128, 13), (128, 256), (3, 700, 41)])
@pytest.mark.parametrize("tau", [1, 25, 40])
def test_kernel_matches_the_float64_formula(shape, tau):
    torch.manual_seed(tau + len(shape))
    act = STAF(tau=tau, omega_0=3.0)
    x = 4 * torch.randn(shape)
    upstream = torch.randn(shape)
    assert staf_kernel.supports(x, tau)
    with torch.no_grad():
        exact = reference(x.double(), act.double()).float()
        act.float()
        assert torch.allclose(act(x), exact, atol=2e-6, rtol=1e-5)
    fused = grads(act, x, upstream, lambda x, a: a(x))
    act64 = STAF(tau=tau).double()
    act64.load_state_dict(act.state_dict())
    expected = grads(act64, x.double(), upstream.double(), reference)
    for name, a, b in zip(["x", "amplitude", "frequency", "phase"], fused, expected):
        scale = b.abs().max().item() + 1e-12
        assert (a.double() - b).abs().max().item() <= 2e-5 * scale, name


@requires_kernel
def test_kernel_handles_views_and_is_deterministic():
    torch.manual_seed(0)
    act = STAF()
    x = torch.randn(256, 96).t()  # non-contiguous view
    first = grads(act, x, torch.ones(96, 256), lambda x, a: a(x))
    second = grads(act, x.contiguous(), torch.ones(96, 256), lambda x, a: a(x))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@requires_kernel
def test_thread_count_does_not_change_the_result_beyond_rounding():
    torch.manual_seed(0)
    act = STAF()
    x, upstream = torch.randn(128, 256), torch.randn(128, 256)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = grads(act, x, upstream, lambda x, a: a(x))
        torch.set_num_threads(max(2, threads))
        multi = grads(act, x, upstream, lambda x, a: a(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single[0], multi[0])  # elementwise: identical
    for a, b in zip(single[1:], multi[1:]):  # sums over elements: order of float additions
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@requires_kernel
def test_kernel_propagates_nan_and_inf_like_torch_sin():
    act = STAF()
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4, -1e4, 88.8, 0.0])
    with torch.no_grad():
        out = act(x)
    assert out[:3].isnan().all() and out[3:].isfinite().all()


@requires_kernel
def test_kernel_skips_what_is_not_asked_for():
    act = STAF().requires_grad_(False)
    x = torch.randn(64, 32, requires_grad=True)
    act(x).sum().backward()  # frozen activation: input gradient only
    assert x.grad is not None and act.amplitude.grad is None
    with torch.inference_mode():
        assert act(torch.randn(8, 8)).shape == (8, 8)


def test_pytorch_path_serves_other_dtypes_and_the_switch():
    x = torch.randn(4, 5)
    assert not staf_kernel.supports(x.double(), 25) and not staf_kernel.supports(x.bfloat16(), 25)
    act = STAF(fused_cpu_kernel=False)
    with torch.no_grad():
        assert torch.allclose(act(x), reference(x, act), atol=1e-5)


def test_without_a_compiler_staf_warns_once_and_uses_pytorch(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("ACTLAB_CACHE_DIR", str(tmp_path))
    staf_kernel.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="fused CPU kernel unavailable"):
            assert staf_kernel.load() is None
        act = STAF()
        x = torch.randn(3, 9)
        assert not staf_kernel.supports(x, 25)
        with torch.no_grad():
            assert torch.allclose(act(x), reference(x, act), atol=1e-5)
    finally:
        staf_kernel.load.cache_clear()


@requires_kernel
def test_library_is_built_once_per_source_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTLAB_CACHE_DIR", str(tmp_path))
    staf_kernel.load.cache_clear()
    try:
        assert staf_kernel.load() is not None
        built = list(tmp_path.glob("staf_kernel-*.so"))
        assert len(built) == 1 and not list(tmp_path.glob("tmp*"))  # no half-written leftovers
        mtime = built[0].stat().st_mtime_ns
        staf_kernel.load.cache_clear()
        assert staf_kernel.load() is not None and built[0].stat().st_mtime_ns == mtime  # reused
    finally:
        staf_kernel.load.cache_clear()


@requires_kernel
def test_large_arguments_are_as_accurate_as_a_float32_argument_allows():
    act = STAF(tau=1)
    with torch.no_grad():
        act.amplitude.fill_(1.0), act.frequency.fill_(1.0), act.phase.fill_(0.0)
        x = torch.tensor([0.5, 3.0, 1e3, 12345.678, 1e5, 4e6])
        error = (act(x).double() - torch.sin(x.double())).abs()
        # W x + P is itself a float32 (relative rounding 6e-8): the angle is only known to ~|z| 1e-7
        assert (error <= 3e-7 * x.double().abs() + 1e-6).all(), error
        assert math.isfinite(act(torch.tensor([3e38])).item())
