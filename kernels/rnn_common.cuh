// rnn_common.cuh -- what the kernel files share; included by each kernels/*.cu.
//
//   RNN_ACT_{TANH,SIGMOID,RELU}   activation codes (rnn_gpu.cuda_ops._ACT passes the same)
//   rnn_exp, rnn_log, rnn_log1p, rnn_tanh, rnn_fmax, rnn_mul, rnn_neg_inf, rnn_nan
//                                 float / double overloads of the math the kernels call
//   rnn_sigmoid, rnn_act, rnn_act_grad
//                                 the activations f(a) and their derivatives f'(s)
//                                 written through the state s = f(a), as the NumPy twins
//   RNN_GRID_STRIDE_LOOP          a loop over 0..n-1 shared by all the threads of a grid
//
// No tunables here: each stays an #ifndef default in the file that uses it.

#ifndef RNN_COMMON_CUH
#define RNN_COMMON_CUH

#define RNN_ACT_TANH 0
#define RNN_ACT_SIGMOID 1
#define RNN_ACT_RELU 2

__device__ __forceinline__ float rnn_exp(float x) { return expf(x); }
__device__ __forceinline__ double rnn_exp(double x) { return exp(x); }
__device__ __forceinline__ float rnn_log(float x) { return logf(x); }
__device__ __forceinline__ double rnn_log(double x) { return log(x); }
__device__ __forceinline__ float rnn_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double rnn_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float rnn_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double rnn_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float rnn_fmax(float x, float y) { return fmaxf(x, y); }
__device__ __forceinline__ double rnn_fmax(double x, double y) { return fmax(x, y); }
// Round-to-nearest products: the twin computes s*s (or (1-s)*s) and then the rest; keeping
// the compiler from contracting into an FMA makes f'(s) bit-equal to NumPy's.
__device__ __forceinline__ float rnn_mul(float x, float y) { return __fmul_rn(x, y); }
__device__ __forceinline__ double rnn_mul(double x, double y) { return __dmul_rn(x, y); }
__device__ __forceinline__ float rnn_neg_inf(float) { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ double rnn_neg_inf(double) {
    return -__longlong_as_double(0x7ff0000000000000LL);
}
__device__ __forceinline__ float rnn_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double rnn_nan(double) {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// The same formulas as the twins: sigmoid as (1 + tanh(a/2)) / 2 never overflows.
template <typename T>
__device__ __forceinline__ T rnn_sigmoid(T a) {
    return T(0.5) * (T(1) + rnn_tanh(T(0.5) * a));
}

template <typename T>
__device__ __forceinline__ T rnn_act(T a, int act) {
    if (act == RNN_ACT_TANH) return rnn_tanh(a);
    if (act == RNN_ACT_SIGMOID) return rnn_sigmoid(a);
    return a > T(0) ? a : T(0);  // relu
}

template <typename T>
__device__ __forceinline__ T rnn_act_grad(T s, int act) {
    if (act == RNN_ACT_TANH) return T(1) - rnn_mul(s, s);
    if (act == RNN_ACT_SIGMOID) return rnn_mul(T(1) - s, s);
    return s > T(0) ? T(1) : T(0);  // relu
}

// RNN_GRID_STRIDE_LOOP(I, i, n) { ... }: the body runs once for each i in 0..n-1, spread
// over the grid: each thread starts at its global index and steps by the grid's size, so
// any grid covers any n. I is the index type: unsigned where the launcher checks that
// n < 2^31 (i + stride cannot wrap, and i / H is a cheap 32-bit division), else long long.
#define RNN_GRID_STRIDE_LOOP(I, i, n)                                                       \
    for (I i##_stride = (I)gridDim.x * blockDim.x,                                         \
           i = (I)blockIdx.x * blockDim.x + threadIdx.x;                                   \
         i < (I)(n); i += i##_stride)

#endif  // RNN_COMMON_CUH
