/* MoEpic CPU kernels: weight-only matrix-vector products that read weights at memory speed.
 *
 * Shapes: T tokens, H hidden, S neurons per expert chunk (32, or the whole expert when I % 32 != 0),
 * N x K a matrix (N outputs of K inputs). moepic_core/quant.py writes the formats and documents
 * them; in short:
 *   F32, BF16, F16  rows of values, row after row;
 *   Q8, Q4          groups of 8 rows; per group and block of 32 columns: the 8 rows' fp16 scales,
 *                   then their codes interleaved 4 columns at a time, so that vector lane r holds
 *                   row r and no horizontal sums are needed (Q8: 8 slices of 32 bytes, slice g =
 *                   rows x columns 4g..4g+3; Q4: 4 slices, slice p = rows x columns 8p+j in the low
 *                   nibble and 8p+4+j in the high one, codes + 8). Content = llama.cpp's Q8_0/Q4_0.
 * Expert chunk (one contiguous byte range): gate [S, H], up [S, H], down [H, S] matrices. A segment
 * is a run of chunks; y[t] += down . act(gate x[t], up x[t]) for its neurons only, so segments add
 * up to the expert's output exactly.
 * Quantized formats multiply with activations quantized the same way (int8, fp32 scale absmax/127
 * per block of 32: x per block of H, the chunk's activations per chunk), integer products within a
 * block: llama.cpp's Q4_0 x Q8_0 scheme. kernels.py has the torch path with the same numbers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MOEPIC_AVX2 1
#endif

enum { FMT_F32 = 0, FMT_BF16 = 1, FMT_F16 = 2, FMT_Q8 = 3, FMT_Q4 = 4 };
enum { ACT_SILU = 0, ACT_GELU_TANH = 1, ACT_CLAMPED_SWIGLU = 2 };
#define QB 32 /* values per quantization block */
#define RG 8  /* rows per interleaved group */
#define INLINE static inline __attribute__((always_inline))

int moepic_abi_version(void) { return 5; }

int moepic_has_avx2(void) {
#ifdef MOEPIC_AVX2
    return 1;
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------- scalars and geometry */
static inline float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float f16_to_f32(uint16_t h) {
#ifdef MOEPIC_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000 | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

static inline int is_quant(int fmt) { return fmt == FMT_Q8 || fmt == FMT_Q4; }

/* bytes of one row of n values (codes and scales) */
static inline int64_t row_bytes(int fmt, int64_t n) {
    switch (fmt) {
        case FMT_F32: return 4 * n;
        case FMT_BF16:
        case FMT_F16: return 2 * n;
        case FMT_Q8: return n + (n / QB) * 2;
        default: return n / 2 + (n / QB) * 2;
    }
}

/* bytes of one (row group, block) of a quantized matrix: 8 scales, then the codes */
static inline int64_t group_block_bytes(int fmt) { return 16 + (fmt == FMT_Q8 ? 256 : 128); }

int64_t moepic_chunk_bytes(int fmt, int64_t S, int64_t H) { return 2 * S * row_bytes(fmt, H) + H * row_bytes(fmt, S); }

static inline float fvalue(int fmt, const uint8_t *row, int64_t j) {
    if (fmt == FMT_F32) return ((const float *)row)[j];
    uint16_t h = ((const uint16_t *)row)[j];
    return fmt == FMT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

/* ---------------------------------------------------------------- activations */
/* An activation vector of n values as a matrix of format fmt multiplies with it. */
typedef struct {
    const float *x;  /* float formats: the values */
    int8_t *q;       /* quantized formats: int8 codes [n], */
    float *d;        /* fp32 scale per block [n/32], */
    int32_t *sum;    /* and the sum of each block's codes [n/32] (for Q4's + 8 offset) */
} Vec;

/* x [n] -> codes, one scale per block of 32 (absmax / 127), block sums; rounds half to even. */
static void quantize_vec(const float *x, int64_t n, Vec *v) {
    for (int64_t b = 0; b < n / QB; b++) {
        const float *xb = x + b * QB;
        float amax = 0.f;
        for (int j = 0; j < QB; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float s = amax / 127.f, inv = s > 0.f ? 1.f / s : 0.f;
        int32_t sum = 0;
        for (int j = 0; j < QB; j++) {
            int8_t q = (int8_t)nearbyintf(xb[j] * inv);
            v->q[b * QB + j] = q;
            sum += q;
        }
        v->d[b] = s;
        v->sum[b] = sum;
    }
}

/* Room for one quantized vector of n values. */
static int vec_alloc(Vec *v, int64_t n) {
    v->x = NULL;
    v->q = (int8_t *)malloc((size_t)n + 32);
    v->d = (float *)malloc(sizeof(float) * (size_t)(n / QB + 1));
    v->sum = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n / QB + 1));
    return v->q && v->d && v->sum ? 0 : -1;
}

static void vec_free(Vec *v) {
    free(v->q);
    free(v->d);
    free(v->sum);
}

/* ---------------------------------------------------------------- AVX2 helpers */
#ifdef MOEPIC_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE __m256 load8(int fmt, const uint8_t *p) {
    if (fmt == FMT_F32) return _mm256_loadu_ps((const float *)p);
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    if (fmt == FMT_F16) return _mm256_cvtph_ps(v);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

/* 8 vectors -> one vector whose lane k is the sum of v[k]'s lanes */
static inline __m256 reduce8_ps(const __m256 *v) {
    __m256 ab = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    __m256 cd = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(ab, cd, 0x20), _mm256_permute2f128_ps(ab, cd, 0x31));
}

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
#endif

/* ---------------------------------------------------------------- matrix-vector products */
/* out[r] (+)= row r . v for the 8 rows of group `grp` of a quantized matrix with nb blocks a row. */
INLINE void qgroup(const int fmt, const uint8_t *grp, int64_t nb, const Vec *v, float *out, int add) {
    const int64_t gbb = group_block_bytes(fmt);
#ifdef MOEPIC_AVX2
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + b * gbb;
        const int8_t *xq = v->q + b * QB;
        __m256i isum;
        if (fmt == FMT_Q4) { /* codes 0..15 (u8) x activations (s8); at most 8 * 2 * 15 * 127 < 2^15 */
            __m256i s16 = _mm256_setzero_si256();
            for (int p = 0; p < 4; p++) {
                __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * p));
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(w, low), bcast4(xq + 8 * p)));
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), low),
                                                                 bcast4(xq + 8 * p + 4)));
            }
            isum = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(8 * v->sum[b]));
        } else {
            isum = _mm256_setzero_si256();
            for (int g = 0; g < 8; g++) {
                __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * g));
                __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(bcast4(xq + 4 * g), w));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
            }
        }
        __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk)), _mm256_set1_ps(v->d[b]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
    }
    if (add) acc = _mm256_add_ps(acc, _mm256_loadu_ps(out));
    _mm256_storeu_ps(out, acc);
