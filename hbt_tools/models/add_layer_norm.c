/* out = layer_norm(a + b) * gamma + beta, row by row, bf16 in and out (see add_layer_norm.py).
 * The sum stays in fp32 (it is not rounded to bf16 before the norm, as a + b in PyTorch is);
 * mean, then variance around it, in fp32; the output is rounded once. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define MAX_COLS 8192

static inline __m512 load_bf16(const uint16_t *p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

/* 0 on success; -1 (nothing written) when cols is not a positive multiple of 16 up to
 * MAX_COLS. Rows are shared among the OpenMP threads of the process (PyTorch's). */
int hbt_add_layer_norm(const uint16_t *a, const uint16_t *b, const uint16_t *gamma,
                       const uint16_t *beta, uint16_t *out, long rows, int cols, float eps) {
    if (cols <= 0 || cols % 16 || cols > MAX_COLS) return -1;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        float sum[MAX_COLS] __attribute__((aligned(64)));
        const uint16_t *ar = a + r * cols, *br = b + r * cols;
        __m512 total = _mm512_setzero_ps();
        for (int c = 0; c < cols; c += 16) {
            const __m512 s = _mm512_add_ps(load_bf16(ar + c), load_bf16(br + c));
            _mm512_store_ps(sum + c, s);
            total = _mm512_add_ps(total, s);
        }
        const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(total) / cols);
        __m512 squares = _mm512_setzero_ps();
        for (int c = 0; c < cols; c += 16) {
            const __m512 d = _mm512_sub_ps(_mm512_load_ps(sum + c), mean);
            squares = _mm512_fmadd_ps(d, d, squares);
        }
        const __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / cols + eps));
        uint16_t *o = out + r * cols;
        for (int c = 0; c < cols; c += 16) {
            const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(sum + c), mean), rstd);
            const __m512 y = _mm512_fmadd_ps(normed, load_bf16(gamma + c), load_bf16(beta + c));
            _mm256_storeu_si256((__m256i *)(o + c), (__m256i)_mm512_cvtneps_pbh(y));
        }
    }
    return 0;
}
