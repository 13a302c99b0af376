"""Adaptive and trainable activations: TeLU, trainable ELU, STAF, rational (PAU), B-spline
(KAN-style), Snake and the adaptive sigmoid. PReLU lives with the ReLU family.

Every trainable activation owns its parameters: SimpleNetwork builds one instance per layer,
so each layer learns its own shape (unless ``model.share_activation=true``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from actlab.activations import staf_kernel

# tanh(e^x) == 1 exactly in float32/float64 once x > 10 (1 - tanh(e^10) ~ 2e^-44052), so
# capping the exponent there changes no value yet keeps e^x and its gradient finite.
_TELU_EXP_CAP = 10.0


class TeLU(nn.Module):
    r"""TeLU (hyperbolic Tangent exponential Linear Unit), also published as TanhExp.

    .. math:: \text{TeLU}(x) = x \cdot \tanh(e^{x})

    No parameters. Written naively, :math:`e^{x}` overflows for :math:`x \gtrsim 88` in
    float32 and the gradient becomes ``inf * 0 = NaN``; here the exponent is capped where
    :math:`\tanh(e^x)` is already exactly 1, so values and gradients stay finite for every
    finite input.

    Shape: any. References: Fernandez & Mali, "Revisiting Activation Functions: Empirical
    Evaluation for Image Understanding and Classification" (TeLU), 2024; Liu & Di,
    "TanhExp: A Smooth Activation Function with High Convergence Speed", 2020.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(torch.exp(torch.clamp(x, max=_TELU_EXP_CAP)))


class TrainableELU(nn.Module):
    r"""ELU with a learned :math:`\alpha`: :math:`x` if :math:`x > 0` else :math:`\alpha (e^x - 1)`.

    This is what the textbook's code calls "TeLU"; the published TeLU is :class:`TeLU`.

    Args:
        alpha: initial :math:`\alpha` (a scalar parameter per instance, so per layer).

    Shape: any. Reference: Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep
    Network Learning by Exponential Linear Units (ELUs)", ICLR 2016 (with :math:`\alpha`
    made trainable, as in parametric ELU: Trottier et al., 2017).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exp only of the non-positive part: the unused branch must not overflow, or
        # torch.where's gradient turns 0 * inf into NaN.
        negative = self.alpha.to(x.dtype) * torch.expm1(torch.clamp(x, max=0.0))
        return torch.where(x > 0, x, negative)


class _STAFFunction(torch.autograd.Function):
    """y = sum_i C_i sin(W_i x + P_i), with sin/cos computed once and reductions as matvecs.

    The PyTorch path (GPUs, other dtypes, no compiler). Written in the ``setup_context``
    style with a generated vmap rule, so it also runs under ``torch.func.vmap``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, amplitude, frequency, phase):
        flat = x.reshape(-1, 1)
        z = torch.addcmul(phase, flat, frequency)  # (n, tau)
        sin_z, cos_z = torch.sin(z), torch.cos(z)
        return (sin_z @ amplitude).reshape(x.shape), sin_z, cos_z

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, amplitude, frequency, _ = inputs
        _, sin_z, cos_z = output
        ctx.mark_non_differentiable(sin_z, cos_z)
        ctx.save_for_backward(x, amplitude, frequency, sin_z, cos_z)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, _grad_sin, _grad_cos):
        x, amplitude, frequency, sin_z, cos_z = ctx.saved_tensors
        g = grad_output.reshape(-1)
        # d y / d z_i = C_i cos z_i; every parameter gradient is a matvec over the batch.
        grad_x = (cos_z @ (amplitude * frequency)) * g
        g_cos = g @ cos_z
        grad_amplitude = g @ sin_z
        grad_phase = amplitude * g_cos
        grad_frequency = amplitude * ((g * x.reshape(-1)) @ cos_z)
        return grad_x.reshape(grad_output.shape), grad_amplitude, grad_frequency, grad_phase


