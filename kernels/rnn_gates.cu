// rnn_gates.cu -- the gated cells' pointwise steps (LSTM and GRU, PyTorch's gate layouts):
// everything of a step but its recurrent GEMM, in one launch forward and one backward.
//
// Kernels (suffix _f32: float, _f64: double):
//   rnn_lstm_forward_{f32,f64}
//       One LSTM step after its GEMM (torch.nn.LSTM): gates holds the pre-activations
//       U x + b + W h_prev of [i, f, g, o] on entry and their activations sigma(i),
//       sigma(f), tanh(g), sigma(o) on exit; c_next = f c_prev + i g,
//       h_next = o tanh(c_next); rows whose keep is 0 take c_prev and h_prev (the gates
//       still get their activations).
//   rnn_lstm_backward_{f32,f64}
//       One LSTM step of BPTT for all L live error streams (L = 1: full BPTT). With
//       dh = G[l] (+ e in stream `fresh` when has_e), tc = tanh(c_next) and
//       dc = DC[l] + dh o (1 - tc^2): di = dc g i (1 - i), df = dc c_prev f (1 - f),
//       dg = dc i (1 - g^2), do = dh tc o (1 - o), each times keep; dG_all[l] = [di, df,
//       dg, do] when has_all; gates <- their sum over the streams (in order
//       l = 0..L-1); DC[l] <- dc f (left as it is on masked rows); with a mask
//       G[l] <- dh (1 - keep), without one G[fresh] <- dh when has_e (G is left for the
//       caller's GEMM to add dG @ W to).
//   rnn_gru_forward_{f32,f64}
//       One GRU step after its GEMM (torch.nn.GRU): gates holds U x + b of [r, z, n] on
//       entry and the activations r, z, n on exit, with A = h_prev W^T (the GEMM's
//       product) and bh the recurrent bias: r = sigma(gates_r + A_r + bh_r),
//       z = sigma(gates_z + A_z + bh_z), hn = A_n + bh_n (kept for backward),
//       n = tanh(gates_n + r hn), h_next = n + z (h_prev - n); rows whose keep is 0 take
//       h_prev.
//   rnn_gru_backward_{f32,f64}
//       One GRU step of BPTT for all L live error streams. With dh = G[l] (+ e in stream
//       `fresh` when has_e): dn = dh (1 - z)(1 - n^2) keep, dz = dh (h_prev - n) z (1 - z)
//       keep, dr = dn hn r (1 - r); dGh_all[l] = [dr, dz, r dn] when has_all (the error
//       at W h + bh); dGh_sum = its sum over the streams, gates <- [sum dr, sum dz,
//       sum dn] (the error at U x + b); G[l] <- dh z (dh on masked rows); when has_x_all,
//       dGx_all[l] = [dr, dz, dn] (each stream's error at U x + b, what a truncated
//       stack sends to the layer below).
//
// One thread per (b, h) unit handles all the gates of that unit and, backward, walks
// the L streams: it reads the unit's gate values, the states and keep once, writes each
// stream's derivatives and the stream sums with no second pass. The in-place updates
// (gates -> activations forward, activations -> summed derivatives backward) are safe
// because each thread reads all of its unit's gate values before it writes any.
//
// Layout, all row-major and C-contiguous: gates (B, 4H) LSTM, (B, 3H) GRU, blocks of H
// columns in the gate order above; A, dGh_sum (B, 3H); bh (3H,); c_prev, c_next, h_prev,
// h_next, hn, e (B, H); G, DC (L, B, H); dG_all (L, B, 4H); dGh_all (L, B, 3H); keep
// (B,) 0/1. keep, e and dG_all / dGh_all are not read (nor written) when has_keep,
// has_e, has_all are 0; without dG_all (L = 1) the one stream's derivatives go straight
// into gates (and dGh_sum). n = B*H, and the gates arrays' B*4H or B*3H, are below 2^31
// (the launchers check); the (L, B, .) arrays are indexed in 64 bits. Each product is
// rounded on its own (no FMA contraction), in the twins' order. NumPy twins:
// rnn_gpu.ops.numpy_ops.lstm_forward, lstm_backward, gru_forward, gru_backward.

#include "rnn_common.cuh"

#ifndef ELEM_BLOCK
#define ELEM_BLOCK 256  // threads per block; the launcher passes the same value
#endif

