// rnn_outer.cu -- sums of outer products over rows: dW (M, K) (+)= a^T b.
//
// Kernels (suffix _f32: float, _f64: double):
//   rnn_outer_accum_{f32,f64}
//       dW[m, k] = sum_n a[n, m] b[n, k] (+ dW[m, k] when accumulate), with a (N, M) and
//       b (N, K) row-major. This is dW = sum_t delta_t s_{t-1}^T and dV = sum_t delta_o_t
//       s_t^T over all T*B rows at once. Fuses the transpose of a (read directly, no copy)
//       and the accumulate into one shared-memory tiled product: each block owns an
//       OUTER_TILE x OUTER_TILE tile of dW, walks n in slabs of OUTER_TN rows staged in
//       shared memory, and each thread keeps an OUTER_R x OUTER_R register tile whose
//       rows and columns are OUTER_THREADS apart (conflict-free shared reads, coalesced
//       stores). Each output is summed in order n = 0..N-1: deterministic.
//
// NumPy twin: rnn_gpu.kernels.outer_accum. The launcher times this kernel against cuBLAS
// for each shape and uses the faster.

#ifndef OUTER_TILE
#define OUTER_TILE 64  // outputs per tile side
#endif
#ifndef OUTER_THREADS
#define OUTER_THREADS 16  // threads per tile side: blocks are OUTER_THREADS^2 threads
#endif
#ifndef OUTER_TN
#define OUTER_TN 16  // rows n staged in shared memory per step
#endif

#if (OUTER_TILE % OUTER_THREADS) != 0
#error "OUTER_TILE must be a multiple of OUTER_THREADS"
#endif
#define OUTER_R (OUTER_TILE / OUTER_THREADS)  // outputs per thread per side

template <typename T>
__device__ void outer_accum(T* __restrict__ dW, const T* __restrict__ a,
                            const T* __restrict__ b, int N, int M, int K, int accumulate) {
    __shared__ T As[OUTER_TN][OUTER_TILE];  // As[r][c] = a[n0 + r, m0 + c]
    __shared__ T Bs[OUTER_TN][OUTER_TILE];  // Bs[r][c] = b[n0 + r, k0 + c]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * OUTER_THREADS + tx;
    const int m0 = blockIdx.y * OUTER_TILE, k0 = blockIdx.x * OUTER_TILE;

    T acc[OUTER_R][OUTER_R];
#pragma unroll
    for (int i = 0; i < OUTER_R; ++i)
#pragma unroll
        for (int j = 0; j < OUTER_R; ++j) acc[i][j] = T(0);

    for (int n0 = 0; n0 < N; n0 += OUTER_TN) {
        // Stage the slab; consecutive threads read consecutive columns (coalesced).
        // Out-of-range entries are zeros, so they add nothing below.
        for (int idx = tid; idx < OUTER_TN * OUTER_TILE; idx += OUTER_THREADS * OUTER_THREADS) {
            const int r = idx / OUTER_TILE, c = idx % OUTER_TILE;
            const int n = n0 + r;
            As[r][c] = (n < N && m0 + c < M) ? a[(long long)n * M + (m0 + c)] : T(0);
            Bs[r][c] = (n < N && k0 + c < K) ? b[(long long)n * K + (k0 + c)] : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < OUTER_TN; ++r) {
            T av[OUTER_R], bv[OUTER_R];
#pragma unroll
            for (int i = 0; i < OUTER_R; ++i) av[i] = As[r][ty + i * OUTER_THREADS];
#pragma unroll
            for (int j = 0; j < OUTER_R; ++j) bv[j] = Bs[r][tx + j * OUTER_THREADS];
#pragma unroll
            for (int i = 0; i < OUTER_R; ++i)
#pragma unroll
                for (int j = 0; j < OUTER_R; ++j) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();  // the slab is read by all before the next one overwrites it
    }

#pragma unroll
    for (int i = 0; i < OUTER_R; ++i) {
        const int m = m0 + ty + i * OUTER_THREADS;
#pragma unroll
        for (int j = 0; j < OUTER_R; ++j) {
            const int k = k0 + tx + j * OUTER_THREADS;
            if (m < M && k < K) {
                const long long o = (long long)m * K + k;
                dW[o] = accumulate ? dW[o] + acc[i][j] : acc[i][j];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(OUTER_THREADS * OUTER_THREADS)
rnn_outer_accum_f32(float* dW, const float* a, const float* b, int N, int M, int K,
                    int accumulate) {
    outer_accum<float>(dW, a, b, N, M, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(OUTER_THREADS * OUTER_THREADS)
rnn_outer_accum_f64(double* dW, const double* a, const double* b, int N, int M, int K,
                    int accumulate) {
    outer_accum<double>(dW, a, b, N, M, K, accumulate);
}
