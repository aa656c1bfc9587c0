// rnn_forward.cu -- the forward recurrence's pointwise step.
//
// Kernels (suffix _f32: float, _f64: double):
//   rnn_act_forward_{f32,f64}
//       a <- f(a) in place (f = tanh, sigmoid or relu), and rows whose keep is 0 take
//       h_prev instead. Fuses the activation with the mask select; it runs right after
//       the recurrent GEMM, which cuBLAS accumulates (beta = 1) onto U x_t + b.
//
// Layout: a, h_prev (B, H) row-major; keep (B,) 0/1 or unused when has_keep == 0;
// n = B*H < 2^31 (the launcher checks). NumPy twin: rnn_gpu.kernels.act_forward.
// Compiles on its own (nvcc -ptx -Ikernels) and with NVRTC.

#include "rnn_common.cuh"

#ifndef ELEM_BLOCK
#define ELEM_BLOCK 256  // threads per block; the launcher passes the same value
#endif

template <typename T>
__device__ void act_forward(T* a, const T* h_prev, const T* keep, int has_keep,
                            int n, int H, int act) {
    RNN_GRID_STRIDE_LOOP(unsigned, i, n) {
        if (has_keep && keep[i / H] == T(0)) {
            a[i] = h_prev[i];
        } else {
            a[i] = rnn_act(a[i], act);
        }
    }
}

extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
rnn_act_forward_f32(float* a, const float* h_prev, const float* keep, int has_keep,
                    int n, int H, int act) {
    act_forward<float>(a, h_prev, keep, has_keep, n, H, act);
}

extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)
rnn_act_forward_f64(double* a, const double* h_prev, const double* keep, int has_keep,
                    int n, int H, int act) {
    act_forward<double>(a, h_prev, keep, has_keep, n, H, act);
}
