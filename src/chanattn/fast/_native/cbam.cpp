/* CBAM inference in one kernel: the custom operator chanattn::cbam_forward (see
   chanattn/fast/native.py, which builds this file with torch.utils.cpp_extension and registers the
   operator's fake implementation and FLOP formula).

   For each sample of a float32 NCHW tensor x (C channels, P = H * W positions):
     1. channel stage: avg[c], max[c] over the P positions (one read of the sample);
        cg = sigmoid(MLP(avg) + MLP(max)), MLP = fc2(relu(fc1(.)))  (C -> R -> C)
     2. spatial stage: mean and max over C of y = x * cg at every position (a second read),
        z = conv_KxK([mean; max]) with zero padding, no bias, then BatchNorm (eval mode, as
        z * alpha + beta), sg = sigmoid(z)
     3. out = (x * cg) * sg  (a third read, the only write)
   A sample is at most a few hundred KiB at the sizes CBAM sees, so the second and third reads come
   from the core's own cache: the tensor crosses the memory bus about once each way, as a copy
   does. Either stage may be switched off (CBAM's channel or spatial module alone).

   The arithmetic follows the plain formula of chanattn.modules.cbam (the products in the same
   order, NaN propagated by the maxima as torch.amax does); sums are accumulated in a different
   order than ATen's, so results agree to rounding, not bit for bit.

   Samples are split over ATen's intra-op threads (at::parallel_for: torch's own OpenMP pool,
   whatever runtime torch was built with), contiguous ranges of samples per thread. */

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

typedef struct {
    const float *x;
    float *out;
    long batch, channels, height, width;
    /* channel stage (w1 == NULL: off): fc1 (R, C) + b1 (R or NULL), fc2 (C, R) + b2 (C or NULL) */
    const float *w1, *b1, *w2, *b2;
    long hidden;
    /* spatial stage (wc == NULL: off): conv weight (2, K, K), then BN in eval mode as
       z * alpha + beta, alpha = weight / sqrt(var + eps), beta = bias - mean * alpha */
    const float *wc;
    long kernel;
    float alpha, beta;
} cbam_args;

static inline float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

/* 8 floats: the width of an AVX register; with narrower vector units the compiler splits it. */
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

static inline v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* elementwise max of a and b: b where b > a, so a NaN already in a stays */
static inline v8f max8(v8f a, v8f b) {
    const v8i k = b > a;
    return (v8f)(((v8i)b & k) | ((v8i)a & ~k));
}

