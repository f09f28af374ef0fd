/* bf16 self-attention with a key-padding mask on Intel AMX (see amx_attention.py).
 *
 * Input: the QKV projection as it leaves the linear layer, [B, L, 3, H, D] bf16, and the number
 * of real tokens of each text (keys 0 .. n-1 are attended to). Output: the attention context,
 * [B, L, H, D] bf16, already in the layout the output projection reads.
 *
 * Per (text, head): K is packed once as K^T and V once, both in the pair-interleaved layout
 * AMX's B operand wants. Then per block of 32 queries: S = Q K^T on the tiles (fp32), softmax
 * numerators exp(scale (s - max)) in AVX-512 rounded to bf16 with their fp32 row sum, O = P V
 * on the tiles, and O / sum rounded to bf16. A whole row of scores fits (L <= a few thousand),
 * so no online rescaling is needed. Head size 32 uses blocks of 16 queries instead
 * (run_head32). Work is split over threads by (text, head).
 */
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "attention_common.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Linux hands out AMX's tile state only to processes that ask; 0 when granted. */
int hbt_amx_request(void) {
    return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* c[32][32] (fp32, row stride ldc) = sum over steps of A B: A is 32 rows of 32 bf16 (row stride
 * a_row bytes, the next step a_step bytes on), B 16 rows of 32 pair-interleaved dwords (b_row,
 * b_step likewise). A tiles 0-1 (rows 0-15, 16-31), B tiles 2-3 (columns 0-15, 16-31), C 4-7. */
static inline void product_32x32(const void *a, long a_row, long a_step, const void *b, long b_row,
                                 long b_step, int steps, float *c, long ldc) {
    _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
    for (int i = 0; i < steps; i++) {
        const char *ai = (const char *)a + i * a_step, *bi = (const char *)b + i * b_step;
        _tile_loadd(0, ai, a_row);
        _tile_loadd(1, ai + 16 * a_row, a_row);
        _tile_loadd(2, bi, b_row);
        _tile_loadd(3, bi + 64, b_row);
        _tile_dpbf16ps(4, 0, 2); _tile_dpbf16ps(5, 1, 2);
        _tile_dpbf16ps(6, 0, 3); _tile_dpbf16ps(7, 1, 3);
    }
    _tile_stored(4, c, ldc * 4);
    _tile_stored(6, c + 16, ldc * 4);
    _tile_stored(5, c + 16 * ldc, ldc * 4);
    _tile_stored(7, c + 16 * ldc + 16, ldc * 4);
}

/* Head size 32 (mE5-small, MiniLM): blocks of 16 queries, so the scores of a block (16 x Lkp
 * fp32, 16 KB at 256 tokens) stay in L1 with P, K^T and V, and P V accumulates in two tiles
 * over the key blocks instead of one product per 32 x 32 output. With 32-query blocks, Q K^T
 * is a single tile step per 32 x 32 scores, bound by storing 32 KB of them: this form took
 * 3.7 ms instead of 4.8 per 16 x 256-token layer. Tiles: 0 Q, 1-2 K^T then V, 3-4 scores
 * (3 then P), 6-7 O. Same arithmetic as run()'s general form. */
static void run_head32(const job *j, const uint32_t *kt, const uint32_t *vp, int Lkp, int b,
                       int h, float *s, uint16_t *qb) {
    const int L = j->L, H = j->H, D = 32, n = j->lengths[b];
    const int nkp = (n + 31) & ~31;
    const long row = 3L * H * D;
    const uint16_t *text = j->qkv + (long)b * L * row;
    const __m512 scale = _mm512_set1_ps(j->scale * 1.44269504088896341f);
    uint16_t p[16 * 32] __attribute__((aligned(64)));
    float o[16 * 32] __attribute__((aligned(64)));
    for (int q0 = 0; q0 < L; q0 += 16) {
        const int rows = L - q0 < 16 ? L - q0 : 16;
        long stride;
        _tile_loadd(0, query_block(text + q0 * row + (long)h * D, row, rows, 16, D, qb, &stride),
                    stride * 2);
        __m512 mx[16], shift[16], sum[16];
        for (int r = 0; r < 16; r++) mx[r] = _mm512_set1_ps(-INFINITY);
        for (int k0 = 0; k0 < nkp; k0 += 32) {  /* S = Q K^T and its row maxima */
            _tile_loadd(1, kt + k0, Lkp * 4);
            _tile_loadd(2, kt + k0 + 16, Lkp * 4);
            _tile_zero(3); _tile_zero(4);
            _tile_dpbf16ps(3, 0, 1); _tile_dpbf16ps(4, 0, 2);
            _tile_stored(3, s + k0, Lkp * 4); _tile_stored(4, s + k0 + 16, Lkp * 4);
            __mmask16 m0, m1;
            real_keys(n, k0, &m0, &m1);
            for (int r = 0; r < 16; r++) {
                mx[r] = _mm512_mask_max_ps(mx[r], m0, mx[r], _mm512_load_ps(s + r * Lkp + k0));
                mx[r] = _mm512_mask_max_ps(mx[r], m1, mx[r], _mm512_load_ps(s + r * Lkp + k0 + 16));
            }
        }
        for (int r = 0; r < 16; r++) {
            shift[r] = _mm512_mul_ps(_mm512_set1_ps(_mm512_reduce_max_ps(mx[r])), scale);
            sum[r] = _mm512_setzero_ps();
        }
        _tile_zero(6); _tile_zero(7);
        for (int k0 = 0; k0 < nkp; k0 += 32) {  /* numerators of 32 keys, then O += P V */
            __mmask16 m0, m1;
            real_keys(n, k0, &m0, &m1);
            for (int r = 0; r < 16; r++) {
                const float *sr = s + r * Lkp + k0;
                const __m512 e0 = _mm512_maskz_mov_ps(m0, exp2_nonpositive(
                    _mm512_fmsub_ps(_mm512_load_ps(sr), scale, shift[r])));
                const __m512 e1 = _mm512_maskz_mov_ps(m1, exp2_nonpositive(
                    _mm512_fmsub_ps(_mm512_load_ps(sr + 16), scale, shift[r])));
                sum[r] = _mm512_add_ps(sum[r], _mm512_add_ps(e0, e1));
                _mm512_store_si512(p + r * 32, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
            }
            _tile_loadd(3, p, 64);
            _tile_loadd(1, vp + (long)(k0 / 2) * D, D * 4);
            _tile_loadd(2, vp + (long)(k0 / 2) * D + 16, D * 4);
            _tile_dpbf16ps(6, 3, 1); _tile_dpbf16ps(7, 3, 2);
        }
        _tile_stored(6, o, 128); _tile_stored(7, o + 16, 128);
        for (int r = 0; r < rows; r++)
            write_context(j->out + ((long)(b * L + q0 + r) * H + h) * D, o + r * D,
                          1.0f / _mm512_reduce_add_ps(sum[r]), D);
    }
}

static void run(const job *j) {
    const int L = j->L, H = j->H, D = j->D;
    const int Lkp = (L + 31) & ~31;  /* keys padded to whole 32-key tiles */
    const long row = 3L * H * D;     /* elements from one token to the next in qkv */
    uint32_t *kt = aligned_alloc(64, (size_t)(D / 2) * Lkp * 4); /* kt[d/2][key]: K[key][d, d+1] */
    uint32_t *vp = aligned_alloc(64, (size_t)(Lkp / 2) * D * 4); /* vp[key/2][d]: V[key, key+1][d] */
    float *s = aligned_alloc(64, (size_t)32 * Lkp * 4);
    uint16_t *p = aligned_alloc(64, (size_t)32 * Lkp * 2);
    uint16_t *qb = aligned_alloc(64, (size_t)32 * D * 2);
    float *o = aligned_alloc(64, (size_t)32 * D * 4);
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }  /* all 16 x 64 bytes */
    _tile_loadconfig(&cfg);
    const __m512 scale = _mm512_set1_ps(j->scale * 1.44269504088896341f);  /* e^x = 2^(x log2 e) */
    for (int item = j->first; item < j->last; item++) {
        const item_view v = pack_item(j, item, Lkp, kt, vp);
        const int b = v.b, h = v.h, n = v.n, nkp = v.nkp;
        const uint16_t *text = v.text;
        if (D == 32) {
            run_head32(j, kt, vp, Lkp, b, h, s, qb);
            continue;
        }
        for (int q0 = 0; q0 < L; q0 += 32) {
            const int rows = L - q0 < 32 ? L - q0 : 32;
            long stride;
            const uint16_t *queries = query_block(text + q0 * row + (long)h * D, row, rows, 32, D,
                                                  qb, &stride);
            /* S = Q K^T, 32 queries x 32 keys per product, 32 dimensions per step */
            for (int k0 = 0; k0 < nkp; k0 += 32)
                product_32x32(queries, stride * 2, 64, kt + k0, Lkp * 4, 16L * Lkp * 4, D / 32,
                              s + k0, Lkp);
            float inv_sum[32];
            for (int r = 0; r < rows; r++)
                inv_sum[r] = softmax_row(s + (long)r * Lkp, p + (long)r * Lkp, n, nkp, scale);
            for (int r = rows; r < 32; r++) memset(p + (long)r * Lkp, 0, nkp * 2);
            /* O = P V, 32 queries x 32 dimensions per product, 32 keys per step */
            for (int d0 = 0; d0 < D; d0 += 32)
                product_32x32(p, Lkp * 2, 64, vp + d0, D * 4, 16L * D * 4, nkp / 32, o + d0, D);
            for (int r = 0; r < rows; r++)
                write_context(j->out + ((long)(b * L + q0 + r) * H + h) * D, o + r * D,
                              inv_sum[r], D);
        }
    }
    _tile_release();
    free(kt); free(vp); free(s); free(p); free(qb); free(o);
}

int hbt_amx_attention(const uint16_t *qkv, const int32_t *lengths, uint16_t *out, int B, int L,
                      int H, int D, float scale) {
    return run_on_threads(run, qkv, lengths, out, B, L, H, D, scale);
}
