// cuda_emu.h -- runs the CUDA C kernels of kernels/*.cu on the CPU, for tests without a GPU.
//
// A kernel file is compiled by the host C++ compiler with this header included first
// (tests/cuda_emu.py does this). The CUDA qualifiers become plain C++, and a launch runs
// the grid's blocks one after another; the threads of a block are fibers (one stack each)
// on one OS thread, scheduled cooperatively:
//
// * __syncthreads() parks the thread until every thread of the block has reached it. A
//   barrier that some threads of the block never reach (because they returned, or wait at
//   another barrier) is a launch error, as it is undefined behaviour on a GPU.
// * __shfl_*_sync parks the thread until all 32 lanes of its warp have arrived (a full
//   warp and a full mask are required), exchanges the values, then parks once more so that
//   no lane overwrites its slot before every partner has read it.
// * A thread runs alone until it parks or returns; the next one is picked by an order
//   chosen per launch (lowest index first, highest first, or at random with a seed), and a
//   warp whose lanes have all reached a shuffle goes on at once. A missing barrier shows
//   up as a result that depends on that order.
// * __shared__ variables are function statics: one copy, used by one block at a time.
// * atomicAdd is a plain add (one OS thread), returning the old value.
//
// What this cannot show: timing, memory coalescing, bank conflicts, warp-synchronous code
// that relies on lockstep execution without a sync, and races that need true concurrency
// inside one barrier interval (two threads writing one word, say).
#pragma once

#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
};

namespace cuda_emu {

enum State { READY, AT_SYNC, AT_WARP, DONE };

constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
    dim3 idx;
    int state;
    bool started;
    jmp_buf jb;
    ucontext_t uc;
    char* stack;
};

inline dim3 g_block_idx, g_block_dim, g_grid_dim;
inline Fiber* g_cur = nullptr;
inline std::vector<Fiber*> g_fibers;  // slots, reused from launch to launch
inline jmp_buf g_sched;
inline void (*g_body)(void*) = nullptr;
inline void* g_body_arg = nullptr;
inline char g_error[512];
inline bool g_failed = false;
inline std::vector<uint64_t> g_slots;  // warp exchange: one word per thread

inline void yield_to_scheduler() {
    if (!_setjmp(g_cur->jb)) _longjmp(g_sched, 1);
}

// Stop the launch from inside a thread: the scheduler sees g_failed and gives up.
[[noreturn]] inline void fail(const char* what) {
    snprintf(g_error, sizeof g_error, "thread (%u,%u,%u) of block (%u,%u,%u): %s", g_cur->idx.x,
             g_cur->idx.y, g_cur->idx.z, g_block_idx.x, g_block_idx.y, g_block_idx.z, what);
    g_failed = true;
    _longjmp(g_sched, 1);
}

inline void fiber_main() {
    for (;;) {  // one pass per thread run; the slot is resumed here for the next thread
        g_body(g_body_arg);
        g_cur->state = DONE;
        yield_to_scheduler();
    }
}

inline void reset_slots() {
    for (Fiber* f : g_fibers) f->started = false;
}

inline Fiber* slot(size_t i) {
    while (g_fibers.size() <= i) {
        Fiber* f = new Fiber();
        f->stack = static_cast<char*>(malloc(kStackBytes));
        f->started = false;
        g_fibers.push_back(f);
    }
    return g_fibers[i];
}

inline void resume(Fiber* f) {
    g_cur = f;
    if (_setjmp(g_sched)) return;  // back from the fiber: it parked, finished or failed
    if (f->started) _longjmp(f->jb, 1);
    f->started = true;
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = kStackBytes;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, fiber_main, 0);
    setcontext(&f->uc);
}

inline unsigned flat_tid(const dim3& t) {
    return t.x + g_block_dim.x * (t.y + g_block_dim.y * t.z);
}

// Picks the next thread to run from the ready set: the lowest index (order 0), the
// highest (order 1), or one at random (order 2 and up, seeded by the order).
struct ReadySet {
    std::vector<unsigned> v;
    unsigned order;
    uint64_t* rng;
    bool before(unsigned a, unsigned b) const { return order == 0 ? a > b : a < b; }
    void push(unsigned i) {
        v.push_back(i);
        if (order < 2) std::push_heap(v.begin(), v.end(), [this](unsigned a, unsigned b) { return before(a, b); });
    }
    unsigned pop() {
        if (order < 2) {
            std::pop_heap(v.begin(), v.end(), [this](unsigned a, unsigned b) { return before(a, b); });
        } else {  // xorshift64
            *rng ^= *rng << 13; *rng ^= *rng >> 7; *rng ^= *rng << 17;
            std::swap(v[*rng % v.size()], v.back());
        }
        unsigned i = v.back();
        v.pop_back();
        return i;
    }
};

