"""STAF's fused CPU kernel (the ``actlab::staf_*`` operators): the same function and gradients
as the float64 formula, on every shape and thread count; input checks; autograd, vmap and
torch.compile; and a clean fallback to the PyTorch path where it cannot be built.

Only a missing toolchain (no C++ compiler, no ninja) skips the kernel's tests; where both are
present a kernel that does not build fails them, with the compiler's output."""

import math
import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from actlab.activations import STAF, staf_kernel

MISSING_TOOLCHAIN = staf_kernel.missing_toolchain()


@pytest.fixture(scope="module")
def built_kernel() -> None:
    """The operators, built and loaded; a build that fails with the toolchain present fails the test."""
    if not staf_kernel.load():
        pytest.fail(f"STAF's kernel did not build (compiler and ninja present):\n{staf_kernel.build_error}")


def requires_kernel(test):
    """Skip where the toolchain is missing (the reason says which part); otherwise the kernel must build."""
    test = pytest.mark.usefixtures("built_kernel")(test)
    return pytest.mark.skipif(MISSING_TOOLCHAIN is not None, reason=f"STAF uses its PyTorch path: {MISSING_TOOLCHAIN}")(
        test
    )


def bare_env(**env: str) -> dict[str, str]:
    """A child process's environment: system PATH, the same actlab sources (PYTHONPATH), ``env``."""
    return {"PATH": "/usr/bin:/bin", **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}, **env}


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
    x = torch.randn(256, 96).t()  # non-contiguous view: STAF hands the operator a contiguous copy
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


def test_missing_toolchain_names_the_missing_part(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "my-c++").write_text("#!/bin/sh\n")
    (bin_dir / "my-c++").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert staf_kernel.missing_toolchain() == "no C++ compiler 'no-such-compiler' on PATH (set CXX or install g++)"
    monkeypatch.setenv("CXX", "my-c++ -v")  # a compiler command with arguments: its first word is the compiler
    assert staf_kernel.missing_toolchain() == "no ninja on PATH (pip install ninja)"
    (bin_dir / "ninja").write_text("#!/bin/sh\n")
    (bin_dir / "ninja").chmod(0o755)
    assert staf_kernel.missing_toolchain() is None


