/* CBAM inference in one kernel: chanattn's native fast path (see chanattn/native.py).

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

   Samples are split over n_threads threads (contiguous ranges): OpenMP's where built with
   -fopenmp, else POSIX threads started for the call. Every function returns 0 on
   success, else a negative code (see chanattn/native.py). No global state. */

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CHANATTN_CBAM_ABI 2

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

typedef struct {
    const cbam_args *a;
    long b0, b1;
    int status;
} cbam_job;

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

static void *run_job(void *arg) {
    cbam_job *job = (cbam_job *)arg;
    const cbam_args *a = job->a;
    const long C = a->channels, P = a->height * a->width, R = a->hidden;
    const long pad = a->wc ? a->kernel / 2 : 0;
    const long padded = (a->height + 2 * pad) * (a->width + 2 * pad);
    /* gates cg (C) and sg (P); fc2's transpose (R * C); then the larger of the channel stage's
       (4 C + 2 R) and the spatial stage's (2 P + 2 padded) work space */
    const long chan = 4 * C + 2 * R, spat = 2 * P + 2 * padded;
    const long need = C + P + R * C + (chan > spat ? chan : spat) + 16;
    float *scratch = (float *)malloc(sizeof(float) * (size_t)need);
    if (!scratch) {
        job->status = -1;
        return NULL;
    }
    float *cg = scratch, *sg = cg + C, *w2t = sg + P, *work = w2t + R * C;
    if (a->w1)
        for (long c = 0; c < C; ++c)
            for (long r = 0; r < R; ++r) w2t[r * C + c] = a->w2[c * R + r];
    for (long b = job->b0; b < job->b1; ++b) {
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
    free(scratch);
    job->status = 0;
    return NULL;
}

int chanattn_cbam_abi(void) { return CHANATTN_CBAM_ABI; }

/* The whole batch, split over up to n_threads threads (contiguous ranges of samples). bn: NULL
   (no BatchNorm) or {weight, bias, running mean, running var} of the 1-channel BN, weight and
   bias may be NULL (not affine). Returns 0, -1 (out of memory) or -2 (bad arguments). */
int chanattn_cbam_forward(const float *x, float *out, long batch, long channels, long height,
                          long width, const float *w1, const float *b1, const float *w2,
                          const float *b2, long hidden, const float *wc, long kernel,
                          const float *bn_weight, const float *bn_bias, const float *bn_mean,
                          const float *bn_var, double bn_eps, long n_threads) {
    if (!x || !out || batch < 0 || channels < 1 || height < 1 || width < 1) return -2;
    if (w1 && (!w2 || hidden < 1)) return -2;
    if (wc && (kernel < 1 || kernel % 2 == 0)) return -2;
    if ((bn_mean == NULL) != (bn_var == NULL)) return -2;
    /* as ATen's batch norm in eval mode: invstd in float, then alpha and beta */
    float alpha = 1.0f, beta = 0.0f;
    if (bn_mean) {
        const float invstd = 1.0f / sqrtf(bn_var[0] + (float)bn_eps);
        alpha = bn_weight ? invstd * bn_weight[0] : invstd;
        beta = (bn_bias ? bn_bias[0] : 0.0f) - bn_mean[0] * alpha;
    }
    cbam_args a = {x, out, batch, channels, height, width, w1, b1, w2, b2, hidden,
                   wc, kernel, alpha, beta};
    if (batch == 0) return 0;
    long t = n_threads < 1 ? 1 : n_threads;
    if (t > batch) t = batch;
    if (t > 256) t = 256;
    cbam_job jobs[256];
    for (long i = 0; i < t; ++i) {
        jobs[i].a = &a;
        jobs[i].b0 = batch * i / t;
        jobs[i].b1 = batch * (i + 1) / t;
        jobs[i].status = -1;
    }
#ifdef _OPENMP
    /* Built with -fopenmp: the process's OpenMP runtime, which in a process that imported torch
       is torch's own libgomp (the same soname, loaded first), so these are the threads that run
       ATen's parallel loops, already awake after the operation before. */
#pragma omp parallel for num_threads(t) schedule(static)
    for (long i = 0; i < t; ++i) run_job(&jobs[i]);
#else
    /* thread i > 0 in its own thread; where one cannot start, its range runs here */
    pthread_t threads[256];
    int started[256] = {0};
    for (long i = 1; i < t; ++i)
        started[i] = pthread_create(&threads[i], NULL, run_job, &jobs[i]) == 0;
    run_job(&jobs[0]);
    for (long i = 1; i < t; ++i) {
        if (started[i])
            pthread_join(threads[i], NULL);
        else
            run_job(&jobs[i]);
    }
#endif
    for (long i = 0; i < t; ++i)
        if (jobs[i].status != 0) return jobs[i].status;
    return 0;
}
