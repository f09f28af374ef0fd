/* Pieces shared by hbt-encode's bf16 attention kernels (amx_attention.c, avx512_attention.c):
 * the softmax numerators, K and V packed in the pair-interleaved layout both kernels' bf16 dot
 * products read, query blocks and the context's rounding. AVX-512 (F, BW, VL, BF16) only. */
#ifndef HBT_ATTENTION_COMMON_H
#define HBT_ATTENTION_COMMON_H

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint16_t *qkv;
    const int32_t *lengths;
    uint16_t *out;
    int L, H, D;
    float scale;
    int first, last; /* (text, head) items first .. last-1, item = text * H + head */
} job;

/* 2^t for t <= 0: 2^round(t) * p(f), f in [-0.5, 0.5], p a degree-4 fit (relative error
 * < 3e-6, against bf16's 3.9e-3 for the rounded numerators); scalef gives 0 below fp32's range. */
static inline __m512 exp2_nonpositive(__m512 t) {
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(0.009570102f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.055917863f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24024744f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931218f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999993f));
    return _mm512_scalef_ps(p, n);
}

/* In-place transpose of a 16 x 16 matrix of 32-bit elements (one row per register). */
static inline void transpose16(__m512i *r) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

/* One row of scores: pr = bf16(2^(scale s - max)) for the n real keys, zeros up to nkp;
 * returns 1 / the fp32 sum. Two accumulators each, so no max or add waits on the last. */
