// rnn_adaptive.cu -- the adaptive softmax's kernels (rnn_gpu.heads.adaptive): which rows go
// to which cluster, the gather and scatter of one cluster's rows, and its loss.
//
// Kernels (suffix _f32: float, _f64: double; _i32 / _i64: type of the class ids y):
//   rnn_adaptive_partition_{i32,i64}
//       One block per tail cluster i: a stable partition of the rows 0..N-1 by cluster.
//       idx[i, 0:counts[i]] = the rows whose target is in [bounds[i], bounds[i+1]),
//       ascending (a block-wide prefix sum of the row flags, SCAN_BLOCK rows at a time);
//       the rest of idx[i] is not written. Also the head's target of every row:
//       y for the shortlist (written by block 0), bounds[0] + i for cluster i (block i),
//       -1 for an id outside [0, O) (block 0; the loss kernel turns it into a NaN loss).
//       Counts stay on the device: nothing here needs a host read.
//   rnn_adaptive_gather_{f32,f64}_{i32,i64}
//       One cluster's rows into fixed-size buffers of R rows: for r < k = min(count, R),
//       Sg[r, :] = S[idx[r], :], tg[r] = y[idx[r]] - lo, wg[r] = w[idx[r]] (1 without w);
//       rows k <= r < R are zeros of weight 0 (so GEMMs over all R rows stay exact).
//   rnn_adaptive_scatter_add_{f32,f64}
//       dS[idx[r], :] += dSg[r, :] for r < min(count, R): errors (or losses, F = 1) back
//       to their rows. A cluster's rows are distinct, so plain adds, no atomics: the
//       result is deterministic.
//   rnn_weighted_xent_{f32,f64}
//       Softmax + cross-entropy with a float weight per row, one block per row, in place:
//       loss = w (logsumexp(z) - z_y), z <- w (softmax(z) - onehot(y)). Rows of weight 0
//       get zeros without being read. The targets are int32 (the head's own buffers).
//
// NumPy twins: rnn_gpu.ops.numpy_ops.adaptive_partition, adaptive_gather,
// adaptive_scatter_add, weighted_xent.

#include "rnn_common.cuh"

#ifndef ELEM_BLOCK
#define ELEM_BLOCK 256  // threads per block for gather and scatter
#endif
#ifndef XENT_BLOCK
#define XENT_BLOCK 256  // threads per row in the loss; a multiple of 32, at most 1024
#endif
#ifndef SCAN_BLOCK
#define SCAN_BLOCK 256  // rows per step of the partition's prefix sum (threads per block)
#endif

#if (XENT_BLOCK % 32) != 0 || XENT_BLOCK > 1024 || XENT_BLOCK < 32
#error "XENT_BLOCK must be a multiple of 32 in [32, 1024]"
#endif
#if SCAN_BLOCK > 1024 || SCAN_BLOCK < 1
#error "SCAN_BLOCK must be in [1, 1024]"
#endif

// ---- partition ---------------------------------------------------------------------

// The cluster of id v: -1 for the shortlist [0, bounds[0]), i for [bounds[i], bounds[i+1]),
// n (no cluster) outside [0, O).
template <typename I>
__device__ __forceinline__ int adaptive_cluster(I v, const long long* bounds, int n) {
    const long long y = (long long)v;
    if (y < 0 || y >= bounds[n]) return n;
    if (y < bounds[0]) return -1;
    int c = 0;
    while (c + 1 < n && y >= bounds[c + 1]) ++c;
    return c;
}

template <typename I>
__device__ void adaptive_partition(const I* y, const long long* bounds, int n, int N,
                                   int* head_target, int* idx, int* counts) {
    __shared__ int scan[2][SCAN_BLOCK];  // double-buffered Hillis-Steele prefix sum
    const int i = blockIdx.x, tid = threadIdx.x;
    int base = 0;  // rows of cluster i found so far
    for (int start = 0; start < N; start += SCAN_BLOCK) {
        const int r = start + tid;
        int flag = 0;
        if (r < N) {
            const int c = adaptive_cluster(y[r], bounds, n);
            flag = c == i;
            if (flag) head_target[r] = (int)bounds[0] + i;
            if (i == 0 && c == -1) head_target[r] = (int)y[r];
            if (i == 0 && c == n) head_target[r] = -1;
        }
        int cur = 0;
        scan[cur][tid] = flag;
        __syncthreads();
        for (int off = 1; off < SCAN_BLOCK; off <<= 1) {
            const int v = scan[cur][tid] + (tid >= off ? scan[cur][tid - off] : 0);
            cur ^= 1;
            scan[cur][tid] = v;
            __syncthreads();
        }
        if (flag) idx[(long long)i * N + base + scan[cur][tid] - 1] = r;  // inclusive - 1
        base += scan[cur][SCAN_BLOCK - 1];
        __syncthreads();  // every thread has read the total before the next step writes
    }
    if (tid == 0) counts[i] = base;
}

#define RNN_ADAPTIVE_PARTITION(SUFFIX, I)                                                    \
    extern "C" __global__ void __launch_bounds__(SCAN_BLOCK)                                 \
    rnn_adaptive_partition_##SUFFIX(const I* y, const long long* bounds, int n, int N,      \
                                    int* head_target, int* idx, int* counts) {              \
        adaptive_partition<I>(y, bounds, n, N, head_target, idx, counts);                   \
    }

RNN_ADAPTIVE_PARTITION(i32, int)
RNN_ADAPTIVE_PARTITION(i64, long long)