static inline float hsum8(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

static inline float hmax8(v8f v) {
    float m = v[0];
    for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
    return m;
}

/* mean and max of row[0..n). The max propagates NaN: a NaN makes the sum NaN, and only then is
   the row searched for one, so the vector loop stays branch-free. */
static void mean_max(const float *row, long n, float *mean, float *max) {
    long i = 0;
    float s = 0.0f, m = -INFINITY;
    if (n >= 8) {
        v8f vs = load8(row), vm = vs;
        for (i = 8; i + 8 <= n; i += 8) {
            const v8f v = load8(row + i);
            vs += v;
            vm = max8(vm, v);
        }
        s = hsum8(vs);
        m = hmax8(vm);
    }
    for (; i < n; ++i) {
        s += row[i];
        m = row[i] > m ? row[i] : m;
    }
    if (s != s) {
        for (i = 0; i < n; ++i) {
            if (row[i] != row[i]) {
                m = row[i];
                break;
            }
        }
    }
    *mean = s / (float)n;
    *max = m;
}

/* cg = sigmoid(fc2(relu(fc1(avg))) + fc2(relu(fc1(max)))), the MLP shared by both descriptors.
   fc1 row by row (a dot product over C per hidden unit); fc2 from its transpose w2t (R, C), so
   that its loops also run along C. */
static void channel_gate(const cbam_args *a, const float *xs, const float *w2t, float *scratch,
                         float *cg) {
    const long C = a->channels, P = a->height * a->width, R = a->hidden;
    float *avg = scratch, *mx = avg + C, *sa = mx + C, *sm = sa + C, *ha = sm + C, *hm = ha + R;
    for (long c = 0; c < C; ++c) mean_max(xs + c * P, P, avg + c, mx + c);
    for (long r = 0; r < R; ++r) {
        const float *w = a->w1 + r * C;
        float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
        for (long c = 0; c < C; ++c) {
            s1 += w[c] * avg[c];
            s2 += w[c] * mx[c];
        }
        if (a->b1) {
            s1 += a->b1[r];
            s2 += a->b1[r];
        }
        ha[r] = s1 < 0.0f ? 0.0f : s1; /* relu; NaN stays NaN as in torch.relu */
        hm[r] = s2 < 0.0f ? 0.0f : s2;
    }
    for (long c = 0; c < C; ++c) sa[c] = sm[c] = 0.0f;
    for (long r = 0; r < R; ++r) {
        const float *w = w2t + r * C, h1 = ha[r], h2 = hm[r];
#pragma omp simd
        for (long c = 0; c < C; ++c) {
            sa[c] += w[c] * h1;
            sm[c] += w[c] * h2;
        }
    }
    for (long c = 0; c < C; ++c) {
        const float bias = a->b2 ? a->b2[c] : 0.0f;
        cg[c] = sigmoidf((sa[c] + bias) + (sm[c] + bias));
    }
}

/* sg[p] = sigmoid(alpha * conv([mean_C(y); max_C(y)])[p] + beta), y = x * cg (cg NULL: 1). */
static void spatial_gate(const cbam_args *a, const float *xs, const float *cg, float *scratch,
                         float *sg) {
    const long C = a->channels, H = a->height, W = a->width, P = H * W, K = a->kernel;
    const long pad = K / 2, HP = H + 2 * pad, WP = W + 2 * pad;
    float *sum = scratch, *mx = sum + P, *q = mx + P; /* q: the two padded maps, 2 x HP x WP */
    for (long c = 0; c < C; ++c) {
        const float *row = xs + c * P;
        const float g = cg ? cg[c] : 1.0f;
        if (c == 0) {
#pragma omp simd
            for (long p = 0; p < P; ++p) {
                const float v = cg ? row[p] * g : row[p];
                sum[p] = v;
                mx[p] = v;
            }
            continue;
        }
#pragma omp simd
        for (long p = 0; p < P; ++p) {
            const float v = cg ? row[p] * g : row[p];
            sum[p] += v;
            mx[p] = (v > mx[p] || v != v) ? v : mx[p];
        }
    }
    memset(q, 0, sizeof(float) * 2 * HP * WP);
    for (long h = 0; h < H; ++h) {
        float *qa = q + (h + pad) * WP + pad, *qm = q + HP * WP + (h + pad) * WP + pad;
        for (long w = 0; w < W; ++w) {
            qa[w] = sum[h * W + w] / (float)C;
            qm[w] = mx[h * W + w];
        }
    }
    for (long h = 0; h < H; ++h) {
        float *z = sg + h * W;
        for (long w = 0; w < W; ++w) z[w] = 0.0f;
        for (long ci = 0; ci < 2; ++ci) {
            for (long ky = 0; ky < K; ++ky) {
                const float *src = q + ci * HP * WP + (h + ky) * WP;
                const float *wk = a->wc + (ci * K + ky) * K;
                for (long kx = 0; kx < K; ++kx) {
                    const float wv = wk[kx];
                    const float *s = src + kx;
#pragma omp simd
                    for (long w = 0; w < W; ++w) z[w] += wv * s[w];
                }
            }
        }
        for (long w = 0; w < W; ++w) z[w] = sigmoidf(z[w] * a->alpha + a->beta);
    }
}

/* Samples [b0, b1), with scratch memory of their own. */
static void run_range(const cbam_args *a, long b0, long b1) {
    const long C = a->channels, P = a->height * a->width, R = a->hidden;
    const long pad = a->wc ? a->kernel / 2 : 0;
    const long padded = (a->height + 2 * pad) * (a->width + 2 * pad);
    /* gates cg (C) and sg (P); fc2's transpose (R * C); then the larger of the channel stage's
       (4 C + 2 R) and the spatial stage's (2 P + 2 padded) work space */
    const long chan = 4 * C + 2 * R, spat = 2 * P + 2 * padded;
    std::vector<float> buffer((size_t)(C + P + R * C + (chan > spat ? chan : spat) + 16));
    float *cg = buffer.data(), *sg = cg + C, *w2t = sg + P, *work = w2t + R * C;
    if (a->w1)
        for (long c = 0; c < C; ++c)
            for (long r = 0; r < R; ++r) w2t[r * C + c] = a->w2[c * R + r];
    for (long b = b0; b < b1; ++b) {
        const float *xs = a->x + b * C * P;
        float *os = a->out + b * C * P;
        if (a->w1) channel_gate(a, xs, w2t, work, cg);
        if (a->wc) spatial_gate(a, xs, a->w1 ? cg : NULL, work, sg);
        for (long c = 0; c < C; ++c) {
            const float *row = xs + c * P;
            float *o = os + c * P;
            if (a->w1 && a->wc) {
                const float g = cg[c];
#pragma omp simd
                for (long p = 0; p < P; ++p) o[p] = (row[p] * g) * sg[p];
            } else if (a->w1) {
                const float g = cg[c];
#pragma omp simd
                for (long p = 0; p < P; ++p) o[p] = row[p] * g;
            } else {
#pragma omp simd
                for (long p = 0; p < P; ++p) o[p] = row[p] * sg[p];
            }
        }
    }
}

/* ---- the operator ---------------------------------------------------------------------------- */

static const float *data_or_null(const c10::optional<at::Tensor> &t) {
    return t.has_value() ? t->data_ptr<float>() : nullptr;
}

static void check_param(const c10::optional<at::Tensor> &t, int64_t numel, const char *what) {
    if (!t.has_value()) return;
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu() && t->is_contiguous(),
                "chanattn::cbam_forward: ", what, " must be a contiguous float32 CPU tensor");
    TORCH_CHECK(t->numel() == numel, "chanattn::cbam_forward: ", what, " has ", t->numel(),
                " elements, expected ", numel);
}

