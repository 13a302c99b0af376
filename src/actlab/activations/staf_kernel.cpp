/* Fused CPU kernel for STAF, y = sum_i C_i sin(W_i x + P_i), and its gradients, registered
 * as PyTorch operators `actlab::staf_forward` and `actlab::staf_backward` (CPU, float32).
 *
 * Why: evaluated with PyTorch ops, STAF materialises (n, tau) tensors of sin and cos of
 * every term per layer and step, so a tau=25 network spends most of its time in its
 * activations. Here each element's tau terms are summed in registers:
 *   forward:  y = sum_i C_i sin z_i                      (z_i = W_i x + P_i; sin only)
 *   backward: grad_x = g * sum_i C_i W_i cos z_i
 *             sums = (sum_n g sin z_i, sum_n g cos z_i, sum_n g x cos z_i) for every i
 * recomputing sin/cos in the backward pass (cheaper than storing n * tau values).
 *
 * sin/cos: the per-term constants are divided by pi once, so z / pi comes out of one
 * multiply-add; reduction to the nearest multiple of pi is then additions only, followed by
 * odd/even polynomials in the remainder. Absolute error ~2e-7 + |W x + P| * 2e-7: float32
 * rounding of the polynomial and of the argument itself (PyTorch's float32 W x + P carries
 * |z| * 6e-8). Meaningful while |W x + P| < 2^22, where float32 still resolves a period;
 * NaN and inf propagate as with torch.sin.
 *
 * GCC/Clang vector extensions give 8-wide SIMD (AVX2 with -mavx2, else pairs of SSE/NEON
 * registers). Threads come from OpenMP, the runtime PyTorch's CPU build already uses, with
 * at::get_num_threads() of them: the kernel runs on PyTorch's own thread pool instead of
 * fighting it for the cores. Built by torch.utils.cpp_extension (see staf_op.py), which
 * also registers the autograd formula, the fake (meta) implementation and the vmap rule.
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float vf __attribute__((vector_size(32)));
typedef int vi __attribute__((vector_size(32)));
#define LANES 8
#define MAX_TAU 256
/* backward works on blocks of this many vectors (4 arrays of them fit in L1); each block's
 * float sums go into doubles, which bounds their rounding error */
#define BLOCK 64

static const float INV_PI = 0.318309886f;
static const float ROUND_MAGIC = 12582912.0f; /* 1.5 * 2^23: (v + M) - M rounds v to an integer */
/* sin(pi f) = f * S(f^2) and cos(pi f) = C(f^2) on |f| <= 1/2 (least squares; max error 3e-9
 * and 5e-8 before float32 rounding) */
static const float S0 = 3.1415925798e+00f, S1 = -5.1677068660e+00f, S2 = 2.5500311899e+00f,
                   S3 = -5.9804417213e-01f, S4 = 7.7218342597e-02f;
static const float C0 = 9.9999995325e-01f, C1 = -4.9347928302e+00f, C2 = 4.0584113440e+00f,
                   C3 = -1.3318765017e+00f, C4 = 2.1968945940e-01f;

static inline vf splat(float a) {
    vf v = {a, a, a, a, a, a, a, a};
    return v;
}

/* u = z / pi = k + f with integer k and |f| <= 1/2, so sin z = (-1)^k sin(pi f) and
 * cos z = (-1)^k cos(pi f). Returns f and the sign bit of (-1)^k as an integer mask: k + M
 * holds k in its lowest mantissa bits, so the parity is bit 0 of the float's bits. Only
 * additions: the multiply-add units stay free for the polynomials. */
static inline vf reduce(vf u, vi *sign) {
    vf shifted = u + ROUND_MAGIC;
    *sign = (vi)shifted << 31;
    return u - (shifted - ROUND_MAGIC);
}

static inline vf flip(vf v, vi sign) { return (vf)((vi)v ^ sign); }

static inline vf sin_poly(vf f, vf f2) { return f * (S0 + f2 * (S1 + f2 * (S2 + f2 * (S3 + f2 * S4)))); }

static inline vf cos_poly(vf f2) { return C0 + f2 * (C1 + f2 * (C2 + f2 * (C3 + f2 * C4))); }