// ---- gather and scatter ------------------------------------------------------------

template <typename T, typename I>
__device__ void adaptive_gather(const T* S, const I* y, const T* w, int has_w, const int* idx,
                                const int* count, long long lo, T* Sg, int* tg, T* wg, int R,
                                int F) {
    const int k = *count < R ? *count : R;
    RNN_GRID_STRIDE_LOOP(long long, e, (long long)R * F) {
        const long long r = e / F;
        const int f = (int)(e - r * F);
        if (r < k) {
            const long long row = idx[r];
            Sg[e] = S[row * F + f];
            if (f == 0) {
                tg[r] = (int)((long long)y[row] - lo);
                wg[r] = has_w ? w[row] : T(1);
            }
        } else {
            Sg[e] = T(0);
            if (f == 0) {
                tg[r] = 0;
                wg[r] = T(0);
            }
        }
    }
}

template <typename T>
__device__ void adaptive_scatter_add(T* dS, const int* idx, const int* count, const T* dSg,
                                     int R, int F) {
    const long long n = (long long)(*count < R ? *count : R) * F;
    RNN_GRID_STRIDE_LOOP(long long, e, n) {
        const long long r = e / F;
        const int f = (int)(e - r * F);
        dS[(long long)idx[r] * F + f] += dSg[e];
    }
}

#define RNN_ADAPTIVE_GATHER(SUFFIX, T, I)                                                    \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                 \
    rnn_adaptive_gather_##SUFFIX(const T* S, const I* y, const T* w, int has_w,             \
                                 const int* idx, const int* count, long long lo, T* Sg,     \
                                 int* tg, T* wg, int R, int F) {                            \
        adaptive_gather<T, I>(S, y, w, has_w, idx, count, lo, Sg, tg, wg, R, F);            \
    }

RNN_ADAPTIVE_GATHER(f32_i32, float, int)
RNN_ADAPTIVE_GATHER(f32_i64, float, long long)
RNN_ADAPTIVE_GATHER(f64_i32, double, int)
RNN_ADAPTIVE_GATHER(f64_i64, double, long long)

#define RNN_ADAPTIVE_SCATTER(SUFFIX, T)                                                      \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                 \
    rnn_adaptive_scatter_add_##SUFFIX(T* dS, const int* idx, const int* count, const T* dSg, \
                                      int R, int F) {                                       \
        adaptive_scatter_add<T>(dS, idx, count, dSg, R, F);                                 \
    }

RNN_ADAPTIVE_SCATTER(f32, float)
RNN_ADAPTIVE_SCATTER(f64, double)

// ---- the weighted loss -------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T adaptive_warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ __forceinline__ T adaptive_warp_max(T v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = rnn_fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The sum (is_max false) or max of v over the block, returned to every thread. blockDim.x
// is XENT_BLOCK, a multiple of 32, so every warp is full. shm: one value per warp.
template <typename T>
__device__ T adaptive_block_reduce(T v, T* shm, bool is_max) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = is_max ? adaptive_warp_max(v) : adaptive_warp_sum(v);
    __syncthreads();  // the previous call's readers of shm[0] are done
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const T identity = is_max ? rnn_neg_inf(T(0)) : T(0);
        v = lane < (XENT_BLOCK / 32) ? shm[lane] : identity;
        v = is_max ? adaptive_warp_max(v) : adaptive_warp_sum(v);
        if (lane == 0) shm[0] = v;
    }
    __syncthreads();
    return shm[0];
}

template <typename T>
__device__ void weighted_xent(T* logits, const int* y, const T* w, int has_w, T* loss, int K) {
    const long long row = blockIdx.x;
    T* z = logits + row * (long long)K;
    const T weight = has_w ? w[row] : T(1);
    if (weight == T(0)) {  // uniform over the block: the whole block returns here
        for (int j = threadIdx.x; j < K; j += XENT_BLOCK) z[j] = T(0);
        if (threadIdx.x == 0) loss[row] = T(0);
        return;
    }
    const int yi = y[row];
    const bool y_ok = yi >= 0 && yi < K;
    const T zy = (threadIdx.x == 0 && y_ok) ? z[yi] : T(0);  // read before the row is written

    __shared__ T shm[32];
    T m = rnn_neg_inf(T(0));
    for (int j = threadIdx.x; j < K; j += XENT_BLOCK) m = rnn_fmax(m, z[j]);
    m = adaptive_block_reduce(m, shm, true);
    T s = T(0);
    for (int j = threadIdx.x; j < K; j += XENT_BLOCK) s += rnn_exp(z[j] - m);
    s = adaptive_block_reduce(s, shm, false);

    const T inv = T(1) / s;
    for (int j = threadIdx.x; j < K; j += XENT_BLOCK) {
        T p = rnn_exp(z[j] - m) * inv;
        if (j == yi) p -= T(1);
        z[j] = p * weight;
    }
    if (threadIdx.x == 0) loss[row] = y_ok ? (rnn_log(s) - (zy - m)) * weight : rnn_nan(T(0));
}

extern "C" __global__ void __launch_bounds__(XENT_BLOCK)
rnn_weighted_xent_f32(float* logits, const int* y, const float* w, int has_w, float* loss,
                      int K) {
    weighted_xent<float>(logits, y, w, has_w, loss, K);
}

extern "C" __global__ void __launch_bounds__(XENT_BLOCK)
rnn_weighted_xent_f64(double* logits, const int* y, const double* w, int has_w, double* loss,
                      int K) {
    weighted_xent<double>(logits, y, w, has_w, loss, K);
}