class STAF(nn.Module):
    r"""STAF, Sinusoidal Trainable Activation Function.

    .. math:: \rho(x) = \sum_{i=1}^{\tau} C_i \sin(\Omega_i x + \Phi_i)

    Trainable :math:`C, \Omega, \Phi \in \mathbb{R}^{\tau}` per instance (per layer),
    vectorised over the :math:`\tau` terms (no Python loop) with a fused backward.
    Initialisation follows the paper: :math:`\Omega_i \sim \omega_0 \, U(0, 1)`,
    :math:`\Phi_i \sim U(-\pi, \pi)`, :math:`C_i = \operatorname{sign}(L_i)\sqrt{|L_i|}` with
    :math:`L_i \sim \text{Laplace}(0, 1/(2\tau))`. The paper's :math:`\omega_0 = 30` suits
    implicit neural representations of images; classification wants low frequencies, so the
    default here is :math:`\omega_0 = 2`.

    On the CPU in float32 a fused kernel (the ``torch.ops.actlab.staf_forward`` operator of
    ``staf_kernel.cpp``, built on first use) sums the terms in registers, ~5x faster than
    the PyTorch path, which serves every other device and dtype (and
    ``fused_cpu_kernel=False``); both agree to float32 rounding, and both work under
    autograd, ``torch.compile`` and ``torch.func.vmap``.

    Args:
        tau: number of sinusoidal terms (25 as in the textbook).
        omega_0: frequency scale of the initialisation.
        fused_cpu_kernel: use the fused kernel where it applies.

    Shape: any. Reference: Morsali et al., "STAF: Sinusoidal Trainable Activation Functions
    for Implicit Neural Representation", 2025 (arXiv:2502.00869).
    """

    def __init__(self, tau: int = 25, omega_0: float = 2.0, fused_cpu_kernel: bool = True) -> None:
        super().__init__()
        if tau < 1:
            raise ValueError(f"STAF needs tau >= 1 terms, got {tau}")
        self.tau, self.omega_0, self.fused_cpu_kernel = tau, omega_0, fused_cpu_kernel
        laplace = torch.distributions.Laplace(0.0, 1.0 / (2 * tau)).sample((tau,))
        self.amplitude = nn.Parameter(torch.sign(laplace) * laplace.abs().sqrt())
        self.frequency = nn.Parameter(omega_0 * torch.rand(tau))
        self.phase = nn.Parameter(math.pi * (2 * torch.rand(tau) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        params = self.amplitude.to(dtype), self.frequency.to(dtype), self.phase.to(dtype)
        if self.fused_cpu_kernel and staf_kernel.supports(x, self.tau):
            return staf_kernel.staf(x, *params)
        return _STAFFunction.apply(x, *params)[0]

    def extra_repr(self) -> str:
        return f"tau={self.tau}, omega_0={self.omega_0}"


# Least-squares fit of the safe PAU form to LeakyReLU(0.01) on [-3, 3] (max error 0.041),
# the initialisation the PAU paper recommends; tests/test_activations.py checks the fit.
_RATIONAL_LEAKY_RELU_5_4 = (
    (0.0405047, 0.5309318, 1.5050107, 1.6245253, 0.6865772, 0.1045186),
    (0.2080321, -2.9651219, -0.1162220, -0.1889291),
)


class Rational(nn.Module):
    r"""Safe Padé Activation Unit (PAU): a learned rational function.

    .. math:: R(x) = \frac{\sum_{j=0}^{m} a_j x^j}{1 + \sum_{k=1}^{n} |b_k| \, |x|^k}

    The absolute values keep the denominator :math:`\ge 1`, so there are no poles.
    Degrees :math:`(m, n) = (5, 4)`, initialised to approximate LeakyReLU as in the paper.

    Shape: any. Reference: Molina, Schramowski & Kersting, "Padé Activation Units:
    End-to-end Learning of Flexible Activation Functions in Deep Networks", ICLR 2020.
    """

    def __init__(self, init: str = "leaky_relu") -> None:
        super().__init__()
        if init != "leaky_relu":
            raise ValueError(f"unknown Rational init {init!r}; choose one of: leaky_relu")
        numerator, denominator = _RATIONAL_LEAKY_RELU_5_4
        self.numerator = nn.Parameter(torch.tensor(numerator))
        self.denominator = nn.Parameter(torch.tensor(denominator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.numerator.to(x.dtype), self.denominator.abs().to(x.dtype)
        p = a[-1].expand_as(x)
        for coefficient in a.flip(0)[1:]:  # Horner
            p = p * x + coefficient
        ax = x.abs()
        q = b[-1] * ax
        for coefficient in b.flip(0)[1:]:
            q = (q + coefficient) * ax
        return p / (1 + q)

    def extra_repr(self) -> str:
        return f"degrees=({len(self.numerator) - 1}, {len(self.denominator)})"


def _cubic_weights(u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """6x the four uniform cubic B-spline bases that are non-zero at position u in [0, 1)."""
    u2, u3 = u * u, u * u * u
    return (1 - u) ** 3, 3 * u3 - 6 * u2 + 4, -3 * u3 + 3 * u2 + 3 * u + 1, u3


def _cubic_weight_slopes(u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """d/du of :func:`_cubic_weights`."""
    u2 = u * u
    return -3 * (1 - u) ** 2, 9 * u2 - 12 * u, -9 * u2 + 6 * u + 3, 3 * u2


class _UniformCubicSpline(torch.autograd.Function):
    """sum_i c_i B_i(x) on a uniform knot grid starting at ``first_knot``, ``scale`` intervals
    per unit. Interval m of the grid meets bases m-3..m; with c padded by three zeros on each
    side (the bases that do not exist at the ends) they are c_pad[m + j], j = 0..3. Gathering
    those four beats both the full Cox-de Boor basis and autograd's scatter for indexing.
    Written in the ``setup_context`` style with a generated vmap rule (packed sweeps stack one
    spline per member)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, coefficients, first_knot, scale):
        intervals = coefficients.shape[-1] + 3
        position = (x - first_knot) * scale
        interval = torch.floor(position)
        u = position - interval
        inside = (interval >= 0) & (interval < intervals)  # False for NaN too
        index = torch.where(inside, interval, 0).long()
        padded = F.pad(coefficients, (3, 3))
        spline = sum(padded[index + j] * w for j, w in enumerate(_cubic_weights(u))) / 6
        return torch.where(inside, spline, 0.0), u, index, inside, padded

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, u, index, inside, padded = output
        ctx.mark_non_differentiable(u, index, inside, padded)
        ctx.save_for_backward(u, index, inside, padded)
        ctx.scale = inputs[3]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output, *_unused):
        u, index, inside, padded = ctx.saved_tensors
        # under CUDA autocast the incoming gradient can be float32 while x and c are bfloat16:
        # sum in the wider of the two, return each gradient in its input's dtype
        g = torch.where(inside, grad_output, 0.0) / 6
        grad_x = grad_coefficients = None
        if ctx.needs_input_grad[0]:
            slope = sum(padded[index + j] * w for j, w in enumerate(_cubic_weight_slopes(u)))
            grad_x = (g * slope * ctx.scale).to(u.dtype)
        if ctx.needs_input_grad[1]:
            flat_index = torch.cat([(index + j).reshape(-1) for j in range(4)])
            contributions = torch.cat([(g * w).reshape(-1) for w in _cubic_weights(u)])
            total = torch.promote_types(contributions.dtype, padded.dtype)
            grad_padded = torch.zeros_like(padded, dtype=total).index_add(0, flat_index, contributions.to(total))
            grad_coefficients = grad_padded[3:-3].to(padded.dtype)
        return grad_x, grad_coefficients, None, None


class BSpline(nn.Module):
    r"""Learnable cubic B-spline plus a SiLU base, the univariate function of a KAN edge.

    .. math:: \phi(x) = w_b \, \text{SiLU}(x) + w_s \sum_i c_i B_i(x)

    :math:`B_i` are the cubic B-spline bases on a uniform grid of ``grid_size`` intervals
    over ``[-grid_range, grid_range]`` (extended by 3 knots each side). :meth:`basis` gives
    all of them by the Cox–de Boor recursion; the forward pass uses that on a uniform grid
    only four are non-zero at any x, with the closed-form weights
    :math:`((1-u)^3,\ 3u^3-6u^2+4,\ -3u^3+3u^2+3u+1,\ u^3)/6` of the position u in its
    knot interval: the same function, ~5x cheaper. Outside the grid the spline is 0 and
    :math:`\phi` is the SiLU term. Trainable: :math:`c` (``grid_size + 3`` coefficients),
    :math:`w_b`, :math:`w_s`, per instance.

    Shape: any. Reference: Liu et al., "KAN: Kolmogorov-Arnold Networks", 2024
    (arXiv:2404.19756); de Boor, "On calculating with B-splines", 1972.
    """

    order = 3

    def __init__(self, grid_size: int = 8, grid_range: float = 3.0, init_scale: float = 0.1) -> None:
        super().__init__()
        if grid_size < 1 or grid_range <= 0:
            raise ValueError(f"BSpline needs grid_size >= 1 and grid_range > 0, got {grid_size}, {grid_range}")
        self.grid_size, self.grid_range = grid_size, grid_range
        h = 2 * grid_range / grid_size
        knots = -grid_range + h * torch.arange(-self.order, grid_size + self.order + 1)
        self.register_buffer("knots", knots)
        self.coefficients = nn.Parameter(init_scale * torch.randn(grid_size + self.order))
        self.base_weight = nn.Parameter(torch.tensor(1.0))
        self.spline_weight = nn.Parameter(torch.tensor(1.0))

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """The ``grid_size + 3`` cubic basis functions at ``x``: shape ``x.shape + (G + 3,)``."""
        t = self.knots.to(x.dtype)
        x = x.unsqueeze(-1)
        bases = ((x >= t[:-1]) & (x < t[1:])).to(x.dtype)
        for p in range(1, self.order + 1):
            left = (x - t[: -(p + 1)]) / (t[p:-1] - t[: -(p + 1)]) * bases[..., :-1]
            right = (t[p + 1 :] - x) / (t[p + 1 :] - t[1:-p]) * bases[..., 1:]
            bases = left + right
        return bases

    def spline(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_i c_i B_i(x)` from the four bases that are non-zero at each x."""
        scale = self.grid_size / (2 * self.grid_range)  # knot intervals per unit of x
        first_knot = -self.grid_range - self.order / scale  # knots[0], without a device sync
        return _UniformCubicSpline.apply(x, self.coefficients.to(x.dtype), first_knot, scale)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_weight.to(x.dtype) * F.silu(x) + self.spline_weight.to(x.dtype) * self.spline(x)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, grid_range={self.grid_range}, order={self.order}"


class Snake(nn.Module):
    r"""Snake: :math:`x + \frac{1}{a}\sin^2(a x)` with trainable frequency :math:`a`.

    A small constant keeps :math:`1/a` finite if :math:`a` is driven to zero.

    Args:
        a: initial frequency. trainable: learn ``a`` (per instance, so per layer).

    Shape: any. Reference: Liu Ziyin, Hartwig & Ueda, "Neural Networks Fail to Learn
    Periodic Functions and How to Fix It", NeurIPS 2020.
    """

    def __init__(self, a: float = 1.0, trainable: bool = True) -> None:
        super().__init__()
        a_tensor = torch.tensor(float(a))
        self.trainable = trainable
        if trainable:
            self.a = nn.Parameter(a_tensor)
        else:
            self.register_buffer("a", a_tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a.to(x.dtype)
        return x + torch.sin(a * x).pow(2) / (a + 1e-9)

    def extra_repr(self) -> str:
        return f"a={float(self.a.detach()):.4g}, trainable={self.trainable}"


class AdaptiveSigmoid(nn.Module):
    r"""Sigmoid with trainable slope and centre: :math:`1 / (1 + e^{-k (x - \theta)})`.

    Args:
        k: initial slope. theta: initial centre. Both scalars per instance (per layer).

    Shape: any. Reference: Chen & Chang, "A feedforward neural network with function
    shape autotuning", Neural Networks, 1996 (adaptive sigmoid slope/offset).
    """

    def __init__(self, k: float = 1.0, theta: float = 0.0) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k)))
        self.theta = nn.Parameter(torch.tensor(float(theta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.k.to(x.dtype) * (x - self.theta.to(x.dtype)))
