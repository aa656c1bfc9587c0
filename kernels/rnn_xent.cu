// rnn_xent.cu -- output layer losses: loss per row and, in place, dL/dlogits.
//
// One block per row of logits (N, O); each thread strides over the row, and block
// reductions use warp shuffles plus one shared-memory word per warp. Rows whose keep is
// 0 get loss 0 and error 0 without being read. Any O works (50,000 and more); O need not
// be a multiple of the block size.
//
// Kernels (suffix _f32: float, _f64: double; _i32 / _i64: type of the class ids y):
//   rnn_softmax_xent_{f32,f64}_{i32,i64}
//       Softmax + cross-entropy: row max, sum of exp(z - max), loss = log(sum) - (z_y - max),
//       and z <- softmax(z) - onehot(y) in place. Fuses forward, loss and backward; the
//       row is read three times (max, sum, write), from L2 after the first pass.
//   rnn_sigmoid_bce_{f32,f64}
//       Sigmoid + binary cross-entropy: loss = sum_k softplus(z) - d z, and
//       z <- sigmoid(z) - d in place, in one pass.
//   rnn_squared_error_{f32,f64}
//       Linear output + squared error: z <- z - d in place, loss = 1/2 sum_k (z - d)^2,
//       in one pass.
//
// NumPy twins: rnn_gpu.kernels.softmax_xent, sigmoid_bce, squared_error.

#include "rnn_common.cuh"

#ifndef XENT_BLOCK
#define XENT_BLOCK 256  // threads per row; a multiple of 32, at most 1024
#endif

#if (XENT_BLOCK % 32) != 0 || XENT_BLOCK > 1024 || XENT_BLOCK < 32
#error "XENT_BLOCK must be a multiple of 32 in [32, 1024]"
#endif

struct SumOp {
    template <typename T> __device__ __forceinline__ T operator()(T x, T y) const { return x + y; }
};
struct MaxOp {
    template <typename T> __device__ __forceinline__ T operator()(T x, T y) const {
        return rnn_fmax(x, y);
    }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The reduction of v over the block, returned to every thread. blockDim.x is XENT_BLOCK,
// a multiple of 32, so every warp is full. shm holds one value per warp.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shm, Op op, T identity) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // the previous call's readers of shm[0] are done
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (XENT_BLOCK / 32) ? shm[lane] : identity;
        v = warp_reduce(v, op);
        if (lane == 0) shm[0] = v;
    }
    __syncthreads();
    return shm[0];
}

// A row whose keep is 0 gets loss 0 and error 0 without being read; returns whether the
// row was one. The test is uniform over the block, so the whole block returns and no
// reduction runs.
template <typename T>
__device__ __forceinline__ bool masked_row(T* z, const T* keep, int has_keep, T* loss,
                                           long long row, int O) {
    if (has_keep && keep[row] == T(0)) {
        for (int j = threadIdx.x; j < O; j += XENT_BLOCK) z[j] = T(0);
        if (threadIdx.x == 0) loss[row] = T(0);
        return true;
    }
    return false;
}

template <typename T, typename I>
__device__ void softmax_xent(T* logits, const I* y, const T* keep, int has_keep, T* loss,
                             int O) {
    const long long row = blockIdx.x;
    T* z = logits + row * (long long)O;
    if (masked_row(z, keep, has_keep, loss, row, O)) return;
    const long long yi = (long long)y[row];
    const bool y_ok = yi >= 0 && yi < O;
    // Read z_y before any thread overwrites the row (the write pass follows two barriers).
    const T zy = (threadIdx.x == 0 && y_ok) ? z[yi] : T(0);

    __shared__ T shm[32];  // block_reduce's word per warp
    T m = rnn_neg_inf(T(0));
    for (int j = threadIdx.x; j < O; j += XENT_BLOCK) m = rnn_fmax(m, z[j]);
    m = block_reduce(m, shm, MaxOp(), rnn_neg_inf(T(0)));

    T s = T(0);
    for (int j = threadIdx.x; j < O; j += XENT_BLOCK) s += rnn_exp(z[j] - m);
    s = block_reduce(s, shm, SumOp(), T(0));

    const T inv = T(1) / s;
    for (int j = threadIdx.x; j < O; j += XENT_BLOCK) {
        T p = rnn_exp(z[j] - m) * inv;
        if (j == yi) p -= T(1);
        z[j] = p;
    }
    if (threadIdx.x == 0) {
        // An id out of range (the model validates ids; launchers cannot without a sync)
        // gives a NaN loss rather than a read out of bounds.
        loss[row] = y_ok ? rnn_log(s) - (zy - m) : rnn_nan(T(0));
    }
}