/* amp * sin(pi u) + acc, with amp folded into the polynomial's coefficients a[0..4] (one
 * multiply fewer per term: the sign goes onto f, and f * poly + acc is one multiply-add) */
static inline vf add_scaled_sin_pi(vf u, const vf *a, vf acc) {
    vi sign;
    vf f = reduce(u, &sign), f2 = f * f;
    return flip(f, sign) * (a[0] + f2 * (a[1] + f2 * (a[2] + f2 * (a[3] + f2 * a[4])))) + acc;
}

/* sin(pi u), cos(pi u) */
static inline void sincos_pi(vf u, vf *s, vf *c) {
    vi sign;
    vf f = reduce(u, &sign), f2 = f * f;
    *s = flip(sin_poly(f, f2), sign);
    *c = flip(cos_poly(f2), sign);
}

static inline float hsum(vf v) {
    float total = 0.0f;
    for (int l = 0; l < LANES; l++) total += v[l];
    return total;
}

static inline vf load8(const float *p, long remaining) {
    vf v = splat(0.0f);
    memcpy(&v, p, (size_t)(remaining >= LANES ? LANES : remaining) * sizeof(float));
    return v;
}

static inline void store8(float *p, vf v, long remaining) {
    memcpy(p, &v, (size_t)(remaining >= LANES ? LANES : remaining) * sizeof(float));
}

/* The calling thread's share [begin, end) of n elements, in whole vectors; returns its
 * index and stores the team size in *team (the runtime may grant fewer threads than asked). */
static int share(long n, long *begin, long *end, int *team) {
    int threads = 1, id = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads();
    id = omp_get_thread_num();
#endif
    if (id == 0) *team = threads;
    long per = ((n + threads - 1) / threads + LANES - 1) / LANES * LANES;
    *begin = id * per < n ? id * per : n;
    *end = (id + 1) * per < n ? (id + 1) * per : n;
    return id;
}

/* y[n] = sum_i C_i sin(W_i x + P_i). */
static int staf_forward_raw(const float *x, long n, const float *C, const float *W, const float *P, int tau, float *y,
                 int threads) {
    if (tau < 1 || tau > MAX_TAU || threads < 1) return -1;
#pragma omp parallel num_threads(threads)
    {
        vf w[MAX_TAU], p[MAX_TAU], scaled[MAX_TAU][5];
        for (int i = 0; i < tau; i++) {
            w[i] = splat(W[i] * INV_PI); /* terms in units of pi: z / pi = (W / pi) x + P / pi */
            p[i] = splat(P[i] * INV_PI);
            const float coefficients[5] = {S0, S1, S2, S3, S4};
            for (int k = 0; k < 5; k++) scaled[i][k] = splat(C[i] * coefficients[k]);
        }
        long begin, end;
        int team;
        share(n, &begin, &end, &team);
        /* two vectors per pass over the terms: two independent accumulation chains */
        for (long j = begin; j < end; j += 2 * LANES) {
            vf v0 = load8(x + j, end - j), v1 = j + LANES < end ? load8(x + j + LANES, end - j - LANES) : splat(0.0f);
            vf out0 = splat(0.0f), out1 = splat(0.0f);
            for (int i = 0; i < tau; i++) {
                out0 = add_scaled_sin_pi(w[i] * v0 + p[i], scaled[i], out0);
                out1 = add_scaled_sin_pi(w[i] * v1 + p[i], scaled[i], out1);
            }
            store8(y + j, out0, end - j);
            if (j + LANES < end) store8(y + j + LANES, out1, end - j - LANES);
        }
    }
    return 0;
}

/* grad_x[n] = g * dy/dx (skipped when NULL) and the parameter gradients (skipped when
 * grad_C is NULL): grad_C[i] = sum_n g sin z_i, grad_W[i] = C_i sum_n g x cos z_i and
 * grad_P[i] = C_i sum_n g cos z_i, summed in double. Blocks of BLOCK vectors stay in L1
 * while the term loop runs over them, so each term's three sums live in registers. */
