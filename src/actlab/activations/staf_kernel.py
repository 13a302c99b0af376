"""STAF's fused CPU kernel as PyTorch operators: ``torch.ops.actlab.staf_forward`` and
``torch.ops.actlab.staf_backward``, defined in ``staf_kernel.cpp``.

The C++ file is built by ``torch.utils.cpp_extension`` on first use (a C++ compiler and
``ninja`` are needed; the build takes a minute once and is cached per source, flags and
CPU features in ``$ACTLAB_CACHE_DIR``, default ``~/.cache/actlab``). The operators check
dtype, device, layout and sizes themselves (``TORCH_CHECK``); this module registers what
makes them compose with the rest of PyTorch:

- an autograd formula (``register_autograd``): the backward operator;
- fake implementations (``register_fake``), so ``torch.compile`` traces through them;
- vmap rules (``register_vmap``): a batch of members (a packed sweep's stacked STAFs)
  runs as one kernel call per member, each with its own parameters.

Without a C++ compiler or ``ninja`` :func:`load` warns once and returns False, and STAF uses
its PyTorch path; where both are present but the build fails, it logs the build error once and
does the same (:func:`missing_toolchain` tells the two apart: only the first is expected).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("staf_kernel.cpp")
MAX_TAU = 256  # the kernel keeps each term's constants in registers: MAX_TAU in staf_kernel.cpp


def cache_dir() -> Path:
    if os.environ.get("ACTLAB_CACHE_DIR"):
        return Path(os.environ["ACTLAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "actlab"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def compile_flags() -> list[str]:
    """Flags for this host: AVX2+FMA where the CPU has them (the build folder keys on them, so
    hosts of a cluster sharing one home directory each load a library they can run)."""
    flags = ["-O3", "-ffp-contract=fast", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= _cpu_flags():
        flags += ["-mavx2", "-mfma"]
    return flags


def _build_directory(flags: list[str]) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([torch.__version__, platform.machine(), *flags]).encode())
    directory = cache_dir() / f"staf_kernel-{key.hexdigest()[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def missing_toolchain() -> str | None:
    """What the build needs and this machine lacks ("no C++ compiler 'c++'", "no ninja"), or
    None where both are present (a build that then fails is a bug, not a missing tool)."""
    compiler = os.environ.get("CXX", "c++")  # what torch.utils.cpp_extension builds with
    if not shlex.split(compiler) or shutil.which(shlex.split(compiler)[0]) is None:
        return f"no C++ compiler {compiler!r} on PATH (set CXX or install g++)"
    if shutil.which("ninja") is None:
        return "no ninja on PATH (pip install ninja)"
    return None


_available: bool | None = None  # what load() found; read directly where torch.compile traces
build_error: str | None = None  # why the build failed where the toolchain is present (see load())
log = logging.getLogger(__name__)


@functools.cache
def load() -> bool:
    """Build (once) and load the operators. False where that cannot be done: with one warning
    where the toolchain is missing, with the build error logged once where the build fails."""
    global _available, build_error
    missing = missing_toolchain()
    if missing is not None:
        warnings.warn(f"STAF: fused CPU kernel unavailable, using the slower PyTorch path ({missing})", stacklevel=2)
        _available = False
        return False
    # importing cpp_extension on a machine without CUDA logs a warning that concerns CUDA builds only
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        flags = compile_flags()
        cpp_extension.load(
            name="actlab_staf_kernel",
            sources=[str(SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(_build_directory(flags)),
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # the toolchain is there and the build failed: the PyTorch path, said loudly
        build_error = f"{type(error).__name__}: {error}"
        log.error("STAF: fused CPU kernel failed to build, using the slower PyTorch path\n%s", build_error)
        _available = False
        return False
    _register_python_parts()
    _available = True
    return True


def supports(x: torch.Tensor, tau: int) -> bool:
    """Whether the kernel can evaluate STAF on ``x`` (float32 on the CPU, tau within its limit)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or tau > MAX_TAU:
        return False
    return _available if _available is not None else load()


def staf(x: torch.Tensor, amplitude: torch.Tensor, frequency: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """sum_i C_i sin(W_i x + P_i) on the kernel, differentiable in all four inputs."""
    return torch.ops.actlab.staf_forward(
        x.contiguous(), amplitude.contiguous(), frequency.contiguous(), phase.contiguous()
    )


@functools.cache  # once per process, however often load() is retried
def _register_python_parts() -> None:
    forward, backward = "actlab::staf_forward", "actlab::staf_backward"

    @torch.library.register_fake(forward)
    def _(x, amplitude, frequency, phase):
        return torch.empty_like(x)

    @torch.library.register_fake(backward)
    def _(grad, x, amplitude, frequency, phase, input_grad, parameter_grads):
        tau = amplitude.shape[0] if parameter_grads else 0
        grad_x = torch.empty_like(x) if input_grad else x.new_empty(0)
        return grad_x, x.new_empty(tau), x.new_empty(tau), x.new_empty(tau)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward_formula(ctx, grad):
        x, amplitude, frequency, phase = ctx.saved_tensors
        need_x, need_params = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:])
        grad_x, *grad_params = torch.ops.actlab.staf_backward(
            grad.contiguous(), x, amplitude, frequency, phase, need_x, need_params
        )
        return (grad_x if need_x else None), *(grad_params if need_params else (None, None, None))

    torch.library.register_autograd(forward, backward_formula, setup_context=setup_context)
    torch.library.register_vmap(forward, _per_member(torch.ops.actlab.staf_forward, tensors=4))
    torch.library.register_vmap(backward, _per_member(torch.ops.actlab.staf_backward, tensors=5))


def _per_member(op, tensors: int):
    """A vmap rule that runs ``op`` once per member of the batch (each on contiguous slices)
    and stacks the results along dim 0: members have their own parameters, so there is no
    single kernel call to batch into, and one call per member keeps the fused speed."""

    def rule(info, in_dims, *args):
        def member(i: int) -> list:
            return [
                arg.select(dim, i).contiguous() if dim is not None else arg
                for arg, dim in zip(args[:tensors], in_dims[:tensors])
            ] + list(args[tensors:])

        results = [op(*member(i)) for i in range(info.batch_size)]
        if isinstance(results[0], torch.Tensor):
            return torch.stack(results), 0
        stacked = tuple(torch.stack(parts) for parts in zip(*results))
        return stacked, (0,) * len(stacked)

    return rule
