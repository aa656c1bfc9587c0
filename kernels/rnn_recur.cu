// rnn_recur.cu -- the recurrence's time steps as single kernels: the B x H x H product
// of one step and its pointwise update in one launch, without cuBLAS.
//
// Kernels (suffix _f32: float, _f64: double):
//   rnn_recur_forward_{f32,f64}
//       One forward step: s_next <- f(s_next + s_prev @ Wmat), rows whose keep is 0 take
//       s_prev. s_next holds U x_t + b on entry. Fuses the recurrent GEMM with the
//       activation and the mask select of the act_forward kernel (rnn_forward.cu) as its
//       epilogue.
//   rnn_recur_backward_{f32,f64}
//       One step of full BPTT: c = dz_next @ Wmat + carry + e (carry only with a mask,
//       dz_next only when has_next), dz = c f'(s) keep, carry <- c (1 - keep). Fuses the
//       GEMM that moves the error of step t+1 back a step with the delta update of the
//       delta_step kernel (rnn_backward.cu) as its epilogue. carry is the part that
//       passes through masked steps only (zeros before the first step); dz may be e.
//   rnn_recur_trunc_backward_{f32,f64}
//       One step of per-output truncated BPTT for all L live error streams: for l != fresh
//       g_l = dz_prev[l] @ Wmat + G[l] (G only with a mask, dz_prev only when has_prev),
//       g_fresh = e (the stream of this step's own output starts here); then
//       dz_all[l] = g_l f'(s) keep, dz_sum = sum_l dz_all[l] (in order l = 0..L-1),
//       G[l] <- g_l (1 - keep). Fuses the (L*B) x H x H GEMM with the epilogue of the
//       trunc_delta_step kernel (rnn_backward.cu); a block walks the L streams of its
//       tile, so the stream sum needs no second pass. dz_sum may be e; dz_prev and
//       dz_all must be different buffers.
//
// Wmat (H, H) is read through a pointer and two strides: Wmat[k, n] = w[k * sk + n * sn].
// The forward step's Wmat is W^T, which a row-major W gives as (sk, sn) = (1, H); the
// backward steps' Wmat is W, (sk, sn) = (H, 1). Every other array is row-major and
// C-contiguous: s_prev, s_next, carry, e, s, dz, dz_sum (B, H); G, dz_prev, dz_all
// (L, B, H); keep (B,) 0/1, unused when has_keep == 0.
//
// Tiling: a block owns a RECUR_TM x RECUR_TN tile of the (B, H) output and walks k in
// slabs of RECUR_TK staged in shared memory (zeros past the edges, so no size needs to
// be a multiple of a tile); each of its RECUR_TX x RECUR_TY threads keeps an RM x RN
// register tile whose rows are RECUR_TY apart and columns RECUR_TX apart (coalesced
// stores). Each output is summed in order k = 0..H-1: deterministic. The tiles are
// small because B is small: the recurrent GEMM of one step has few rows, and small tiles
// spread them over more blocks. NumPy twins: rnn_gpu.ops.numpy_ops.recur_forward,
// recur_backward, recur_trunc_backward.

#include "rnn_common.cuh"

#ifndef RECUR_TM
#define RECUR_TM 32  // output rows (batch) per block
#endif
#ifndef RECUR_TN
#define RECUR_TN 32  // output columns (hidden units) per block
#endif
#ifndef RECUR_TK
#define RECUR_TK 32  // k per shared-memory slab
#endif
#ifndef RECUR_TX
#define RECUR_TX 16  // threads along the columns (threadIdx.x)
#endif
#ifndef RECUR_TY
#define RECUR_TY 8  // threads along the rows (threadIdx.y)
#endif

#if (RECUR_TM % RECUR_TY) != 0 || (RECUR_TN % RECUR_TX) != 0
#error "RECUR_TM must be a multiple of RECUR_TY and RECUR_TN of RECUR_TX"
#endif
#define RECUR_THREADS (RECUR_TX * RECUR_TY)
#define RECUR_RM (RECUR_TM / RECUR_TY)  // outputs per thread along the rows
#define RECUR_RN (RECUR_TN / RECUR_TX)  // outputs per thread along the columns

