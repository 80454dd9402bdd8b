/* X's acting step over its memory window, fused: mask, logits, softmax and the weighted sum in one
 * pass per batch row (see xl_window.py for why, and xl.py's XLCell._step for the math it replaces).
 *
 * For batch row b, head h, window slot j (slots 0..M; slot M is the step's own input):
 *
 *     hidden_j   = j < M and (resets[b] or mem_valid[b, j] <= 0.5)
 *     logit_hj   = qk[h, b, :HD] . win[b, j, :] + qk[h, b, HD + j]          (visible j)
 *     a_hj       = exp(logit_hj - max_j logit_hj) / sum_j exp(...)         (a_hj = 0 for hidden j)
 *     mixed[b, h, :] = sum_j a_hj win[b, j, :]
 *     new_valid[b, j] = not hidden_{j+1}                                   (j < M)
 *
 * Why fused: the window [B, M+1, HD] (4.2 MB at B=64, M=HD=128) does not fit in L2, and the tensor
 * form reads it from L3 twice (logits, then the weighted sum) with a dozen small operations around.
 * Here each block of SB window slots is read from L3 once (prefetched PD slots ahead) and used again
 * from L1 for its weighted sum. The shapes (NH heads, HD = width, M1 = M + 1 slots) are compile-time
 * constants so the accumulators live in registers; xl_window.py compiles one library per shape.
 *
 * Portable C with GCC/Clang vector extensions (v16: 16 floats; one AVX-512 register, two AVX2 ones,
 * four NEON ones). Float32 only.
 */
#include <math.h>
#include <string.h>

#ifndef NH
#error "compile with -DNH=heads -DHD=width -DM1=mem_len+1"
#endif
#define NV (HD / 16)          /* vectors per window row */
#define M (M1 - 1)            /* memory slots */
#define QL (HD + M1)          /* one (head, row) of qk_pos: HD query-side numbers, then M1 position terms */
#ifndef CW
#define CW 1                  /* weighted-sum pass: vectors of the row per chunk (NH * CW accumulators) */
#endif
#ifndef SB
#define SB 32                 /* slots per block of the single pass */
#endif
#ifndef PD
#define PD 16                 /* prefetch this many slots ahead */
#endif
#if HD % 16
#error "HD must be a multiple of 16"
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef int i16 __attribute__((vector_size(64)));
#if defined(__clang__)
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUF(a, b, ...) __builtin_shuffle(a, b, (i16){__VA_ARGS__})
#endif

