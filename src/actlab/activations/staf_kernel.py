"""The fused CPU kernel of STAF (``staf_kernel.c``): compiled on first use, called via ctypes.

The C file needs only a C compiler (``$CC`` or ``cc``, well under a second); the shared
library is cached per source, flags and CPU features in ``$ACTLAB_CACHE_DIR`` (default
``~/.cache/actlab``), written atomically so concurrent sweep jobs can share it. Without a
compiler :func:`load` warns once and returns ``None``, and STAF uses its PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("staf_kernel.c")
# Below this many (element x term) evaluations a second thread costs more than it saves.
_WORK_PER_THREAD = 100_000


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


def compile_flags(openmp: bool = True) -> list[str]:
    """Flags for this host: AVX2+FMA where the CPU has them (the file name keys on them, so
    hosts of a cluster sharing one home directory each load a library they can run)."""
    flags = ["-O3", "-std=c11", "-ffp-contract=fast", "-shared", "-fPIC"]
    if openmp:
        flags.append("-fopenmp")
    if platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= _cpu_flags():
        flags += ["-mavx2", "-mfma"]
    return flags


def _build(compiler: str, flags: list[str]) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, platform.machine(), *flags]).encode())
    target = cache_dir() / f"staf_kernel-{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            command = [compiler, *flags, str(SOURCE), "-o", str(built)]
            subprocess.run(command, check=True, capture_output=True, text=True)
            os.replace(built, target)
    return target


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernel library, or ``None`` (with one warning) when it cannot be built here.

    Built with OpenMP where the compiler has it (then it shares PyTorch's libgomp thread
    pool), else single-threaded."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    library, errors = None, []
    for openmp in (True, False):
        try:
            if compiler is None:
                raise OSError(f"no C compiler ({os.environ.get('CC', 'cc')!r}) on PATH")
            library = ctypes.CDLL(str(_build(compiler, compile_flags(openmp))))
            break
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(str(getattr(error, "stderr", None) or error).strip())
    if library is None:
        warnings.warn(f"STAF: fused CPU kernel unavailable, using the slower PyTorch path ({errors[-1]})", stacklevel=2)
        return None
    pointer, size, integer = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    library.staf_forward.argtypes = [pointer, size, pointer, pointer, pointer, integer, pointer, integer]
    # x, g, n, C, W, P, tau, grad_x, grad_C, grad_W, grad_P, threads
    library.staf_backward.argtypes = [pointer, pointer, size, *[pointer] * 3, integer, *[pointer] * 4, integer]
    library.staf_forward.restype = library.staf_backward.restype = library.staf_max_tau.restype = integer
    return library


@functools.cache
def _max_tau() -> int:
    return load().staf_max_tau()


def supports(x: torch.Tensor, tau: int) -> bool:
    """Whether the kernel can evaluate STAF on ``x`` (float32 on the CPU, tau within its limit)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.compiler.is_compiling():
        return False
    return load() is not None and tau <= _max_tau()


def _threads(elements: int, tau: int) -> int:
    return max(1, min(torch.get_num_threads(), elements * tau // _WORK_PER_THREAD))


def forward(x: torch.Tensor, amplitude: torch.Tensor, frequency: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """STAF of the contiguous float32 ``x`` (any shape)."""
    tau = amplitude.numel()
    y = torch.empty_like(x)
    params = amplitude.data_ptr(), frequency.data_ptr(), phase.data_ptr()
    status = load().staf_forward(x.data_ptr(), x.numel(), *params, tau, y.data_ptr(), _threads(x.numel(), tau))
    if status != 0:
        raise RuntimeError(f"staf_forward failed with status {status}")
    return y


def backward(
    x: torch.Tensor,
    grad: torch.Tensor,
    amplitude: torch.Tensor,
    frequency: torch.Tensor,
    phase: torch.Tensor,
    input_grad: bool,
    parameter_grads: bool,
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """``grad * dy/dx`` and the gradients of the amplitudes, frequencies and phases (summed
    over the elements in float64); each only if asked."""
    tau = amplitude.numel()
    grad_x = torch.empty_like(x) if input_grad else None
    grad_params = tuple(torch.empty(tau) for _ in range(3)) if parameter_grads else None
    params = amplitude.data_ptr(), frequency.data_ptr(), phase.data_ptr()
    outputs = [t.data_ptr() if t is not None else None for t in (grad_x, *(grad_params or (None,) * 3))]
    status = load().staf_backward(
        x.data_ptr(), grad.data_ptr(), x.numel(), *params, tau, *outputs, _threads(x.numel(), tau)
    )
    if status != 0:
        raise RuntimeError(f"staf_backward failed with status {status}")
    return grad_x, grad_params