// acc[i][j] = sum_k A[m0 + ty + i*TY, k] Wmat[k, n0 + tx + j*TX] for the block's tile:
// A (M, K) row-major, Wmat (K, N) through w, sk, sn. Every thread of the block calls it.
template <typename T>
__device__ __forceinline__ void recur_tile_gemm(const T* __restrict__ A, int M, int K,
                                                const T* __restrict__ w, long long sk,
                                                long long sn, int N, int m0, int n0,
                                                T (&acc)[RECUR_RM][RECUR_RN]) {
    __shared__ T As[RECUR_TK][RECUR_TM + 1];  // As[kk][mm] = A[m0 + mm, k0 + kk]
    __shared__ T Bs[RECUR_TK][RECUR_TN + 1];  // Bs[kk][nn] = Wmat[k0 + kk, n0 + nn]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * RECUR_TX + tx;
#pragma unroll
    for (int i = 0; i < RECUR_RM; ++i)
#pragma unroll
        for (int j = 0; j < RECUR_RN; ++j) acc[i][j] = T(0);

    for (int k0 = 0; k0 < K; k0 += RECUR_TK) {
        // Stage the slab: consecutive threads take consecutive addresses (k runs along a
        // row of A; along Wmat, whichever index has stride 1).
        for (int idx = tid; idx < RECUR_TK * RECUR_TM; idx += RECUR_THREADS) {
            const int kk = idx % RECUR_TK, mm = idx / RECUR_TK;
            const int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? A[(long long)m * K + k] : T(0);
        }
        if (sn == 1) {
            for (int idx = tid; idx < RECUR_TK * RECUR_TN; idx += RECUR_THREADS) {
                const int nn = idx % RECUR_TN, kk = idx / RECUR_TN;
                const int n = n0 + nn, k = k0 + kk;
                Bs[kk][nn] = (n < N && k < K) ? w[k * sk + n] : T(0);
            }
        } else {
            for (int idx = tid; idx < RECUR_TK * RECUR_TN; idx += RECUR_THREADS) {
                const int kk = idx % RECUR_TK, nn = idx / RECUR_TK;
                const int n = n0 + nn, k = k0 + kk;
                Bs[kk][nn] = (n < N && k < K) ? w[k * sk + n * sn] : T(0);
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < RECUR_TK; ++kk) {
            T av[RECUR_RM], bv[RECUR_RN];
#pragma unroll
            for (int i = 0; i < RECUR_RM; ++i) av[i] = As[kk][ty + i * RECUR_TY];
#pragma unroll
            for (int j = 0; j < RECUR_RN; ++j) bv[j] = Bs[kk][tx + j * RECUR_TX];
#pragma unroll
            for (int i = 0; i < RECUR_RM; ++i)
#pragma unroll
                for (int j = 0; j < RECUR_RN; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();  // the slab is read by all before the next one overwrites it
    }
}

template <typename T>
__device__ void recur_forward(const T* __restrict__ s_prev, const T* __restrict__ w,
                              long long sk, long long sn, T* __restrict__ s_next,
                              const T* __restrict__ keep, int has_keep, int B, int H,
                              int act) {
    const int m0 = blockIdx.y * RECUR_TM, n0 = blockIdx.x * RECUR_TN;
    T acc[RECUR_RM][RECUR_RN];
    recur_tile_gemm<T>(s_prev, B, H, w, sk, sn, H, m0, n0, acc);
#pragma unroll
    for (int i = 0; i < RECUR_RM; ++i) {
        const int m = m0 + threadIdx.y + i * RECUR_TY;
        if (m >= B) continue;
        const bool masked = has_keep && keep[m] == T(0);
#pragma unroll
        for (int j = 0; j < RECUR_RN; ++j) {
            const int n = n0 + threadIdx.x + j * RECUR_TX;
            if (n >= H) continue;
            const long long o = (long long)m * H + n;
            s_next[o] = masked ? s_prev[o] : rnn_act(s_next[o] + acc[i][j], act);
        }
    }
}

// e and dz may be one array: each element is read, then written, by one thread.
template <typename T>
__device__ void recur_backward(const T* __restrict__ dz_next, int has_next,
                               const T* __restrict__ w, long long sk, long long sn,
                               T* __restrict__ carry, const T* e, const T* __restrict__ s,
                               const T* __restrict__ keep, int has_keep, T* dz, int B, int H,
                               int act) {
    const int m0 = blockIdx.y * RECUR_TM, n0 = blockIdx.x * RECUR_TN;
    T acc[RECUR_RM][RECUR_RN] = {};
    if (has_next) recur_tile_gemm<T>(dz_next, B, H, w, sk, sn, H, m0, n0, acc);
#pragma unroll
    for (int i = 0; i < RECUR_RM; ++i) {
        const int m = m0 + threadIdx.y + i * RECUR_TY;
        if (m >= B) continue;
        const T k = has_keep ? keep[m] : T(1);
#pragma unroll
        for (int j = 0; j < RECUR_RN; ++j) {
            const int n = n0 + threadIdx.x + j * RECUR_TX;
            if (n >= H) continue;
            const long long o = (long long)m * H + n;
            // The sums in the composite step's order: (GEMM + pass-through) + e.
            T c;
            if (has_keep) c = has_next ? acc[i][j] + carry[o] : carry[o];
            else c = has_next ? acc[i][j] : T(0);
            c += e[o];  // e is read before dz is written: they may alias
            T d = rnn_mul(rnn_act_grad(s[o], act), c);
            if (has_keep) {
                d = rnn_mul(d, k);
                carry[o] = rnn_mul(c, T(1) - k);
            }
            dz[o] = d;
        }
    }
}

// e and dz_sum may be one array; dz_prev and dz_all must not overlap (the GEMM reads
// whole rows of dz_prev while other blocks write dz_all).
template <typename T>
__device__ void recur_trunc_backward(const T* __restrict__ dz_prev, int has_prev,
                                     const T* __restrict__ w, long long sk, long long sn,
                                     T* __restrict__ G, int fresh, const T* e,
                                     const T* __restrict__ s, const T* __restrict__ keep,
                                     int has_keep, T* __restrict__ dz_all, T* dz_sum, int L,
                                     int B, int H, int act) {
    const int m0 = blockIdx.y * RECUR_TM, n0 = blockIdx.x * RECUR_TN;
    const long long BH = (long long)B * H;
    T sum[RECUR_RM][RECUR_RN];
#pragma unroll
    for (int i = 0; i < RECUR_RM; ++i)
#pragma unroll
        for (int j = 0; j < RECUR_RN; ++j) sum[i][j] = T(0);
    for (int l = 0; l < L; ++l) {  // l and fresh are the same for the whole block
        const bool from_gemm = has_prev && l != fresh;
        T acc[RECUR_RM][RECUR_RN] = {};
        if (from_gemm) recur_tile_gemm<T>(dz_prev + l * BH, B, H, w, sk, sn, H, m0, n0, acc);
#pragma unroll
        for (int i = 0; i < RECUR_RM; ++i) {
            const int m = m0 + threadIdx.y + i * RECUR_TY;
            if (m >= B) continue;
            const T k = has_keep ? keep[m] : T(1);
#pragma unroll
            for (int j = 0; j < RECUR_RN; ++j) {
                const int n = n0 + threadIdx.x + j * RECUR_TX;
                if (n >= H) continue;
                const long long o = (long long)m * H + n, lo = l * BH + o;
                T g;
                if (l == fresh) g = e[o];
                else if (has_keep) g = from_gemm ? acc[i][j] + G[lo] : G[lo];
                else g = from_gemm ? acc[i][j] : T(0);
                T fp = rnn_act_grad(s[o], act);
                if (has_keep) fp = rnn_mul(fp, k);
                const T d = rnn_mul(g, fp);
                dz_all[lo] = d;
                sum[i][j] += d;
                if (has_keep) G[lo] = rnn_mul(g, T(1) - k);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RECUR_RM; ++i) {
        const int m = m0 + threadIdx.y + i * RECUR_TY;
        if (m >= B) continue;
#pragma unroll
        for (int j = 0; j < RECUR_RN; ++j) {
            const int n = n0 + threadIdx.x + j * RECUR_TX;
            if (n < H) dz_sum[(long long)m * H + n] = sum[i][j];
        }
    }
}

#define RNN_RECUR(SUFFIX, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(RECUR_TX * RECUR_TY)                              \
    rnn_recur_forward_##SUFFIX(const T* s_prev, const T* w, long long sk, long long sn,      \
                               T* s_next, const T* keep, int has_keep, int B, int H,        \
                               int act) {                                                    \
        recur_forward<T>(s_prev, w, sk, sn, s_next, keep, has_keep, B, H, act);             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(RECUR_TX * RECUR_TY)                              \
    rnn_recur_backward_##SUFFIX(const T* dz_next, int has_next, const T* w, long long sk,    \
                                long long sn, T* carry, const T* e, const T* s,             \
                                const T* keep, int has_keep, T* dz, int B, int H, int act) { \
        recur_backward<T>(dz_next, has_next, w, sk, sn, carry, e, s, keep, has_keep, dz, B,  \
                          H, act);                                                           \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(RECUR_TX * RECUR_TY)                              \
    rnn_recur_trunc_backward_##SUFFIX(const T* dz_prev, int has_prev, const T* w,            \
                                      long long sk, long long sn, T* G, int fresh,          \
                                      const T* e, const T* s, const T* keep, int has_keep,  \
                                      T* dz_all, T* dz_sum, int L, int B, int H, int act) { \
        recur_trunc_backward<T>(dz_prev, has_prev, w, sk, sn, G, fresh, e, s, keep,         \
                                has_keep, dz_all, dz_sum, L, B, H, act);                     \
    }

RNN_RECUR(f32, float)
RNN_RECUR(f64, double)