static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }  /* unaligned load */
static inline void st(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline float hsum(v16 v) { float s = 0.f; for (int i = 0; i < 16; i++) s += v[i]; return s; }

/* r[i] = sum of a[i]'s 16 lanes, for 16 vectors at once: a shuffle tree that halves the lanes per
 * vector at each level (~3 operations per sum instead of ~8 for one horizontal sum each). */
static inline v16 reduce16(const v16 *a) {
    v16 t[8], u[4], v[2];
    for (int k = 0; k < 8; k++)  /* t[k] lanes 0-7: a[2k], 8-15: a[2k+1] */
        t[k] = SHUF(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
             + SHUF(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int k = 0; k < 4; k++)  /* u[k]: 4 lanes each for a[4k..4k+3] */
        u[k] = SHUF(t[2 * k], t[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
             + SHUF(t[2 * k], t[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int k = 0; k < 2; k++)  /* v[k]: 2 lanes each for a[8k..8k+7] */
        v[k] = SHUF(u[2 * k], u[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
             + SHUF(u[2 * k], u[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return SHUF(v[0], v[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
         + SHUF(v[0], v[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* Prefetch slots j .. j+count-1 of window row w, PD slots further on (into the next row's window,
 * `next`, past this one's end). always_inline: a prefetch has no side effect the compiler can see,
 * so as a function of its own the call would be removed as pure. */
__attribute__((always_inline)) static inline void prefetch_slots(const float *w, int j, int count, const float *next) {
    const float *p = j + PD < M1 ? w + (j + PD) * HD : next ? next + (j + PD - M1) * HD : 0;
    if (p)
        for (int k = 0; k < count * HD; k += 16) __builtin_prefetch(p + k, 0, 3);
}

/* The logits of slots j0 .. j0+n-1 (n <= SB) of window row w, lg[h][jj] for slot j0 + jj. */
static inline void block_logits(const float *w, int j0, int n, const v16 q[NH][NV], float lg[NH][SB], const float *next) {
    int jj = 0;
#if 16 % NH == 0
#define JB (16 / NH)  /* slots per group: JB slots x NH heads = 16 sums, reduced together */
    for (; jj + JB <= n; jj += JB) {
        const float *wj = w + (j0 + jj) * HD;
        prefetch_slots(w, j0 + jj, JB, next);
        v16 acc[16];  /* acc[i]: slot jj + i / NH, head i % NH */
        for (int i = 0; i < 16; i++) acc[i] = q[i % NH][0] * ld(wj + (i / NH) * HD);
        for (int c = 1; c < NV; c++)
            for (int i = 0; i < 16; i++) acc[i] += q[i % NH][c] * ld(wj + (i / NH) * HD + 16 * c);
        const v16 s = reduce16(acc);
        for (int i = 0; i < 16; i++) lg[i % NH][jj + i / NH] = s[i];
    }
#endif
    for (; jj < n; jj++) {  /* the slots left over (all of them when NH does not divide 16) */
        const float *wj = w + (j0 + jj) * HD;
        prefetch_slots(w, j0 + jj, 1, next);
        for (int h = 0; h < NH; h++) {
            v16 acc = q[h][0] * ld(wj);
            for (int c = 1; c < NV; c++) acc += q[h][c] * ld(wj + 16 * c);
            lg[h][jj] = hsum(acc);
        }
    }
}

/* win: row b's window at win + b * win_b (M1 contiguous rows of HD); qk_pos: [NH, B, QL] contiguous;
 * mem_valid: row b at mem_valid + b * mv_b (M numbers); resets: [B] bytes or NULL;
 * mixed: [B, NH, HD] and new_valid: [B, M], both contiguous, written.
 *
 * One pass over the window, in blocks of SB slots (16 KiB at HD=128, so a block stays in L1 between
 * its logits and its weighted sum), with the softmax done online (Milakov & Gimelshein 2018):
 * running max m_h and sum s_h, and on a new max m' the partial sums are rescaled by exp(m_h - m'):
 *
 *     m' = max(m, max_j l_j),   s' = s e^{m - m'} + sum_j e^{l_j - m'},   acc' = acc e^{m - m'} + sum_j e^{l_j - m'} w_j
 *     mixed = acc / s   (at the end: sum_j softmax(l)_j w_j)
 *
 * Why one pass and not two (logits of the whole row, softmax, then the weighted sum): the same
 * arithmetic, but the two-pass form reads the row's 66 KB window again from L2 and was slower in the
 * acting-step benchmark (docs/benchmarks.md). The value and output projections stay outside: done
 * here per batch row they re-read their weights 64 times, slower than one MKL product for all rows. */
void xl_window_attend(long B, const float *win, long win_b, const float *qk_pos, const float *mem_valid, long mv_b,
                      const unsigned char *resets, float *mixed, float *new_valid) {
    for (long b = 0; b < B; b++) {
        const float *w = win + b * win_b;
        unsigned char hidden[M1];
        const int reset = resets ? resets[b] : 0;
        for (int j = 0; j < M; j++) hidden[j] = reset || mem_valid[b * mv_b + j] <= 0.5f;
        hidden[M] = 0;  /* the step always sees itself */
        for (int j = 0; j < M; j++) new_valid[b * M + j] = hidden[j + 1] ? 0.f : 1.f;

        v16 q[NH][NV];  /* s W_k,h^T (q + u)_h, the query side of every head */
        for (int h = 0; h < NH; h++)
            for (int c = 0; c < NV; c++) q[h][c] = ld(qk_pos + (h * B + b) * QL + 16 * c);
        v16 acc[NH][NV];
        float mx[NH], sum[NH];
        for (int h = 0; h < NH; h++) {
            mx[h] = -1e30f, sum[h] = 0.f;
            for (int c = 0; c < NV; c++) acc[h][c] = (v16){0};
        }
        for (int j0 = 0; j0 < M1; j0 += SB) {
            const int n = M1 - j0 < SB ? M1 - j0 : SB;
            int visible = 0;
            for (int jj = 0; jj < n; jj++) visible |= !hidden[j0 + jj];
            if (!visible) continue;  /* a block cut off by a reset: nothing to read */

            float lg[NH][SB], scale[NH];
            block_logits(w, j0, n, q, lg, b + 1 < B ? w + win_b : 0);
            for (int h = 0; h < NH; h++) {
                const float *pos = qk_pos + (h * B + b) * QL + HD + j0;
                float m = mx[h];
                for (int jj = 0; jj < n; jj++) {
                    lg[h][jj] += pos[jj];
                    m = !hidden[j0 + jj] && lg[h][jj] > m ? lg[h][jj] : m;
                }
                const int first = mx[h] == -1e30f;  /* the first visible block: nothing to rescale */
                scale[h] = first ? 0.f : expf(first ? 0.f : mx[h] - m);
                float s = 0.f;
                for (int jj = 0; jj < n; jj++) {  /* exp(0) for hidden slots, then 0: exp's slow path only for real underflow */
                    const float e = expf(hidden[j0 + jj] ? 0.f : lg[h][jj] - m);
                    lg[h][jj] = hidden[j0 + jj] ? 0.f : e;
                    s += lg[h][jj];
                }
                sum[h] = sum[h] * scale[h] + s;
                mx[h] = m;
            }
            for (int c0 = 0; c0 < NV; c0 += CW) {  /* the block's weighted sum, CW vectors of the row at a time */
                v16 a[NH][CW];
                for (int h = 0; h < NH; h++)
                    for (int k = 0; k < CW; k++) a[h][k] = acc[h][c0 + k] * scale[h];
                for (int jj = 0; jj < n; jj++) {
                    if (hidden[j0 + jj]) continue;
                    const float *wj = w + (j0 + jj) * HD + 16 * c0;
                    v16 wv[CW];
                    for (int k = 0; k < CW; k++) wv[k] = ld(wj + 16 * k);
                    for (int h = 0; h < NH; h++) {
                        const float e = lg[h][jj];
                        for (int k = 0; k < CW; k++) a[h][k] += e * wv[k];
                    }
                }
                for (int h = 0; h < NH; h++)
                    for (int k = 0; k < CW; k++) acc[h][c0 + k] = a[h][k];
            }
        }
        for (int h = 0; h < NH; h++) {
            const float inv = 1.f / sum[h];
            for (int c = 0; c < NV; c++) st(mixed + (b * NH + h) * HD + 16 * c, acc[h][c] * inv);
        }
    }
}