// Runs one block; false (with g_error set) on a barrier error or a failing thread. A
// warp whose lanes have all reached a shuffle goes on at once, ahead of threads not yet
// run (warps are independent on a GPU): a warp that writes shared memory before the
// other warps have read it then shows.
inline bool run_block(unsigned nthreads, unsigned order, uint64_t* rng) {
    ReadySet ready{{}, order, rng};
    ready.v.reserve(nthreads);
    for (unsigned i = 0; i < nthreads; ++i) {
        Fiber* f = slot(i);
        f->idx = dim3{i % g_block_dim.x, (i / g_block_dim.x) % g_block_dim.y,
                      i / (g_block_dim.x * g_block_dim.y)};
        f->state = READY;
        ready.push(i);
    }
    std::vector<unsigned> at_warp((nthreads + 31) / 32, 0);
    unsigned at_sync = 0, done = 0;
    for (;;) {
        while (!ready.v.empty()) {
            const unsigned i = ready.pop();
            Fiber* f = g_fibers[i];
            resume(f);
            if (g_failed) return false;
            if (f->state == DONE) {
                ++done;
            } else if (f->state == AT_SYNC) {
                ++at_sync;
            } else if (f->state == AT_WARP) {
                const unsigned w = i / 32, lo = 32 * w;
                const unsigned hi = lo + 32 < nthreads ? lo + 32 : nthreads;
                if (++at_warp[w] == hi - lo) {
                    at_warp[w] = 0;
                    for (unsigned j = lo; j < hi; ++j) {
                        g_fibers[j]->state = READY;
                        ready.push(j);
                    }
                }
            }
        }
        if (done == nthreads) return true;
        if (at_sync == nthreads) {
            at_sync = 0;
            for (unsigned i = 0; i < nthreads; ++i) {
                g_fibers[i]->state = READY;
                ready.push(i);
            }
            continue;
        }
        snprintf(g_error, sizeof g_error,
                 "block (%u,%u,%u) deadlocks: %u threads wait at __syncthreads, %u at a warp "
                 "shuffle whose warp never completes, %u have returned",
                 g_block_idx.x, g_block_idx.y, g_block_idx.z, at_sync,
                 nthreads - at_sync - done, done);
        return false;
    }
}

// A fault inside a kernel (an address far out of bounds) ends the launch with an error, as
// CUDA reports an illegal address, rather than killing the process. The handler runs on
// its own stack and jumps back to the scheduler; SA_NODEFER leaves the signal unblocked.
inline void on_fault(int sig, siginfo_t* info, void*) {
    if (g_cur == nullptr) {  // not inside a kernel: the default action
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    snprintf(g_error, sizeof g_error, "thread (%u,%u,%u) of block (%u,%u,%u): illegal address %p",
             g_cur->idx.x, g_cur->idx.y, g_cur->idx.z, g_block_idx.x, g_block_idx.y,
             g_block_idx.z, info->si_addr);
    g_failed = true;
    _longjmp(g_sched, 1);
}

struct SignalGuard {
    struct sigaction old_segv, old_bus;
    stack_t old_stack;
    std::vector<char> alt = std::vector<char>(1 << 16);
    SignalGuard() {
        stack_t st{};
        st.ss_sp = alt.data();
        st.ss_size = alt.size();
        sigaltstack(&st, &old_stack);
        struct sigaction sa{};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &old_segv);
        sigaction(SIGBUS, &sa, &old_bus);
    }
    ~SignalGuard() {
        sigaction(SIGSEGV, &old_segv, nullptr);
        sigaction(SIGBUS, &old_bus, nullptr);
        sigaltstack(&old_stack, nullptr);
        g_cur = nullptr;
    }
};

// The grid, block by block. Limits as on sm_80/sm_90.
inline int run_grid(const unsigned* grid, const unsigned* block, unsigned order, char* err,
                    int errlen) {
    g_failed = false;
    g_error[0] = 0;
    const unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > 1024 || block[0] > 1024 || block[1] > 1024 ||
        block[2] > 64) {
        snprintf(g_error, sizeof g_error, "invalid block (%u,%u,%u): at most 1024 threads",
                 block[0], block[1], block[2]);
    } else if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 2147483647u ||
               grid[1] > 65535 || grid[2] > 65535) {
        snprintf(g_error, sizeof g_error, "invalid grid (%u,%u,%u)", grid[0], grid[1], grid[2]);
    }
    bool ok = g_error[0] == 0;
    SignalGuard guard;  // a stray pointer fails the launch instead of the process
    g_grid_dim = dim3{grid[0], grid[1], grid[2]};
    g_block_dim = dim3{block[0], block[1], block[2]};
    g_slots.assign(nthreads + 32, 0);
    uint64_t rng = 0x9E3779B97F4A7C15ull ^ order;
    for (unsigned z = 0; ok && z < grid[2]; ++z)
        for (unsigned y = 0; ok && y < grid[1]; ++y)
            for (unsigned x = 0; ok && x < grid[0]; ++x) {
                g_block_idx = dim3{x, y, z};
                ok = run_block((unsigned)nthreads, order, &rng);
            }
    if (!ok) {
        reset_slots();  // parked fibers are abandoned; their slots start afresh
        snprintf(err, errlen, "%s", g_error);
        return 1;
    }
    return 0;
}