static int staf_backward_raw(const float *x, const float *g, long n, const float *C, const float *W, const float *P, int tau,
                  float *grad_x, float *grad_C, float *grad_W, float *grad_P, int threads) {
    if (tau < 1 || tau > MAX_TAU || threads < 1) return -1;
    /* one row of partial sums per thread, added in thread order: deterministic results */
    const int sums = grad_C != NULL;
    double *partials = (double *)calloc((size_t)threads * 3 * tau, sizeof(double));
    if (!partials) return -2;
    int used = 1;
#pragma omp parallel num_threads(threads)
    {
        vf xs[BLOCK], gs[BLOCK], gxs[BLOCK], dydx[BLOCK];
        long begin, end;
        int id = share(n, &begin, &end, &used);
        double *partial = partials + (size_t)id * 3 * tau;
        for (long start = begin; start < end; start += BLOCK * LANES) {
            long stop = start + BLOCK * LANES < end ? start + BLOCK * LANES : end;
            int vectors = (int)((stop - start + 2 * LANES - 1) / (2 * LANES)) * 2; /* even, zero-padded */
            for (int v = 0; v < vectors; v++) {
                long j = start + (long)v * LANES;
                /* zero padding (g = 0 past the end): the tail adds nothing to the sums */
                xs[v] = j < stop ? load8(x + j, stop - j) : splat(0.0f);
                gs[v] = j < stop ? load8(g + j, stop - j) : splat(0.0f);
                gxs[v] = gs[v] * xs[v];
                dydx[v] = splat(0.0f);
            }
            for (int i = 0; i < tau; i++) {
                vf w = splat(W[i] * INV_PI), p = splat(P[i] * INV_PI), slope = splat(C[i] * W[i]), s, c;
                /* even and odd vectors in separate sums: two independent accumulation chains */
                vf acc_s0 = splat(0.0f), acc_c0 = splat(0.0f), acc_xc0 = splat(0.0f), s1, c1;
                vf acc_s1 = splat(0.0f), acc_c1 = splat(0.0f), acc_xc1 = splat(0.0f);
                for (int v = 0; v < vectors; v += 2) {
                    sincos_pi(w * xs[v] + p, &s, &c);
                    sincos_pi(w * xs[v + 1] + p, &s1, &c1);
                    dydx[v] += slope * c;
                    dydx[v + 1] += slope * c1;
                    acc_s0 += gs[v] * s;
                    acc_s1 += gs[v + 1] * s1;
                    acc_c0 += gs[v] * c;
                    acc_c1 += gs[v + 1] * c1;
                    acc_xc0 += gxs[v] * c;
                    acc_xc1 += gxs[v + 1] * c1;
                }
                partial[i] += hsum(acc_s0 + acc_s1);
                partial[tau + i] += hsum(acc_c0 + acc_c1);
                partial[2 * tau + i] += hsum(acc_xc0 + acc_xc1);
            }
            if (grad_x) {
                for (int v = 0; start + (long)v * LANES < stop; v++) {
                    long j = start + (long)v * LANES;
                    store8(grad_x + j, gs[v] * dydx[v], stop - j);
                }
            }
        }
    }
    if (sums) {
        for (int i = 0; i < tau; i++) {
            double sin_sum = 0.0, cos_sum = 0.0, x_cos_sum = 0.0;
            for (int t = 0; t < used; t++) {
                const double *partial = partials + (size_t)t * 3 * tau;
                sin_sum += partial[i];
                cos_sum += partial[tau + i];
                x_cos_sum += partial[2 * tau + i];
            }
            grad_C[i] = (float)sin_sum;
            grad_W[i] = (float)(C[i] * x_cos_sum);
            grad_P[i] = (float)(C[i] * cos_sum);
        }
    }
    free(partials);
    return 0;
}

/* ---- PyTorch operators: inputs checked here, so a wrong dtype, device, layout or size
 * raises a clear error instead of reaching the raw loops above. ---- */

/* Below this many (element x term) evaluations a second thread costs more than it saves. */
static const long WORK_PER_THREAD = 100000;

static int threads_for(long elements, long tau) {
    long wanted = elements * tau / WORK_PER_THREAD;
    long available = at::get_num_threads();
    return (int)(wanted < 1 ? 1 : (wanted < available ? wanted : available));
}

