// rnn_embed.cu -- token inputs and bias gradients.
//
// Kernels (suffix _f32: float, _f64: double; _i32 / _i64: type of the token ids):
//   rnn_embed_gather_{f32,f64}_{i32,i64}
//       out[n, :] = UT[ids[n], :] + bias: the input projection U x_t for one-hot x_t as a
//       row gather of U^T (no one-hot product), fused with the add of the bias b.
//   rnn_embed_scatter_add_{f32,f64}_{i32,i64}
//       dUT[ids[n], :] += dz[n, :] with atomicAdd (double atomicAdd needs sm_60+), so
//       repeated ids add up. The order of the adds to one entry is not fixed: dU can
//       differ from run to run in the last bits when ids repeat.
//   rnn_bias_grad_{f32,f64}
//       out[h] = sum_n dz[n, h]: column sums for db and dc. A block owns BIAS_COLS columns;
//       its BIAS_ROWS rows of threads stride over n (coalesced), then one thread per column
//       adds the BIAS_ROWS partial sums in a fixed order: deterministic. ceil(H/BIAS_COLS)
//       blocks: few for a small H (8 at H = 256), each walking all N rows.
//   rnn_bias_grad_split_{f32,f64}
//   rnn_bias_grad_finish_{f32,f64}
//       The same sums with the rows split over the grid as well, for a small H: block
//       (x, y) sums rows [y*chunk, (y+1)*chunk) of its columns as above into
//       partial[y, :] (S, H); then one thread per column adds the S partial sums in order
//       y = 0..S-1. Two launches, a fixed order: deterministic (its rounding differs
//       from the one-pass kernel's; the launcher's choice depends on the shape alone).
//
// NumPy twins: rnn_gpu.kernels.embed_gather, embed_scatter_add, bias_grad.

#include "rnn_common.cuh"

#ifndef ELEM_BLOCK
#define ELEM_BLOCK 256  // threads per block for gather and scatter
#endif
#ifndef BIAS_COLS
#define BIAS_COLS 32  // columns per block (threadIdx.x)
#endif
#ifndef BIAS_ROWS
#define BIAS_ROWS 16  // rows of threads per block (threadIdx.y)
#endif

template <typename T, typename I>
__device__ void embed_gather(const T* UT, const I* ids, const T* bias, T* out, long long n,
                             int H) {
    RNN_GRID_STRIDE_LOOP(long long, i, n) {
        const long long row = i / H;
        const int h = (int)(i - row * H);
        out[i] = UT[(long long)ids[row] * H + h] + bias[h];
    }
}

template <typename T, typename I>
__device__ void embed_scatter_add(T* dUT, const I* ids, const T* dz, long long n, int H) {
    RNN_GRID_STRIDE_LOOP(long long, i, n) {
        const long long row = i / H;
        const int h = (int)(i - row * H);
        atomicAdd(dUT + ((long long)ids[row] * H + h), dz[i]);
    }
}

// out[h] = sum of dz[n, h] over rows n0 <= n < n1, in a fixed order: each of the
// BIAS_ROWS rows of threads strides over the rows, then one thread per column adds the
// BIAS_ROWS partial sums in order.
template <typename T>
__device__ void bias_grad(const T* dz, T* out, int n0, int n1, int H) {
    __shared__ T part[BIAS_ROWS][BIAS_COLS + 1];
    const int h = blockIdx.x * BIAS_COLS + threadIdx.x;
    T s = T(0);
    if (h < H) {
        for (int n = n0 + threadIdx.y; n < n1; n += BIAS_ROWS) s += dz[(long long)n * H + h];
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && h < H) {
        T t = part[0][threadIdx.x];
        for (int r = 1; r < BIAS_ROWS; ++r) t += part[r][threadIdx.x];
        out[h] = t;
    }
}

// The split version's two passes: block (x, y) sums rows [y * chunk, (y + 1) * chunk)
// into partial[y, :]; then out[h] = sum_y partial[y, h] in order y = 0..S-1.
template <typename T>
__device__ void bias_grad_split(const T* dz, T* partial, int N, int H, int chunk) {
    const int n0 = blockIdx.y * chunk;
    const int n1 = n0 + chunk < N ? n0 + chunk : N;
    bias_grad<T>(dz, partial + (long long)blockIdx.y * H, n0, n1, H);
}

template <typename T>
__device__ void bias_grad_finish(const T* partial, T* out, int S, int H) {
    RNN_GRID_STRIDE_LOOP(unsigned, h, H) {
        T t = partial[h];
        for (int y = 1; y < S; ++y) t += partial[(long long)y * H + h];
        out[h] = t;
    }
}

#define RNN_EMBED(SUFFIX, T, I)                                                              \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                 \
    rnn_embed_gather_##SUFFIX(const T* UT, const I* ids, const T* bias, T* out, long long n, \
                              int H) {                                                      \
        embed_gather<T, I>(UT, ids, bias, out, n, H);                                       \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                 \
    rnn_embed_scatter_add_##SUFFIX(T* dUT, const I* ids, const T* dz, long long n, int H) {  \
        embed_scatter_add<T, I>(dUT, ids, dz, n, H);                                        \
    }

RNN_EMBED(f32_i32, float, int)
RNN_EMBED(f32_i64, float, long long)
RNN_EMBED(f64_i32, double, int)
RNN_EMBED(f64_i64, double, long long)

#define RNN_BIAS_GRAD(SUFFIX, T)                                                            \
    extern "C" __global__ void __launch_bounds__(BIAS_COLS * BIAS_ROWS)                     \
    rnn_bias_grad_##SUFFIX(const T* dz, T* out, int N, int H) {                             \
        bias_grad<T>(dz, out, 0, N, H);                                                     \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(BIAS_COLS * BIAS_ROWS)                     \
    rnn_bias_grad_split_##SUFFIX(const T* dz, T* partial, int N, int H, int chunk) {        \
        bias_grad_split<T>(dz, partial, N, H, chunk);                                       \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(ELEM_BLOCK)                                 \
    rnn_bias_grad_finish_##SUFFIX(const T* partial, T* out, int S, int H) {                 \
        bias_grad_finish<T>(partial, out, S, H);                                            \
    }

RNN_BIAS_GRAD(f32, float)
RNN_BIAS_GRAD(f64, double)