// Kernel arguments arrive as CUDA's launch API passes them: an array of pointers to the
// values, in order.
template <typename... A, size_t... I>
void call_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
struct Launch {
    void (*f)(A...);
    void** args;
    static void body(void* p) {
        auto* l = static_cast<Launch*>(p);
        call_with(l->f, l->args, std::index_sequence_for<A...>{});
    }
};

template <typename... A>
int launch(void (*f)(A...), const unsigned* grid, const unsigned* block, void** args,
           unsigned order, char* err, int errlen) {
    Launch<A...> l{f, args};
    g_body = &Launch<A...>::body;
    g_body_arg = &l;
    return run_grid(grid, block, order, err, errlen);
}

// The parameter list as type codes, for the caller to check what it passes: f d i q I Q
// for float, double, int, long long, unsigned, unsigned long long; a leading * for a
// pointer to one.
template <typename T> struct Code;
template <> struct Code<float> { static constexpr char c = 'f'; };
template <> struct Code<double> { static constexpr char c = 'd'; };
template <> struct Code<int> { static constexpr char c = 'i'; };
template <> struct Code<long long> { static constexpr char c = 'q'; };
template <> struct Code<long> { static constexpr char c = 'q'; };
template <> struct Code<unsigned> { static constexpr char c = 'I'; };
template <> struct Code<unsigned long long> { static constexpr char c = 'Q'; };
template <> struct Code<unsigned long> { static constexpr char c = 'Q'; };

template <typename T> struct ArgCode {
    static std::string get() { return std::string(1, Code<std::remove_cv_t<T>>::c); }
};
template <typename T> struct ArgCode<T*> {
    static std::string get() { return "*" + std::string(1, Code<std::remove_cv_t<T>>::c); }
};

template <typename... A>
const char* signature(void (*)(A...)) {
    static const std::string s = [] {
        std::string out;
        ((out += (out.empty() ? "" : ","), out += ArgCode<A>::get()), ...);
        return out;
    }();
    return s.c_str();
}

inline void warp_sync() {
    g_cur->state = AT_WARP;
    yield_to_scheduler();
}

template <typename T>
T shuffle(unsigned mask, T v, unsigned src_lane, int width) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
    const unsigned tid = flat_tid(g_cur->idx);
    const unsigned nthreads = g_block_dim.x * g_block_dim.y * g_block_dim.z;
    const unsigned warp_lo = tid & ~31u;
    if (warp_lo + 32 > nthreads) fail("warp shuffle in a partial warp");
    if (mask != 0xffffffffu) fail("warp shuffle with a mask other than 0xffffffff");
    if (width != 32) fail("warp shuffle with a width other than 32");
    uint64_t word = 0;
    memcpy(&word, &v, sizeof(T));
    g_slots[tid] = word;
    warp_sync();  // every lane has written its value
    word = g_slots[warp_lo + (src_lane & 31u)];
    warp_sync();  // every lane has read before any lane writes again
    T r;
    memcpy(&r, &word, sizeof(T));
    return r;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::g_cur->idx)
#define blockIdx (::cuda_emu::g_block_idx)
#define blockDim (::cuda_emu::g_block_dim)
#define gridDim (::cuda_emu::g_grid_dim)
#define warpSize 32

inline void __syncthreads() {
    ::cuda_emu::g_cur->state = ::cuda_emu::AT_SYNC;
    ::cuda_emu::yield_to_scheduler();
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const unsigned lane = ::cuda_emu::flat_tid(threadIdx) & 31u;
    return ::cuda_emu::shuffle(mask, v, lane ^ (unsigned)lane_mask, width);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const unsigned lane = ::cuda_emu::flat_tid(threadIdx) & 31u;
    return ::cuda_emu::shuffle(mask, v, lane + delta < 32 ? lane + delta : lane, width);
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    return ::cuda_emu::shuffle(mask, v, (unsigned)src_lane, width);
}

template <typename T>
T atomicAdd(T* address, T value) {
    const T old = *address;
    *address = old + value;
    return old;
}

// Round-to-nearest products without contraction (the file is built with -ffp-contract=off).
inline float __fmul_rn(float x, float y) { return x * y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline float __fadd_rn(float x, float y) { return x + y; }
inline double __dadd_rn(double x, double y) { return x + y; }

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, sizeof i);
    return i;
}
inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, sizeof d);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long i;
    memcpy(&i, &d, sizeof i);
    return i;
}
