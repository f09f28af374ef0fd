/* bf16 self-attention with a key-padding mask on AVX512-BF16 CPUs without AMX (AMD Zen 4,
 * Intel Cooper Lake; see cpu_attention.py). Input and output as amx_attention.c's.
 *
 * Per (text, head): K and V are packed once (attention_common.h). Then per block of 8 queries:
 * S = Q K^T with vdpbf16ps, each instruction 16 keys x one pair of dimensions, the query's pair
 * broadcast (8 queries x 32 keys in 16 registers per step); softmax numerators as in the AMX
 * kernel (fp32, rounded to bf16, fp32 row sums); O = P V likewise, 16 dimensions x one pair of
 * keys per instruction (8 queries x 32 dimensions per step), then O / sum rounded to bf16. The
 * same arithmetic as amx_attention.c, on vector registers instead of tiles. */
#include <stdlib.h>

#include "attention_common.h"

#define QUERIES 8 /* per block: 16 accumulators of 32 */

static inline __m512bh pair_at(const uint16_t *p) {
    int32_t pair;
    memcpy(&pair, p, 4);
    return (__m512bh)_mm512_set1_epi32(pair);
}

/* s[r][k0 .. k0+31] (row stride ls) = the QUERIES queries (row stride q_row elements) times the
 * 32 keys of kt from k0 (kt's row stride Lkp dwords), over D dimensions. */
static inline void scores_block(const uint16_t *q, long q_row, const uint32_t *kt, int Lkp, int D,
                                float *s, int ls) {
    __m512 acc[QUERIES][2];
    for (int r = 0; r < QUERIES; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int d2 = 0; d2 < D / 2; d2++) {
        const __m512bh k0 = (__m512bh)_mm512_load_si512(kt + (long)d2 * Lkp);
        const __m512bh k1 = (__m512bh)_mm512_load_si512(kt + (long)d2 * Lkp + 16);
        for (int r = 0; r < QUERIES; r++) {
            const __m512bh qp = pair_at(q + r * q_row + 2 * d2);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], qp, k0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], qp, k1);
        }
    }
    for (int r = 0; r < QUERIES; r++) {
        _mm512_store_ps(s + (long)r * ls, acc[r][0]);
        _mm512_store_ps(s + (long)r * ls + 16, acc[r][1]);
    }
}

/* Rows 0 .. rows-1 of the context, dimensions d0 .. d0+31: P (QUERIES rows of bf16, row stride
 * lp, nkp keys) times vp from d0, each row times its inv_sum, rounded into out (row stride
 * out_row elements). */
static inline void context_block(const uint16_t *p, int lp, const uint32_t *vp, int D, int nkp,
                                 const float *inv_sum, int rows, uint16_t *out, long out_row) {
    __m512 acc[QUERIES][2];
    for (int r = 0; r < QUERIES; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < nkp; k += 2) {
        const __m512bh v0 = (__m512bh)_mm512_load_si512(vp + (long)(k / 2) * D);
        const __m512bh v1 = (__m512bh)_mm512_load_si512(vp + (long)(k / 2) * D + 16);
        for (int r = 0; r < QUERIES; r++) {
            const __m512bh pp = pair_at(p + (long)r * lp + k);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], pp, v0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], pp, v1);
        }
    }
    for (int r = 0; r < rows; r++) {
        const __m512 f = _mm512_set1_ps(inv_sum[r]);
        _mm512_storeu_si512(out + r * out_row, (__m512i)_mm512_cvtne2ps_pbh(
            _mm512_mul_ps(acc[r][1], f), _mm512_mul_ps(acc[r][0], f)));
    }
}

static void run(const job *j) {
    const int L = j->L, H = j->H, D = j->D;
    const int Lkp = (L + 31) & ~31;
    const long row = 3L * H * D;
    uint32_t *kt = aligned_alloc(64, (size_t)(D / 2) * Lkp * 4);
    uint32_t *vp = aligned_alloc(64, (size_t)(Lkp / 2) * D * 4);
    float *s = aligned_alloc(64, (size_t)QUERIES * Lkp * 4);
    uint16_t *p = aligned_alloc(64, (size_t)QUERIES * Lkp * 2);
    uint16_t *qb = aligned_alloc(64, (size_t)QUERIES * D * 2);
    const __m512 scale = _mm512_set1_ps(j->scale * 1.44269504088896341f);  /* e^x = 2^(x log2 e) */
    for (int item = j->first; item < j->last; item++) {
        const item_view v = pack_item(j, item, Lkp, kt, vp);
        const int b = v.b, h = v.h, n = v.n, nkp = v.nkp;
        const uint16_t *text = v.text;
        for (int q0 = 0; q0 < L; q0 += QUERIES) {
            const int rows = L - q0 < QUERIES ? L - q0 : QUERIES;
            long stride;
            const uint16_t *queries = query_block(text + q0 * row + (long)h * D, row, rows,
                                                  QUERIES, D, qb, &stride);
            for (int k0 = 0; k0 < nkp; k0 += 32)
                scores_block(queries, stride, kt + k0, Lkp, D, s + k0, Lkp);
            float inv_sum[QUERIES];
            for (int r = 0; r < rows; r++)
                inv_sum[r] = softmax_row(s + (long)r * Lkp, p + (long)r * Lkp, n, nkp, scale);
            for (int r = rows; r < QUERIES; r++) memset(p + (long)r * Lkp, 0, nkp * 2);
            for (int d0 = 0; d0 < D; d0 += 32)
                context_block(p, Lkp, vp + d0, D, nkp, inv_sum, rows,
                              j->out + ((long)(b * L + q0) * H + h) * D + d0, (long)H * D);
        }
    }
    free(kt); free(vp); free(s); free(p); free(qb);
}

int hbt_avx512_attention(const uint16_t *qkv, const int32_t *lengths, uint16_t *out, int B,
                         int L, int H, int D, float scale) {
    return run_on_threads(run, qkv, lengths, out, B, L, H, D, scale);
}
