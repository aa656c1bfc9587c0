// rnn_backward.cu -- the backward recurrence's pointwise steps (the seed's delta update).
//
// Kernels (suffix _f32: float, _f64: double):
//   rnn_delta_step_{f32,f64}
//       Full BPTT, one step: c = carry + e; dz = c * f'(s) * keep; carry <- c * (1 - keep)
//       (carry <- c without a mask). Fuses the add of this step's output error, the
//       derivative f'(s) written through the state s = f(a) (tanh: 1 - s^2, sigmoid:
//       s (1 - s), relu: s > 0) and the mask. The carry W^T dz_{t+1} comes from one
//       cuBLAS GEMM per step, outside this kernel. dz may be the same array as e.
//   rnn_trunc_delta_step_{f32,f64}
//       Per-output truncated BPTT, one step for all L live error streams at once:
//       dz_all[l] = G[l] * f'(s) * keep, dz_sum = sum_l dz_all[l] (in order l = 0..L-1),
//       G[l] <- G[l] * (1 - keep) with a mask. One thread per (b, h) walks the L streams,
//       so f'(s) and keep are read once and the stream sum needs no second pass.
//
// Layout: carry, e, s, dz (B, H); G, dz_all (L, B, H); keep (B,) 0/1, unused when
// has_keep == 0; n = B*H < 2^31 (the launchers check). NumPy twins:
// rnn_gpu.kernels.delta_step, trunc_delta_step.

#include "rnn_common.cuh"

#ifndef ELEM_BLOCK
#define ELEM_BLOCK 256  // threads per block; the launcher passes the same value
#endif

template <typename T>
__device__ void delta_step(T* carry, const T* e, const T* s, const T* keep, int has_keep,
                           T* dz, int n, int H, int act) {
    RNN_GRID_STRIDE_LOOP(unsigned, i, n) {
        T c = carry[i] + e[i];  // e is read before dz is written: they may alias
        T d = rnn_mul(rnn_act_grad(s[i], act), c);
        if (has_keep) {
            const T k = keep[i / H];
            d = rnn_mul(d, k);
            c = rnn_mul(c, T(1) - k);
        }
        carry[i] = c;
        dz[i] = d;
    }
}

template <typename T>
__device__ void trunc_delta_step(T* G, const T* s, const T* keep, int has_keep, T* dz_all,
                                 T* dz_sum, int L, int n, int H, int act) {
    RNN_GRID_STRIDE_LOOP(unsigned, i, n) {
        T fp = rnn_act_grad(s[i], act);
        const T k = has_keep ? keep[i / H] : T(1);
        if (has_keep) fp = rnn_mul(fp, k);
        T sum = T(0);
        for (int l = 0; l < L; ++l) {
            const long long j = (long long)l * n + i;  // L*B*H may pass 2^31
            const T g = G[j];
            const T d = rnn_mul(g, fp);
            dz_all[j] = d;
            sum += d;
            if (has_keep) G[j] = rnn_mul(g, T(1) - k);
        }
        dz_sum[i] = sum;
    }
}

extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
rnn_delta_step_f32(float* carry, const float* e, const float* s, const float* keep,
                   int has_keep, float* dz, int n, int H, int act) {
    delta_step<float>(carry, e, s, keep, has_keep, dz, n, H, act);
}

extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
rnn_delta_step_f64(double* carry, const double* e, const double* s, const double* keep,
                   int has_keep, double* dz, int n, int H, int act) {
    delta_step<double>(carry, e, s, keep, has_keep, dz, n, H, act);
}

extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
rnn_trunc_delta_step_f32(float* G, const float* s, const float* keep, int has_keep,
                         float* dz_all, float* dz_sum, int L, int n, int H, int act) {
    trunc_delta_step<float>(G, s, keep, has_keep, dz_all, dz_sum, L, n, H, act);
}

extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
rnn_trunc_delta_step_f64(double* G, const double* s, const double* keep, int has_keep,
                         double* dz_all, double* dz_sum, int L, int n, int H, int act) {
    trunc_delta_step<double>(G, s, keep, has_keep, dz_all, dz_sum, L, n, H, act);
}