// softplus(z) = log(1 + e^z), written so that it never overflows (as numpy.logaddexp(0, z)).
template <typename T>
__device__ __forceinline__ T rnn_softplus(T z) {
    return z > T(0) ? z + rnn_log1p(rnn_exp(-z)) : rnn_log1p(rnn_exp(z));
}

// The losses of one pass over the row: the sum of a term per entry, each z turned into
// dL/dz as it is read.
enum OnePassLoss { SIGMOID_BCE, SQUARED_ERROR };

template <typename T, OnePassLoss LOSS>
__device__ void one_pass_loss(T* logits, const T* d, const T* keep, int has_keep, T* loss,
                              int O) {
    const long long row = blockIdx.x;
    T* z = logits + row * (long long)O;
    const T* dr = d + row * (long long)O;
    if (masked_row(z, keep, has_keep, loss, row, O)) return;
    T acc = T(0);
    for (int j = threadIdx.x; j < O; j += XENT_BLOCK) {
        const T zj = z[j], dj = dr[j];
        if (LOSS == SIGMOID_BCE) {
            acc += rnn_softplus(zj) - dj * zj;
            z[j] = rnn_sigmoid(zj) - dj;
        } else {
            const T r = zj - dj;
            z[j] = r;
            acc += r * r;
        }
    }
    __shared__ T shm[32];  // block_reduce's word per warp
    acc = block_reduce(acc, shm, SumOp(), T(0));
    if (threadIdx.x == 0) loss[row] = LOSS == SIGMOID_BCE ? acc : T(0.5) * acc;
}

#define RNN_XENT_SOFTMAX(SUFFIX, T, I)                                                      \
    extern "C" __global__ void __launch_bounds__(XENT_BLOCK)                                \
    rnn_softmax_xent_##SUFFIX(T* logits, const I* y, const T* keep, int has_keep, T* loss, \
                              int O) {                                                     \
        softmax_xent<T, I>(logits, y, keep, has_keep, loss, O);                            \
    }

RNN_XENT_SOFTMAX(f32_i32, float, int)
RNN_XENT_SOFTMAX(f32_i64, float, long long)
RNN_XENT_SOFTMAX(f64_i32, double, int)
RNN_XENT_SOFTMAX(f64_i64, double, long long)

#define RNN_XENT_ONE_PASS(SUFFIX, T)                                                        \
    extern "C" __global__ void __launch_bounds__(XENT_BLOCK)                                \
    rnn_sigmoid_bce_##SUFFIX(T* logits, const T* d, const T* keep, int has_keep, T* loss,   \
                             int O) {                                                      \
        one_pass_loss<T, SIGMOID_BCE>(logits, d, keep, has_keep, loss, O);                 \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(XENT_BLOCK)                                \
    rnn_squared_error_##SUFFIX(T* logits, const T* d, const T* keep, int has_keep, T* loss, \
                               int O) {                                                    \
        one_pass_loss<T, SQUARED_ERROR>(logits, d, keep, has_keep, loss, O);               \
    }

RNN_XENT_ONE_PASS(f32, float)
RNN_XENT_ONE_PASS(f64, double)