template <typename T>
__device__ void lstm_forward(T* gates, const T* c_prev, T* c_next, const T* h_prev,
                             T* h_next, const T* keep, int has_keep, int n, int H) {
    RNN_GRID_STRIDE_LOOP(unsigned, i, n) {
        const unsigned b = i / H, h = i - b * H;
        T* gt = gates + 4u * H * b + h;  // gt[k * H]: gate k of this unit
        const T ig = rnn_sigmoid(gt[0]);
        const T fg = rnn_sigmoid(gt[H]);
        const T gg = rnn_tanh(gt[2u * H]);
        const T og = rnn_sigmoid(gt[3u * H]);
        gt[0] = ig;
        gt[H] = fg;
        gt[2u * H] = gg;
        gt[3u * H] = og;
        if (has_keep && keep[b] == T(0)) {
            c_next[i] = c_prev[i];
            h_next[i] = h_prev[i];
        } else {
            const T c = rnn_mul(fg, c_prev[i]) + rnn_mul(ig, gg);
            c_next[i] = c;
            h_next[i] = rnn_mul(rnn_tanh(c), og);
        }
    }
}

template <typename T>
__device__ void lstm_backward(T* G, T* DC, T* gates, const T* c_prev, const T* c_next,
                              const T* keep, int has_keep, const T* e, int has_e, int fresh,
                              T* dG_all, int has_all, int L, int n, int H) {
    RNN_GRID_STRIDE_LOOP(unsigned, i, n) {
        const unsigned b = i / H, h = i - b * H;
        T* gt = gates + 4u * H * b + h;
        const T ig = gt[0], fg = gt[H], gg = gt[2u * H], og = gt[3u * H];
        const T tc = rnn_tanh(c_next[i]);
        const T a_c = rnn_mul(og, T(1) - rnn_mul(tc, tc));      // dc = DC + dh a_c
        T b_o = rnn_mul(rnn_mul(tc, og), T(1) - og);             // do = dh b_o
        T b_i = rnn_mul(rnn_mul(gg, ig), T(1) - ig);             // di = dc b_i
        T b_g = rnn_mul(ig, T(1) - rnn_mul(gg, gg));             // dg = dc b_g
        T b_f = rnn_mul(rnn_mul(c_prev[i], fg), T(1) - fg);      // df = dc b_f
        const T k = has_keep ? keep[b] : T(1);
        if (has_keep) {
            b_o = rnn_mul(b_o, k);
            b_i = rnn_mul(b_i, k);
            b_g = rnn_mul(b_g, k);
            b_f = rnn_mul(b_f, k);
        }
        const T e_i = has_e ? e[i] : T(0);
        T s_i = T(0), s_f = T(0), s_g = T(0), s_o = T(0);
        for (int l = 0; l < L; ++l) {
            const long long j = (long long)l * n + i;  // L*B*H may pass 2^31
            T dh = G[j];
            if (has_e && l == fresh) dh += e_i;
            const T dc = DC[j] + rnn_mul(dh, a_c);
            const T di = rnn_mul(dc, b_i), df = rnn_mul(dc, b_f), dg = rnn_mul(dc, b_g);
            const T dO = rnn_mul(dh, b_o);
            if (has_all) {
                T* d = dG_all + (long long)l * 4 * n + 4u * H * b + h;
                d[0] = di;
                d[H] = df;
                d[2u * H] = dg;
                d[3u * H] = dO;
            }
            s_i += di;
            s_f += df;
            s_g += dg;
            s_o += dO;
            if (!has_keep || k != T(0)) DC[j] = rnn_mul(dc, fg);
            if (has_keep) G[j] = rnn_mul(dh, T(1) - k);
            else if (has_e && l == fresh) G[j] = dh;
        }
        gt[0] = s_i;
        gt[H] = s_f;
        gt[2u * H] = s_g;
        gt[3u * H] = s_o;
    }
}

template <typename T>
__device__ void gru_forward(T* gates, const T* A, const T* bh, const T* h_prev, T* h_next,
                            T* hn, const T* keep, int has_keep, int n, int H) {
    RNN_GRID_STRIDE_LOOP(unsigned, i, n) {
        const unsigned b = i / H, h = i - b * H;
        const unsigned o = 3u * H * b + h;  // gate k of this unit at o + k * H
        const T r = rnn_sigmoid((gates[o] + A[o]) + bh[h]);
        const T z = rnn_sigmoid((gates[o + H] + A[o + H]) + bh[H + h]);
        const T an = A[o + 2u * H] + bh[2u * H + h];
        const T nn = rnn_tanh(gates[o + 2u * H] + rnn_mul(r, an));
        gates[o] = r;
        gates[o + H] = z;
        gates[o + 2u * H] = nn;
        hn[i] = an;
        const T hp = h_prev[i];
        h_next[i] = (has_keep && keep[b] == T(0)) ? hp : rnn_mul(hp - nn, z) + nn;
    }
}