static inline float softmax_row(const float *sr, uint16_t *pr, int n, int nkp, __m512 scale) {
    const int full = n & ~15;
    const __mmask16 tail = (__mmask16)((1u << (n - full)) - 1);
    __m512 mx0 = _mm512_set1_ps(-INFINITY), mx1 = mx0;
    int c = 0;
    for (; c + 32 <= full; c += 32) {
        mx0 = _mm512_max_ps(mx0, _mm512_load_ps(sr + c));
        mx1 = _mm512_max_ps(mx1, _mm512_load_ps(sr + c + 16));
    }
    if (c < full) mx0 = _mm512_max_ps(mx0, _mm512_load_ps(sr + c));
    if (tail) mx1 = _mm512_mask_max_ps(mx1, tail, mx1, _mm512_load_ps(sr + full));
    const float mx = _mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1));
    const __m512 shift = _mm512_mul_ps(_mm512_set1_ps(mx), scale);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
    for (c = 0; c + 32 <= full; c += 32) {
        const __m512 e0 = exp2_nonpositive(_mm512_fmsub_ps(_mm512_load_ps(sr + c), scale, shift));
        const __m512 e1 = exp2_nonpositive(_mm512_fmsub_ps(_mm512_load_ps(sr + c + 16), scale, shift));
        sum0 = _mm512_add_ps(sum0, e0);
        sum1 = _mm512_add_ps(sum1, e1);
        _mm512_store_si512(pr + c, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
    for (; c < nkp; c += 16) {
        const __mmask16 real = c + 16 <= full ? 0xFFFF : (c == full ? tail : 0);
        const __m512 e = _mm512_maskz_mov_ps(real, exp2_nonpositive(
            _mm512_fmsub_ps(_mm512_load_ps(sr + c), scale, shift)));
        sum0 = _mm512_add_ps(sum0, e);
        _mm256_store_si256((__m256i *)(pr + c), (__m256i)_mm512_cvtneps_pbh(e));
    }
    return 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
}

/* The first `rows` queries of a block of `block`, row stride `row`: in place when the block is
 * full, else copied to qb with zero rows after them (then *stride = D). */
static inline const uint16_t *query_block(const uint16_t *queries, long row, int rows, int block,
                                          int D, uint16_t *qb, long *stride) {
    *stride = row;
    if (rows == block) return queries;
    for (int r = 0; r < block; r++) {
        if (r < rows) memcpy(qb + r * D, queries + r * row, D * 2);
        else memset(qb + r * D, 0, D * 2);
    }
    *stride = D;
    return qb;
}

/* Which of the 32 keys from key0 on are real (n of them in all): two 16-key masks. */
static inline void real_keys(int n, int key0, __mmask16 *m0, __mmask16 *m1) {
    const int left = n - key0;
    *m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    *m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
}

/* One query's context: its D fp32 values (a multiple of 32) times f, rounded to bf16. */
static inline void write_context(uint16_t *dst, const float *o, float f, int D) {
    const __m512 scale = _mm512_set1_ps(f);
    for (int d0 = 0; d0 < D; d0 += 32)
        _mm512_storeu_si512(dst + d0, (__m512i)_mm512_cvtne2ps_pbh(
            _mm512_mul_ps(_mm512_loadu_ps(o + d0 + 16), scale),
            _mm512_mul_ps(_mm512_loadu_ps(o + d0), scale)));
}


/* One (text, head)'s n real keys and values, packed for bf16 pair dot products, zeros from key
 * n up to nkp (a multiple of 32): kt[d/2][key] = K[key][d, d+1] (row stride Lkp dwords) and
 * vp[key/2][d] = V[key, key+1][d] (row stride D dwords). `row`: elements from one token to the
 * next in qkv. */
static inline void pack_keys_values(const uint16_t *keys, const uint16_t *values, long row, int n,
                                    int nkp, int D, int Lkp, uint32_t *kt, uint32_t *vp) {
    /* word indices interleaving two rows of 32 bf16: low and high 16 pairs */
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    const __m512i zero = _mm512_setzero_si512();
    for (int key0 = 0; key0 < nkp; key0 += 16) {
        for (int d2 = 0; d2 < D / 2; d2 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = key0 + i < n ? _mm512_loadu_si512(keys + (key0 + i) * row + 2 * d2) : zero;
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_store_si512(kt + (long)(d2 + i) * Lkp + key0, r[i]);
        }
    }
    for (int key = 0; key < nkp; key += 2) {
        for (int d0 = 0; d0 < D; d0 += 32) {
            const __m512i v0 = key < n ? _mm512_loadu_si512(values + key * row + d0) : zero;
            const __m512i v1 = key + 1 < n ? _mm512_loadu_si512(values + (key + 1) * row + d0) : zero;
            _mm512_store_si512(vp + (long)(key / 2) * D + d0, _mm512_permutex2var_epi16(v0, lo, v1));
            _mm512_store_si512(vp + (long)(key / 2) * D + d0 + 16, _mm512_permutex2var_epi16(v0, hi, v1));
        }
    }
}

/* One (text, head) item of a job: which text and head, the text's real tokens n (nkp: rounded
 * up to 32) and its first token in qkv; its keys and values packed into kt and vp. */
typedef struct {
    int b, h, n, nkp;
    const uint16_t *text;
} item_view;

static inline item_view pack_item(const job *j, int item, int Lkp, uint32_t *kt, uint32_t *vp) {
    const int H = j->H, D = j->D, b = item / H, h = item % H, n = j->lengths[b];
    const long row = 3L * H * D;
    const item_view v = {b, h, n, (n + 31) & ~31, j->qkv + (long)b * j->L * row};
    pack_keys_values(v.text + (long)(H + h) * D, v.text + (long)(2 * H + h) * D, row, n, v.nkp,
                     D, Lkp, kt, vp);
    return v;
}

/* The kernels' entry: 0 on success; -1 (nothing written) for a head size that is not a multiple
 * of 32 or a text without tokens or longer than L. The (text, head) items are split evenly over
 * the OpenMP threads of the process (PyTorch's); `run` does one thread's share. */
static inline int run_on_threads(void (*run)(const job *), const uint16_t *qkv,
                                 const int32_t *lengths, uint16_t *out, int B, int L, int H,
                                 int D, float scale) {
    if (D <= 0 || D % 32 || L <= 0 || B <= 0 || H <= 0) return -1;
    for (int b = 0; b < B; b++)
        if (lengths[b] < 1 || lengths[b] > L) return -1;
    const int items = B * H;
#pragma omp parallel
    {
        const int threads = omp_get_num_threads(), t = omp_get_thread_num();
        const job work = {qkv, lengths, out, L, H, D, scale,
                          (int)((long)items * t / threads), (int)((long)items * (t + 1) / threads)};
        run(&work);
    }
    return 0;
}

#endif