/* out = CBAM(x) in inference. fc1_weight (R, C[, 1, 1]) with fc1_bias (R) or None, fc2_weight
   (C, R[, 1, 1]) with fc2_bias (C) or None: the channel stage (fc1_weight None: off); conv_weight
   (1, 2, K, K), K odd, no bias: the spatial stage (None: off); bn_*: the spatial stage's
   BatchNorm2d(1) in eval mode (bn_mean None: no BatchNorm; bn_weight, bn_bias None: not affine). */
static at::Tensor cbam_forward(const at::Tensor &x, const c10::optional<at::Tensor> &fc1_weight,
                               const c10::optional<at::Tensor> &fc1_bias,
                               const c10::optional<at::Tensor> &fc2_weight,
                               const c10::optional<at::Tensor> &fc2_bias,
                               const c10::optional<at::Tensor> &conv_weight,
                               const c10::optional<at::Tensor> &bn_weight,
                               const c10::optional<at::Tensor> &bn_bias,
                               const c10::optional<at::Tensor> &bn_mean,
                               const c10::optional<at::Tensor> &bn_var, double bn_eps) {
    TORCH_CHECK(x.dim() == 4, "chanattn::cbam_forward: x must be (B, C, H, W), got ", x.dim(), " dims");
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(),
                "chanattn::cbam_forward: x must be a contiguous (NCHW) float32 CPU tensor");
    const long B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    TORCH_CHECK(C >= 1 && H >= 1 && W >= 1, "chanattn::cbam_forward: empty channels or map");
    long R = 0, K = 0;
    if (fc1_weight.has_value()) {
        R = fc1_weight->size(0);
        TORCH_CHECK(R >= 1 && fc2_weight.has_value(), "chanattn::cbam_forward: fc1 without fc2");
        check_param(fc1_weight, R * C, "fc1_weight");
        check_param(fc2_weight, C * R, "fc2_weight");
        check_param(fc1_bias, R, "fc1_bias");
        check_param(fc2_bias, C, "fc2_bias");
    }
    if (conv_weight.has_value()) {
        K = conv_weight->size(-1);
        TORCH_CHECK(K % 2 == 1, "chanattn::cbam_forward: the kernel size must be odd, got ", K);
        check_param(conv_weight, 2 * K * K, "conv_weight");
    }
    TORCH_CHECK(bn_mean.has_value() == bn_var.has_value(),
                "chanattn::cbam_forward: bn_mean and bn_var go together");
    check_param(bn_weight, 1, "bn_weight");
    check_param(bn_bias, 1, "bn_bias");
    check_param(bn_mean, 1, "bn_mean");
    check_param(bn_var, 1, "bn_var");
    /* as ATen's batch norm in eval mode: invstd in float, then alpha and beta */
    float alpha = 1.0f, beta = 0.0f;
    if (bn_mean.has_value()) {
        const float invstd = 1.0f / sqrtf(*data_or_null(bn_var) + (float)bn_eps);
        alpha = bn_weight.has_value() ? invstd * *data_or_null(bn_weight) : invstd;
        beta = (bn_bias.has_value() ? *data_or_null(bn_bias) : 0.0f) - *data_or_null(bn_mean) * alpha;
    }
    at::Tensor out = at::empty_like(x);
    cbam_args a = {x.data_ptr<float>(), out.data_ptr<float>(), B, C, H, W,
                   fc1_weight.has_value() ? data_or_null(fc1_weight) : nullptr, data_or_null(fc1_bias),
                   data_or_null(fc2_weight), data_or_null(fc2_bias), R,
                   data_or_null(conv_weight), K, alpha, beta};
    if (!fc1_weight.has_value()) a.w2 = a.b1 = a.b2 = nullptr;
    /* one sample at least per task: a sample's three passes stay in one core's cache */
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) { run_range(&a, (long)b0, (long)b1); });
    return out;
}

TORCH_LIBRARY(chanattn, m) {
    m.def("cbam_forward(Tensor x, Tensor? fc1_weight, Tensor? fc1_bias, Tensor? fc2_weight, "
          "Tensor? fc2_bias, Tensor? conv_weight, Tensor? bn_weight, Tensor? bn_bias, "
          "Tensor? bn_mean, Tensor? bn_var, float bn_eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(chanattn, CPU, m) { m.impl("cbam_forward", &cbam_forward); }