template <typename T>
__device__ void gru_backward(T* G, T* gates, const T* hn, const T* h_prev, const T* keep,
                             int has_keep, const T* e, int has_e, int fresh, T* dGh_all,
                             int has_all, T* dGh_sum, T* dGx_all, int has_x_all, int L,
                             int n, int H) {
    RNN_GRID_STRIDE_LOOP(unsigned, i, n) {
        const unsigned b = i / H, h = i - b * H;
        const unsigned o = 3u * H * b + h;
        const T r = gates[o], z = gates[o + H], nn = gates[o + 2u * H];
        T a_n = rnn_mul(T(1) - z, T(1) - rnn_mul(nn, nn));          // dn = dh a_n
        T a_z = rnn_mul(rnn_mul(h_prev[i] - nn, z), T(1) - z);       // dz = dh a_z
        const T a_r = rnn_mul(rnn_mul(hn[i], r), T(1) - r);          // dr = dn a_r
        T pass = z;  // the part of dh that reaches h_prev directly
        if (has_keep) {
            const T k = keep[b];
            a_n = rnn_mul(a_n, k);
            a_z = rnn_mul(a_z, k);
            pass = rnn_mul(z, k) + (T(1) - k);
        }
        const T e_i = has_e ? e[i] : T(0);
        T s_r = T(0), s_z = T(0), s_rn = T(0), s_n = T(0);
        for (int l = 0; l < L; ++l) {
            const long long j = (long long)l * n + i;  // L*B*H may pass 2^31
            T dh = G[j];
            if (has_e && l == fresh) dh += e_i;
            const T dn = rnn_mul(dh, a_n), dz = rnn_mul(dh, a_z);
            const T dr = rnn_mul(dn, a_r), drn = rnn_mul(dn, r);
            if (has_all) {
                T* d = dGh_all + (long long)l * 3 * n + o;
                d[0] = dr;
                d[H] = dz;
                d[2u * H] = drn;
            }
            if (has_x_all) {
                T* d = dGx_all + (long long)l * 3 * n + o;
                d[0] = dr;
                d[H] = dz;
                d[2u * H] = dn;
            }
            s_r += dr;
            s_z += dz;
            s_rn += drn;
            s_n += dn;
            G[j] = rnn_mul(dh, pass);
        }
        dGh_sum[o] = s_r;
        dGh_sum[o + H] = s_z;
        dGh_sum[o + 2u * H] = s_rn;
        gates[o] = s_r;
        gates[o + H] = s_z;
        gates[o + 2u * H] = s_n;
    }
}

#define RNN_GATES(SUFFIX, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                \
    rnn_lstm_forward_##SUFFIX(T* gates, const T* c_prev, T* c_next, const T* h_prev,        \
                              T* h_next, const T* keep, int has_keep, int n, int H) {       \
        lstm_forward<T>(gates, c_prev, c_next, h_prev, h_next, keep, has_keep, n, H);       \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                \
    rnn_lstm_backward_##SUFFIX(T* G, T* DC, T* gates, const T* c_prev, const T* c_next,     \
                               const T* keep, int has_keep, const T* e, int has_e,          \
                               int fresh, T* dG_all, int has_all, int L, int n, int H) {    \
        lstm_backward<T>(G, DC, gates, c_prev, c_next, keep, has_keep, e, has_e, fresh,     \
                         dG_all, has_all, L, n, H);                                          \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                \
    rnn_gru_forward_##SUFFIX(T* gates, const T* A, const T* bh, const T* h_prev,            \
                             T* h_next, T* hn, const T* keep, int has_keep, int n, int H) { \
        gru_forward<T>(gates, A, bh, h_prev, h_next, hn, keep, has_keep, n, H);             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                \
    rnn_gru_backward_##SUFFIX(T* G, T* gates, const T* hn, const T* h_prev, const T* keep,  \
                              int has_keep, const T* e, int has_e, int fresh, T* dGh_all,   \
                              int has_all, T* dGh_sum, T* dGx_all, int has_x_all, int L,    \
                              int n, int H) {                                               \
        gru_backward<T>(G, gates, hn, h_prev, keep, has_keep, e, has_e, fresh, dGh_all,     \
                        has_all, dGh_sum, dGx_all, has_x_all, L, n, H);                      \
    }

RNN_GATES(f32, float)
RNN_GATES(f64, double)