#else
    float acc[RG] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + b * gbb;
        const uint16_t *sc = (const uint16_t *)blk;
        for (int r = 0; r < RG; r++) {
            int32_t s = 0;
            for (int k = 0; k < QB; k++) {
                int code;
                if (fmt == FMT_Q8) {
                    code = ((const int8_t *)(blk + 16))[(k / 4) * 32 + r * 4 + k % 4];
                } else {
                    uint8_t byte = blk[16 + (k / 8) * 32 + r * 4 + k % 4];
                    code = ((k % 8) < 4 ? byte & 15 : byte >> 4) - 8;
                }
                s += code * v->q[b * QB + k];
            }
            acc[r] += (float)s * (f16_to_f32(sc[r]) * v->d[b]);
        }
    }
    for (int r = 0; r < RG; r++) out[r] = add ? out[r] + acc[r] : acc[r];
#endif
}

/* row r . x for a float matrix */
INLINE float fdot(const int fmt, const uint8_t *row, int64_t n, const float *x) {
    float acc = 0.f;
    int64_t j = 0;
#ifdef MOEPIC_AVX2
    const int64_t item = fmt == FMT_F32 ? 4 : 2;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= n; j += 16) {
        a0 = _mm256_fmadd_ps(load8(fmt, row + j * item), _mm256_loadu_ps(x + j), a0);
        a1 = _mm256_fmadd_ps(load8(fmt, row + (j + 8) * item), _mm256_loadu_ps(x + j + 8), a1);
    }
    acc = hsum8(_mm256_add_ps(a0, a1));
#endif
    for (; j < n; j++) acc += fvalue(fmt, row, j) * x[j];
    return acc;
}

/* out[r..r+4) (+)= rows r..r+3 . x for a float matrix: four rows in flight hide memory latency */
INLINE void fdot4(const int fmt, const uint8_t *m, int64_t rb, int64_t n, const float *x, float *out, int add) {
    int64_t j = 0;
    float s[4] = {0.f, 0.f, 0.f, 0.f};
#ifdef MOEPIC_AVX2
    const int64_t item = fmt == FMT_F32 ? 4 : 2;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; j + 8 <= n; j += 8) {
        __m256 xv = _mm256_loadu_ps(x + j);
        a0 = _mm256_fmadd_ps(load8(fmt, m + j * item), xv, a0);
        a1 = _mm256_fmadd_ps(load8(fmt, m + rb + j * item), xv, a1);
        a2 = _mm256_fmadd_ps(load8(fmt, m + 2 * rb + j * item), xv, a2);
        a3 = _mm256_fmadd_ps(load8(fmt, m + 3 * rb + j * item), xv, a3);
    }
    s[0] = hsum8(a0), s[1] = hsum8(a1), s[2] = hsum8(a2), s[3] = hsum8(a3);