static void check_float32_cpu_contiguous(const at::Tensor &t, const char *name) {
    TORCH_CHECK(t.device().is_cpu(), "staf kernel: ", name, " must be on the CPU, got ", t.device());
    TORCH_CHECK(t.scalar_type() == at::kFloat, "staf kernel: ", name, " must be float32, got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "staf kernel: ", name, " must be contiguous");
}

static long check_parameters(const at::Tensor &amplitude, const at::Tensor &frequency, const at::Tensor &phase) {
    const at::Tensor *params[3] = {&amplitude, &frequency, &phase};
    const char *names[3] = {"amplitude", "frequency", "phase"};
    for (int k = 0; k < 3; k++) {
        check_float32_cpu_contiguous(*params[k], names[k]);
        TORCH_CHECK(params[k]->dim() == 1, "staf kernel: ", names[k], " must be 1-D (tau,), got shape ",
                    params[k]->sizes());
    }
    long tau = amplitude.numel();
    TORCH_CHECK(frequency.numel() == tau && phase.numel() == tau, "staf kernel: amplitude, frequency and phase ",
                "must have the same length, got ", tau, ", ", frequency.numel(), ", ", phase.numel());
    TORCH_CHECK(tau >= 1 && tau <= MAX_TAU, "staf kernel: tau must be in 1..", MAX_TAU, ", got ", tau);
    return tau;
}

static at::Tensor staf_forward(const at::Tensor &x, const at::Tensor &amplitude, const at::Tensor &frequency,
                               const at::Tensor &phase) {
    check_float32_cpu_contiguous(x, "x");
    long tau = check_parameters(amplitude, frequency, phase);
    at::Tensor y = at::empty_like(x);
    long n = x.numel();
    int status = staf_forward_raw(x.data_ptr<float>(), n, amplitude.data_ptr<float>(), frequency.data_ptr<float>(),
                                  phase.data_ptr<float>(), (int)tau, y.data_ptr<float>(), threads_for(n, tau));
    TORCH_CHECK(status == 0, "staf_forward failed with status ", status);
    return y;
}

/* (grad_x, grad_amplitude, grad_frequency, grad_phase); a gradient not asked for comes back
 * as an empty tensor. */
static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> staf_backward(
    const at::Tensor &grad, const at::Tensor &x, const at::Tensor &amplitude, const at::Tensor &frequency,
    const at::Tensor &phase, bool input_grad, bool parameter_grads) {
    check_float32_cpu_contiguous(x, "x");
    check_float32_cpu_contiguous(grad, "grad");
    TORCH_CHECK(grad.sizes() == x.sizes(), "staf kernel: grad shape ", grad.sizes(), " differs from x shape ",
                x.sizes());
    long tau = check_parameters(amplitude, frequency, phase);
    at::Tensor grad_x = input_grad ? at::empty_like(x) : at::empty({0}, x.options());
    at::Tensor grad_c = at::empty({parameter_grads ? tau : 0}, x.options());
    at::Tensor grad_w = at::empty({parameter_grads ? tau : 0}, x.options());
    at::Tensor grad_p = at::empty({parameter_grads ? tau : 0}, x.options());
    long n = x.numel();
    int status = staf_backward_raw(
        x.data_ptr<float>(), grad.data_ptr<float>(), n, amplitude.data_ptr<float>(), frequency.data_ptr<float>(),
        phase.data_ptr<float>(), (int)tau, input_grad ? grad_x.data_ptr<float>() : nullptr,
        parameter_grads ? grad_c.data_ptr<float>() : nullptr, parameter_grads ? grad_w.data_ptr<float>() : nullptr,
        parameter_grads ? grad_p.data_ptr<float>() : nullptr, threads_for(n, tau));
    TORCH_CHECK(status == 0, "staf_backward failed with status ", status);
    return {grad_x, grad_c, grad_w, grad_p};
}

TORCH_LIBRARY(actlab, m) {
    m.def("staf_forward(Tensor x, Tensor amplitude, Tensor frequency, Tensor phase) -> Tensor");
    m.def(
        "staf_backward(Tensor grad, Tensor x, Tensor amplitude, Tensor frequency, Tensor phase, bool input_grad, "
        "bool parameter_grads) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(actlab, CPU, m) {
    m.impl("staf_forward", &staf_forward);
    m.impl("staf_backward", &staf_backward);
}
