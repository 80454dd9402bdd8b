/* One mLSTM step (M's acting step), fused: gates, the matrix-memory update and its readout in one
 * pass over C per (batch row, head). See mlstm_chunkwise.py's mlstm_step for the tensor form and
 * mlstm_native.py for why. For head h of row b, with keep = 0 on a reset row (a zero state), 1 else:
 *
 *     log f = log sigmoid(f~),  m_prev = keep m
 *     m_t   = max(log f + m_prev, i~)
 *     f'    = keep exp(log f + m_prev - m_t),   i' = exp(i~ - m_t)
 *     C_t   = f' C + (i' k / sqrt(D)) v^T,      n_t = f' n + i' k / sqrt(D)
 *     h     = q^T C_t / (max(|q^T n_t|, exp(min(-m_t, CAP))) + eps)
 *
 * C_t's row r is written from C's row r and read back for q^T C_t while it is in registers: the
 * state is read once and written once (the tensor form passes over it three times).
 * NH heads and D = head width are compile-time constants (mlstm_native.py builds one library per
 * shape); plain loops over D, which the compiler vectorises. Float32 only.
 */
#include <math.h>

#ifndef NH
#error "compile with -DNH=heads -DD=head_width -DCAP=log(FLT_MAX)-1"
#endif

/* q, k, v: row b, head h at p + b * p_b + h * D; i_pre, f_pre: at p + b * p_b + h;
 * c [B, NH, D, D], n [B, NH, D], m [B, NH] contiguous, read; c_new, n_new, m_new the same, and
 * h_out [B, NH, D], written. resets: [B] bytes or NULL. */
void mlstm_step(long B, const float *c, const float *n, const float *m,
                const float *q, long q_b, const float *k, long k_b, const float *v, long v_b,
                const float *i_pre, long i_b, const float *f_pre, long f_b, const unsigned char *resets, float eps,
                float *h_out, float *c_new, float *n_new, float *m_new) {
    const float scale = 1.f / sqrtf((float)D);
    for (long b = 0; b < B; b++) {
        const float keep = resets && resets[b] ? 0.f : 1.f;
        for (int h = 0; h < NH; h++) {
            const long bh = b * NH + h;
            const float fp = f_pre[b * f_b + h], ip = i_pre[b * i_b + h];
            const float log_f = (fp < 0.f ? fp : 0.f) - log1pf(expf(-fabsf(fp)));  /* log sigmoid, stable */
            const float m_prev = keep * m[bh];
            const float m_t = log_f + m_prev > ip ? log_f + m_prev : ip;
            const float f_gate = keep > 0.f ? expf(log_f + m_prev - m_t) : 0.f;
            const float i_gate = expf(ip - m_t);
            const float *qh = q + b * q_b + h * D, *kh = k + b * k_b + h * D, *vh = v + b * v_b + h * D;
            const float *C = c + bh * D * D;
            float *Cn = c_new + bh * D * D;
            float num[D], qn = 0.f;
            for (int s = 0; s < D; s++) num[s] = 0.f;
            for (int r = 0; r < D; r++) {
                const float ik = i_gate * kh[r] * scale;
                const float nr = f_gate * n[bh * D + r] + ik;
                n_new[bh * D + r] = nr;
                qn += qh[r] * nr;
                const float qr = qh[r];
                for (int s = 0; s < D; s++) {
                    const float x = f_gate * C[r * D + s] + ik * vh[s];
                    Cn[r * D + s] = x;
                    num[s] += qr * x;
                }
            }
            const float neg_m = -m_t < CAP ? -m_t : CAP;
            const float floor_ = expf(neg_m);
            const float norm = (fabsf(qn) > floor_ ? fabsf(qn) : floor_) + eps;
            for (int s = 0; s < D; s++) h_out[bh * D + s] = num[s] / norm;
            m_new[bh] = m_t;
        }
    }
}