#endif
    for (int k = 0; k < 4; k++) {
        for (int64_t jj = j; jj < n; jj++) s[k] += fvalue(fmt, m + k * rb, jj) * x[jj];
        out[k] = add ? out[k] + s[k] : s[k];
    }
}

/* out[r] (+)= row r . x for rows [r0, r1) of a float matrix of rows of 32 values: 8 rows at a time
 * so that the horizontal sums are shared. */
INLINE void frows32(const int fmt, const uint8_t *m, int64_t r0, int64_t r1, const float *x, float *out, int add) {
    const int64_t rb = row_bytes(fmt, QB), item = fmt == FMT_F32 ? 4 : 2;
    int64_t r = r0;
#ifdef MOEPIC_AVX2
    __m256 h0 = _mm256_loadu_ps(x), h1 = _mm256_loadu_ps(x + 8), h2 = _mm256_loadu_ps(x + 16);
    __m256 h3 = _mm256_loadu_ps(x + 24);
    for (; r + 8 <= r1; r += 8) {
        __m256 p[8];
        for (int k = 0; k < 8; k++) {
            const uint8_t *row = m + (r + k) * rb;
            __m256 a = _mm256_mul_ps(load8(fmt, row), h0);
            a = _mm256_fmadd_ps(load8(fmt, row + 8 * item), h1, a);
            a = _mm256_fmadd_ps(load8(fmt, row + 16 * item), h2, a);
            p[k] = _mm256_fmadd_ps(load8(fmt, row + 24 * item), h3, a);
        }
        __m256 s = reduce8_ps(p);
        if (add) s = _mm256_add_ps(s, _mm256_loadu_ps(out + r));
        _mm256_storeu_ps(out + r, s);
    }
#endif
    for (; r < r1; r++) {
        float s = fdot(fmt, m + r * rb, QB, x);
        out[r] = add ? out[r] + s : s;
    }
}

/* out[r] (+)= row r . v for rows [r0, r1) of an N x n matrix at m (r0, r1 multiples of 8 when
 * quantized). */
INLINE void matvec(const int fmt, const uint8_t *m, int64_t n, int64_t r0, int64_t r1, const Vec *v, float *out,
                   int add) {
    if (is_quant(fmt)) {
        const int64_t group = (n / QB) * group_block_bytes(fmt);
        for (int64_t r = r0; r < r1; r += RG) qgroup(fmt, m + (r / RG) * group, n / QB, v, out + r, add);
    } else if (n == QB) {
        frows32(fmt, m, r0, r1, v->x, out, add);
    } else {
        const int64_t rb = row_bytes(fmt, n);
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) fdot4(fmt, m + r * rb, rb, n, v->x, out + r, add);
        for (; r < r1; r++) {
            float s = fdot(fmt, m + r * rb, n, v->x);
            out[r] = add ? out[r] + s : s;
        }
    }
}

/* ---------------------------------------------------------------- experts */
static inline float activate(int act, float gate, float up, float alpha, float limit) {
    switch (act) {
        case ACT_GELU_TANH: {
            float c = 0.7978845608f * (gate + 0.044715f * gate * gate * gate);
            return 0.5f * gate * (1.f + tanhf(c)) * up;
        }
        case ACT_CLAMPED_SWIGLU: { /* GPT-OSS: clamp, then gate * sigmoid(alpha * gate) * (up + 1) */
            gate = fminf(gate, limit);
            up = fmaxf(fminf(up, limit), -limit);
            return gate / (1.f + expf(-alpha * gate)) * (up + 1.f);
        }
        default:
            return gate / (1.f + expf(-gate)) * up;
    }
}

/* A thread's scratch for expert chunks: hidden activations and the output accumulator. */
typedef struct {
    float *gate, *up, *acc;
    Vec h;
} Scratch;

static int scratch_alloc(Scratch *s, int64_t S, int64_t T, int64_t H) {
    s->gate = (float *)malloc(sizeof(float) * (size_t)S);
    s->up = (float *)malloc(sizeof(float) * (size_t)S);
    s->acc = (float *)calloc((size_t)(T * H), sizeof(float));
    int ok = s->gate && s->up && s->acc && !vec_alloc(&s->h, S);
    return ok ? 0 : -1;
}

static void scratch_free(Scratch *s) {
    free(s->gate);
    free(s->up);
    free(s->acc);
    vec_free(&s->h);
}