def test_without_a_compiler_staf_warns_once_and_uses_pytorch(tmp_path):
    # a fresh process: this one may already hold the built operators
    script = """
import warnings, torch
from actlab.activations import STAF, staf_kernel
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert staf_kernel.load() is False and staf_kernel.load() is False
messages = [str(w.message) for w in caught if "fused CPU kernel unavailable" in str(w.message)]
assert len(messages) == 1 and "no C++ compiler 'no-such-compiler'" in messages[0], messages
assert staf_kernel.build_error is None  # nothing was built: nothing failed
act = STAF()
x = torch.randn(3, 9)
assert not staf_kernel.supports(x, 25)
z = x.unsqueeze(-1) * act.frequency + act.phase
assert torch.allclose(act(x), (torch.sin(z) * act.amplitude).sum(-1), atol=1e-5)
"""
    env = bare_env(CXX="no-such-compiler", ACTLAB_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(MISSING_TOOLCHAIN is not None, reason=f"needs the toolchain: {MISSING_TOOLCHAIN}")
def test_a_failed_build_is_logged_once_and_staf_uses_pytorch(tmp_path):
    # a source that stops the compiler at its first line: the toolchain runs, the build fails in ms
    broken = tmp_path / "staf_kernel.cpp"
    broken.write_text("#error deliberately broken kernel source\n")
    script = f"""
import logging, warnings, torch
from pathlib import Path
from actlab.activations import STAF, staf_kernel
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("actlab.activations.staf_kernel").addHandler(handler)
staf_kernel.SOURCE = Path({str(broken)!r})
with warnings.catch_warnings():
    warnings.simplefilter("error")  # a build failure is logged, not a warning about missing tools
    assert staf_kernel.load() is False and staf_kernel.load() is False
assert len(records) == 1 and records[0].levelno == logging.ERROR, records
text = records[0].getMessage()
assert "failed to build" in text and "deliberately broken kernel source" in text, text
assert "deliberately broken kernel source" in staf_kernel.build_error
act, x = STAF(), torch.randn(3, 9)
assert not staf_kernel.supports(x, 25)
z = x.unsqueeze(-1) * act.frequency + act.phase
assert torch.allclose(act(x), (torch.sin(z) * act.amplitude).sum(-1), atol=1e-5)
"""
    env = bare_env(ACTLAB_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@requires_kernel
def test_operators_are_built_once_per_source_and_flags(tmp_path):
    script = "from actlab.activations import staf_kernel; assert staf_kernel.load()"
    env = bare_env(ACTLAB_CACHE_DIR=str(tmp_path))
    mtimes = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        (built,) = tmp_path.glob("staf_kernel-*/actlab_staf_kernel.so")
        mtimes.append(built.stat().st_mtime_ns)
    assert mtimes[0] == mtimes[1]  # the second process reused the first one's build


@requires_kernel
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, c, w, p: (x.double(), c, w, p), "x must be float32"),
        (lambda x, c, w, p: (x.t(), c, w, p), "x must be contiguous"),
        (lambda x, c, w, p: (x, c.half(), w, p), "amplitude must be float32"),
        (lambda x, c, w, p: (x, c, w[:3], p), "same length"),
        (lambda x, c, w, p: (x, c[None], w, p), "must be 1-D"),
        (lambda x, c, w, p: (x, *(torch.zeros(300) for _ in range(3))), "tau must be in 1..256"),
    ],
)
def test_operators_reject_bad_inputs_with_a_clear_error(change, message):
    act = STAF()
    args = change(torch.randn(16, 8), act.amplitude.detach(), act.frequency.detach(), act.phase.detach())
    with pytest.raises(RuntimeError, match=message):
        torch.ops.actlab.staf_forward(*args)


@requires_kernel
def test_operators_batch_under_vmap_one_member_per_staf():
    torch.manual_seed(0)
    members = [STAF() for _ in range(3)]
    params, buffers = stack_module_state(members)
    template = STAF().to("meta")
    x = torch.randn(3, 32, 16, requires_grad=True)
    y = vmap(lambda p, b, xs: functional_call(template, (p, b), (xs,)))(params, buffers, x)
    expected = torch.stack([m(x[i]) for i, m in enumerate(members)])
    assert torch.equal(y, expected)
    upstream = torch.randn_like(y)
    (grad_x, grad_c) = torch.autograd.grad((y * upstream).sum(), [x, params["amplitude"]])
    for i, member in enumerate(members):
        xi = x[i].detach().requires_grad_()
        (member(xi) * upstream[i]).sum().backward()
        assert torch.equal(grad_x[i], xi.grad) and torch.equal(grad_c[i], member.amplitude.grad)


@requires_kernel
def test_operators_work_under_torch_compile():
    torch.manual_seed(0)
    act = STAF()
    x = torch.randn(64, 48, requires_grad=True)
    compiled = torch.compile(act)
    y = compiled(x)
    (grad_compiled,) = torch.autograd.grad(y.sum(), x)
    (grad_eager,) = torch.autograd.grad(act(x).sum(), x)
    assert torch.equal(y, act(x)) and torch.equal(grad_compiled, grad_eager)


def test_pytorch_path_batches_under_vmap_too():
    torch.manual_seed(0)
    members = [STAF(fused_cpu_kernel=False) for _ in range(2)]
    params, buffers = stack_module_state(members)
    template = STAF(fused_cpu_kernel=False).to("meta")
    x = torch.randn(2, 8, 5)
    y = vmap(lambda p, b, xs: functional_call(template, (p, b), (xs,)))(params, buffers, x)
    assert torch.allclose(y, torch.stack([m(x[i]) for i, m in enumerate(members)]), atol=1e-6)


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
