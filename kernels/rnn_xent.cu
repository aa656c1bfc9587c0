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
//       One XENT_BLOCK-thread block per row, whatever O: for a large vocabulary.
//   rnn_softmax_xent_warp_{f32,f64}_{i32,i64}
//       The same results with one warp per row (XENT_WARP_ROWS rows per block), for a
//       small O: each lane keeps its first XENT_WARP_ITEMS entries in registers, takes
//       its own max and sum of exp(z - max), and the lanes' (max, sum) pairs are merged
//       by an online rescaling (sum_a e^(max_a - max) + sum_b e^(max_b - max)), so no
//       separate max pass crosses the warp; the exps kept in registers are rescaled
//       once at the write. A row of O <= 32 * XENT_WARP_ITEMS is read once and takes
//       one exp per entry; entries past that are read again (sum, write) as above.
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
#ifndef XENT_WARP_ROWS
#define XENT_WARP_ROWS 8  // rows per block in the one-warp-per-row version (warps)
#endif
#ifndef XENT_WARP_ITEMS
#define XENT_WARP_ITEMS 8  // entries per lane in registers: O <= 32 * this is read once
#endif
#if XENT_WARP_ROWS < 1 || XENT_WARP_ROWS > 32 || XENT_WARP_ITEMS < 1
#error "XENT_WARP_ROWS must be in [1, 32] and XENT_WARP_ITEMS at least 1"
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

// The sum of a pair (max, sum of exp(z - max)) rescaled to a new max m: an empty pair
// (sum 0, max -inf) adds 0, not NaN. Round-to-nearest products: the two lanes of a
// butterfly step then compute bit-equal merged pairs, so every lane ends with the same.
template <typename T>
__device__ __forceinline__ T rescaled(T sum, T max, T m) {
    return sum == T(0) ? T(0) : rnn_mul(sum, rnn_exp(max - m));
}

template <typename T, typename I>
__device__ void softmax_xent_warp(T* logits, const I* y, const T* keep, int has_keep,
                                  T* loss, int N, int O) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * XENT_WARP_ROWS + (threadIdx.x >> 5);
    if (row >= N) return;  // the whole warp: no shuffle below is left short of lanes
    T* z = logits + row * (long long)O;
    if (has_keep && keep[row] == T(0)) {
        for (int j = lane; j < O; j += 32) z[j] = T(0);
        if (lane == 0) loss[row] = T(0);
        return;
    }
    const long long yl = (long long)y[row];
    const bool y_ok = yl >= 0 && yl < O;
    const int yi = y_ok ? (int)yl : -1;  // O < 2^31: the id fits an int
    // Read z_y before the lanes write the row (the writes follow the shuffles).
    const T zy = (lane == 0 && y_ok) ? z[yi] : T(0);
    constexpr int KEPT = 32 * XENT_WARP_ITEMS;  // entries held in registers

    T v[XENT_WARP_ITEMS];
    T ml = rnn_neg_inf(T(0));
#pragma unroll
    for (int i = 0; i < XENT_WARP_ITEMS; ++i) {
        const int j = lane + 32 * i;
        v[i] = j < O ? z[j] : rnn_neg_inf(T(0));
        ml = rnn_fmax(ml, v[i]);
    }
    for (int j = KEPT + lane; j < O; j += 32) ml = rnn_fmax(ml, z[j]);
    T s = T(0);
#pragma unroll
    for (int i = 0; i < XENT_WARP_ITEMS; ++i) {
        if (lane + 32 * i < O) {
            v[i] = rnn_exp(v[i] - ml);
            s += v[i];
        }
    }
    for (int j = KEPT + lane; j < O; j += 32) s += rnn_exp(z[j] - ml);

    T m = ml;  // merge the lanes' pairs: every lane ends with the row's max and sum
    for (int offset = 16; offset > 0; offset >>= 1) {
        const T mo = __shfl_xor_sync(0xffffffffu, m, offset);
        const T so = __shfl_xor_sync(0xffffffffu, s, offset);
        const T mn = rnn_fmax(m, mo);
        s = rescaled(s, m, mn) + rescaled(so, mo, mn);
        m = mn;
    }
    const T inv = T(1) / s;
    const T scale = lane < O ? rnn_mul(rnn_exp(ml - m), inv) : T(0);  // lane has entries
#pragma unroll
    for (int i = 0; i < XENT_WARP_ITEMS; ++i) {
        const int j = lane + 32 * i;
        if (j < O) {
            T p = rnn_mul(v[i], scale);
            if (j == yi) p -= T(1);
            z[j] = p;
        }
    }
    for (int j = KEPT + lane; j < O; j += 32) {
        T p = rnn_exp(z[j] - m) * inv;
        if (j == yi) p -= T(1);
        z[j] = p;
    }
    if (lane == 0) loss[row] = y_ok ? rnn_log(s) - (zy - m) : rnn_nan(T(0));
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
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * XENT_WARP_ROWS)                       \
    rnn_softmax_xent_warp_##SUFFIX(T* logits, const I* y, const T* keep, int has_keep,     \
                                   T* loss, int N, int O) {                                \
        softmax_xent_warp<T, I>(logits, y, keep, has_keep, loss, N, O);                    \
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