INLINE int expert_segment(const int fmt, const uint8_t *rows, int64_t nchunks, int64_t S, int64_t H, const float *x,
                          int64_t T, float *y, const float *bias, int act, float alpha, float limit, int nthreads) {
    const int64_t mat = S * row_bytes(fmt, H), cbytes = 2 * mat + H * row_bytes(fmt, S);
    const int quant = is_quant(fmt);
    Vec *xs = (Vec *)calloc((size_t)T, sizeof(Vec));
    int failed = xs == NULL;
    for (int64_t t = 0; t < T && !failed; t++) {
        xs[t].x = x + t * H;
        if (quant) {
            failed = vec_alloc(&xs[t], H);
            if (!failed) quantize_vec(x + t * H, H, &xs[t]);
        }
    }
#pragma omp parallel num_threads(nthreads > 0 ? nthreads : 1) if (!failed && nchunks > 1)
    {
        Scratch s;
        int bad = scratch_alloc(&s, S, T, H);
        if (bad) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier
        if (!failed) {
#pragma omp for schedule(static)
            for (int64_t c = 0; c < nchunks; c++) {
                const uint8_t *base = rows + c * cbytes;
                for (int64_t t = 0; t < T; t++) {
                    matvec(fmt, base, H, 0, S, &xs[t], s.gate, 0);
                    matvec(fmt, base + mat, H, 0, S, &xs[t], s.up, 0);
                    float *h = s.gate; /* activations overwrite the gate outputs */
                    for (int64_t i = 0; i < S; i++) {
                        const float *bi = bias ? bias + 2 * (c * S + i) : NULL;
                        h[i] = activate(act, s.gate[i] + (bi ? bi[0] : 0.f), s.up[i] + (bi ? bi[1] : 0.f), alpha, limit);
                    }
                    s.h.x = h;
                    if (quant) quantize_vec(h, S, &s.h);
                    matvec(fmt, base + 2 * mat, S, 0, H, &s.h, s.acc + t * H, 1);
                }
            }
#pragma omp critical
            for (int64_t k = 0; k < T * H; k++) y[k] += s.acc[k];
        }
        scratch_free(&s);
    }
    for (int64_t t = 0; xs && t < T; t++)
        if (quant) vec_free(&xs[t]);
    free(xs);
    return failed ? -1 : 0;
}

/* ---------------------------------------------------------------- dense linears */
INLINE int linear(const int fmt, const uint8_t *m, int64_t N, int64_t K, const float *x, int64_t T, float *y,
                  int nthreads) {
    Vec v = {x, NULL, NULL, NULL};
    const int quant = is_quant(fmt);
    if (quant && vec_alloc(&v, K)) { vec_free(&v); return -1; }
    const int64_t step = quant ? RG : 8;
    float *col = (float *)malloc(sizeof(float) * (size_t)N);
    if (!col) { if (quant) vec_free(&v); return -1; }
    for (int64_t t = 0; t < T; t++) {
        v.x = x + t * K;
        if (quant) quantize_vec(v.x, K, &v);
#pragma omp parallel for schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
        for (int64_t r = 0; r < N; r += step) matvec(fmt, m, K, r, r + step < N ? r + step : N, &v, col, 0);
        memcpy(y + t * N, col, sizeof(float) * (size_t)N);
    }
    free(col);
    if (quant) vec_free(&v);
    return 0;
}

/* ---------------------------------------------------------------- exported, one body per format */
#define DISPATCH(call)                              \
    switch (fmt) {                                  \
        case FMT_F32: return call(FMT_F32, ARGS);   \
        case FMT_BF16: return call(FMT_BF16, ARGS); \
        case FMT_F16: return call(FMT_F16, ARGS);   \
        case FMT_Q8: return call(FMT_Q8, ARGS);     \
        case FMT_Q4: return call(FMT_Q4, ARGS);     \
        default: return -2;                         \
    }

/* Expert segment: `nchunks` chunks of S neurons at `rows`, x [T, H] fp32 -> y [T, H] += output.
 * `bias`, when given, is [nchunks * S, 2] fp32 gate/up biases of these neurons. 0, or -1 (no memory). */
int moepic_expert_segment(int fmt, const uint8_t *rows, int64_t nchunks, int64_t S, int64_t H, const float *x,
                          int64_t T, float *y, const float *bias, int act, float alpha, float limit, int nthreads) {
#define ARGS rows, nchunks, S, H, x, T, y, bias, act, alpha, limit, nthreads
    DISPATCH(expert_segment)
#undef ARGS
}

/* Dense linear: an N x K matrix, x [T, K] fp32 -> y [T, N] = x W^T. 0, or -1 (no memory). */
int moepic_linear(int fmt, const uint8_t *rows, int64_t N, int64_t K, const float *x, int64_t T, float *y,
                  int nthreads) {
#define ARGS rows, N, K, x, T, y, nthreads
    DISPATCH(linear)
#undef ARGS
}
