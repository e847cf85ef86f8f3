// Hopper (sm_90a) building blocks of the extend attention kernel: warpgroup mma (wgmma) with the A operand in
// registers and B in shared memory through a matrix descriptor, plus the 128-byte-swizzled tile layout those
// descriptors read. Everything compiles to nothing outside sm_90a (LITE_SRT_SM90A), so callers guard their use
// and keep the mma.sync path of attn_mma.cuh beside it. No torch headers.
//
// Tile layout (the canonical "SW128" layout of wgmma, the same bytes for a K-major and an MN-major operand): a
// [rows][64] block of 16-bit values is stored as 128-byte rows, 8 rows to a 1024-byte atom, and the 16-byte
// chunk c of row r sits at chunk position c ^ (r % 8). Head dims above 64 are split into 64-wide column blocks
// of rows x 128 bytes each. Every atom must start 1024-byte aligned.
//
// Register layouts (PTX ISA, wgmma .m64nNk16): warp w of the warpgroup owns rows 16 w .. 16 w + 15; within a
// warp the f32 accumulators and the 16-bit A fragments are laid out exactly like mma.sync m16n8k16's, so the
// online-softmax helpers of attn_mma.cuh and the accumulator-to-A repacking carry over unchanged.
#pragma once

#include <cstdint>

#include "attn_mma.cuh"

#if !defined(USE_ROCM)
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LITE_SRT_SM90A 1
#endif

namespace lite_srt {
namespace attn {

// Element offset of (row, col) in a swizzled tile of `rows` rows (col < D, split into 64-wide column blocks).
template <int kRows>
__device__ __forceinline__ int sw128_offset(int row, int col) {
  const int chunk = (col & 63) >> 3;
  return (col >> 6) * (kRows * 64) + row * 64 + ((chunk ^ (row & 7)) << 3) + (col & 7);
}

// Shared-memory matrix descriptor of a 128-byte-swizzled operand: start address, leading and stride byte
// offsets (16-byte units), swizzle mode 1 (128 B) in bits 62-63.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t saddr, uint32_t lead_bytes, uint32_t stride_bytes) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lead_bytes & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((stride_bytes & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#if defined(LITE_SRT_SM90A)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if defined(LITE_SRT_SM90A)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(LITE_SRT_SM90A)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Shared memory written by ordinary stores or cp.async and read next by wgmma (the async proxy) needs this in
// every writing thread before the barrier that publishes it.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(LITE_SRT_SM90A)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Shared-memory mbarriers (the producer/consumer handshake of a warp-specialized kernel). A phase completes when
// `count` threads have arrived; waiters name the phase by its parity, so a waiter must never be more than one
// phase ahead of the barrier.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#if defined(LITE_SRT_SM90A)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
#endif
}

// Makes barrier initialisations visible before the barrier (a __syncthreads) that publishes them.
__device__ __forceinline__ void mbar_init_fence() {
#if defined(LITE_SRT_SM90A)
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// Release: this thread's earlier memory operations are visible to whoever acquires the completed phase.
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if defined(LITE_SRT_SM90A)
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.release.cta.shared::cta.b64 state, [%0];\n}\n" ::"r"(
                   smem_u32(bar))
               : "memory");
#endif
}

// Acquire: returns once the phase of the given parity has completed (try_wait may suspend the thread for a
// while before it answers no, so the loop does not spin hot).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
#if defined(LITE_SRT_SM90A)
  const uint32_t addr = smem_u32(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (done == 0);
#endif
}

// Named barriers 1..15 among `n` threads (a multiple of 32; barrier 0 is __syncthreads). sync waits for the
// others, arrive only counts itself in.
__device__ __forceinline__ void named_bar_sync(int id, int n) {
#if defined(LITE_SRT_SM90A)
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
#endif
}

__device__ __forceinline__ void named_bar_arrive(int id, int n) {
#if defined(LITE_SRT_SM90A)
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
#endif
}

// Warpgroup-wide register reallocation (a multiple of 8 in [24, 256]): dec hands registers back to the SM's
// pool, inc blocks until the pool can grant them.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#if defined(LITE_SRT_SM90A)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#if defined(LITE_SRT_SM90A)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// Pins accumulator registers in program order after a wgmma wait: without it the compiler may read them
// between the (asynchronous) wgmma and the wait that completes it.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[n][e])::"memory");
}

template <int N>
__device__ __forceinline__ void fence_regs_u32(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(r[n][e])::"memory");
}

// d[64 x 64] += A (64 x 16, registers, mma.sync A-fragment layout per warp) * B (16 x 64, shared memory).
// kTransB = 0: B is K-major (rows of the smem tile are the 64 columns of B, e.g. K for S = Q K^T);
// kTransB = 1: B is MN-major (rows of the tile run along k, e.g. V for O = P V).
template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b) {
#if defined(LITE_SRT_SM90A)
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(kTransB), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(kTransB), "r"(1));
  }
#endif
}

// d[64 x 64] += A (64 x 16, K-major in shared memory) * B (16 x 64, shared memory; kTransB as above).
template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b) {
#if defined(LITE_SRT_SM90A)
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %35, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, %34;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(desc_a), "l"(desc_b), "n"(kTransB), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %35, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, %34;\n}\n"
        : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(desc_a), "l"(desc_b), "n"(kTransB), "r"(1));
  }
#endif
}

// The 128-column shapes: d[64 x 128] (16 column groups of 8) += A * B, the same register layout as two
// m64n64k16 products side by side. One instruction instead of two halves the A reads of the SS form (the
// tensor cores' shared-memory traffic per flop) and the issue slots of both forms. The accumulator list is
// shared by the four statements below: PTX operands %0..%63 are d[0][0] .. d[15][3].
#define LITE_SRT_WGMMA_N128_D "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
#define LITE_SRT_WGMMA_N128_OUT(d) "+f"((d)[0][0]), "+f"((d)[0][1]), "+f"((d)[0][2]), "+f"((d)[0][3]), "+f"((d)[1][0]), "+f"((d)[1][1]), "+f"((d)[1][2]), "+f"((d)[1][3]), "+f"((d)[2][0]), "+f"((d)[2][1]), "+f"((d)[2][2]), "+f"((d)[2][3]), "+f"((d)[3][0]), "+f"((d)[3][1]), "+f"((d)[3][2]), "+f"((d)[3][3]), "+f"((d)[4][0]), "+f"((d)[4][1]), "+f"((d)[4][2]), "+f"((d)[4][3]), "+f"((d)[5][0]), "+f"((d)[5][1]), "+f"((d)[5][2]), "+f"((d)[5][3]), "+f"((d)[6][0]), "+f"((d)[6][1]), "+f"((d)[6][2]), "+f"((d)[6][3]), "+f"((d)[7][0]), "+f"((d)[7][1]), "+f"((d)[7][2]), "+f"((d)[7][3]), "+f"((d)[8][0]), "+f"((d)[8][1]), "+f"((d)[8][2]), "+f"((d)[8][3]), "+f"((d)[9][0]), "+f"((d)[9][1]), "+f"((d)[9][2]), "+f"((d)[9][3]), "+f"((d)[10][0]), "+f"((d)[10][1]), "+f"((d)[10][2]), "+f"((d)[10][3]), "+f"((d)[11][0]), "+f"((d)[11][1]), "+f"((d)[11][2]), "+f"((d)[11][3]), "+f"((d)[12][0]), "+f"((d)[12][1]), "+f"((d)[12][2]), "+f"((d)[12][3]), "+f"((d)[13][0]), "+f"((d)[13][1]), "+f"((d)[13][2]), "+f"((d)[13][3]), "+f"((d)[14][0]), "+f"((d)[14][1]), "+f"((d)[14][2]), "+f"((d)[14][3]), "+f"((d)[15][0]), "+f"((d)[15][1]), "+f"((d)[15][2]), "+f"((d)[15][3])

template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b) {
#if defined(LITE_SRT_SM90A)
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 LITE_SRT_WGMMA_N128_D "{%64, %65, %66, %67}, %68, p, 1, 1, %69;\n}\n"
                 : LITE_SRT_WGMMA_N128_OUT(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(kTransB), "r"(1));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                 LITE_SRT_WGMMA_N128_D "{%64, %65, %66, %67}, %68, p, 1, 1, %69;\n}\n"
                 : LITE_SRT_WGMMA_N128_OUT(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(kTransB), "r"(1));
  }
#endif
}

template <typename T, int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b) {
#if defined(LITE_SRT_SM90A)
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %67, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 LITE_SRT_WGMMA_N128_D "%64, %65, p, 1, 1, 0, %66;\n}\n"
                 : LITE_SRT_WGMMA_N128_OUT(d)
                 : "l"(desc_a), "l"(desc_b), "n"(kTransB), "r"(1));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %67, 0;\nwgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                 LITE_SRT_WGMMA_N128_D "%64, %65, p, 1, 1, 0, %66;\n}\n"
                 : LITE_SRT_WGMMA_N128_OUT(d)
                 : "l"(desc_a), "l"(desc_b), "n"(kTransB), "r"(1));
  }
#endif
}

#undef LITE_SRT_WGMMA_N128_D
#undef LITE_SRT_WGMMA_N128_OUT

// Pieces of the attention kernels' wgmma tile loops (extend_wgmma_kernel, extend_wgmma_ws_kernel, the cascade's
// shared pass in decode.cu).

// Gathers kKeys K and V rows by slot into swizzled tiles ([D / 64][kKeys][64] each; slots < 0 are zero-filled)
// with the kThreads threads of one warpgroup (tid: index within it): consecutive threads take consecutive 16-byte
// chunks of a row. A thread keeps one column and steps by a multiple of 8 rows, so its swizzle phase is fixed and
// every destination is one base plus a constant: the 40-register producer of extend_wgmma_ws_kernel cannot afford
// per-copy address arithmetic.
template <typename T, int D, int kKeys, int kThreads>
__device__ __forceinline__ void issue_kv_tile_sw128_wg(int tid, T* ks, T* vs, const int* slots, const T* k_base,
                                                       int64_t k_row, const T* v_base, int64_t v_row) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kRowStep = kThreads / kChunks;
  static_assert(kThreads % kChunks == 0 && kRowStep % 8 == 0 && kKeys % kRowStep == 0, "fixed swizzle phase");
  const int r0 = tid / kChunks;
  const int col = (tid % kChunks) * 8;
  const int off = sw128_offset<kKeys>(r0, col);
  const T* kc = k_base + col;
  const T* vc = v_base + col;
#pragma unroll
  for (int i = 0; i < kKeys / kRowStep; ++i) {
    const int slot = slots[r0 + i * kRowStep];
    const int64_t s = slot < 0 ? 0 : slot;
    cp_async_16(ks + off + i * kRowStep * 64, kc + s * k_row, slot >= 0);
    cp_async_16(vs + off + i * kRowStep * 64, vc + s * v_row, slot >= 0);
  }
}

// S[64 x kKeys] = Q K^T for one warpgroup: D / 16 steps of kKeys / 64 wgmma (64 keys each), issued and committed,
// not waited for.
template <typename T, int D, int kKeys>
__device__ __forceinline__ void issue_qk(float (&s)[kKeys / 8][4], const uint32_t (&qa)[D / 16][4], uint32_t k_addr) {
#pragma unroll
  for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
  fence_regs(s);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int h = 0; h < kKeys / 64; ++h) {
      // K-major B: column block kk / 4 of the tile, 32 bytes (16 values of d) per step inside the 128-byte row;
      // keys 64 h.. start 64 rows (8 KB) further.
      const uint64_t desc =
          sw128_desc(k_addr + (kk >> 2) * (kKeys * 128) + h * (64 * 128) + (kk & 3) * 32, 16, 1024);
      wgmma_m64n64k16_rs<T, 0>(*reinterpret_cast<float(*)[8][4]>(&s[h * 8][0]), qa[kk], desc);
    }
  }
  wgmma_commit();
}

// O[64 x D] += P V for one warpgroup (P as A fragments of kKeys / 16 16-key steps), issued and committed, not
// waited for.
// kWide (D = 128): one m64n128k16 per 16 keys spans both 64-wide column blocks of V; o[2][8][4] is then the
// instruction's [16][4] accumulator, column block by column block.
template <typename T, int D, int kKeys, bool kWide = false>
__device__ __forceinline__ void issue_pv(float (&o)[D / 64][8][4], const uint32_t (&pa)[kKeys / 16][4],
                                         uint32_t v_addr) {
  static_assert(!kWide || D == 128, "the wide form covers d = 128");
#pragma unroll
  for (int c = 0; c < D / 64; ++c) fence_regs(o[c]);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    if constexpr (kWide) {
      // MN-major B over two column blocks: the leading offset steps from one to the next (kKeys rows of 128 B).
      const uint64_t desc = sw128_desc(v_addr + kk * 16 * 128, kKeys * 128, 1024);
      wgmma_m64n128k16_rs<T, 1>(*reinterpret_cast<float(*)[16][4]>(&o[0][0][0]), pa[kk], desc);
    } else {
#pragma unroll
      for (int c = 0; c < D / 64; ++c) {
        // MN-major B: 16 keys = 16 rows of 128 bytes per step; one 64-wide column block per instruction, so the
        // leading (column-block) offset is never used and the 8-row stride is 1024 bytes.
        const uint64_t desc = sw128_desc(v_addr + c * (kKeys * 128) + kk * 16 * 128, 1024, 1024);
        wgmma_m64n64k16_rs<T, 1>(o[c], pa[kk], desc);
      }
    }
  }
  wgmma_commit();
}

// O = 0 for the online softmax (D / 64 column blocks of the warp's 16 x 64 accumulators).
template <int kChunksD>
__device__ __forceinline__ void zero_rows(float (&o)[kChunksD][8][4]) {
#pragma unroll
  for (int c = 0; c < kChunksD; ++c)
#pragma unroll
    for (int n = 0; n < 8; ++n) o[c][n][0] = o[c][n][1] = o[c][n][2] = o[c][n][3] = 0.0f;
}

// P, in S's accumulator layout, as the 16-bit A fragments of the P V product.
template <typename T, int kKeys>
__device__ __forceinline__ void pack_p(uint32_t (&pa)[kKeys / 16][4], const float (&s)[kKeys / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    pa[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    pa[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    pa[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    pa[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

}  // namespace attn

// True when Kernel was loaded from sm_90a machine code on a compute capability 9.x device (a build without the
// sm_90a target gives an empty wgmma kernel, which must never be launched). Cached per device.
template <auto Kernel>
bool has_sm90a_code() {
  static int cached[64];  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (cached[dev] == 0) {
    cudaFuncAttributes attr{};
    int major = 0;
    const bool ok = cudaFuncGetAttributes(&attr, Kernel) == cudaSuccess &&
                    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess;
    cached[dev] = ok && major == 9 && attr.binaryVersion == 90 ? 1 : 2;
    cudaGetLastError();  // a failed query is an answer ("no"), not an error for the next launch to report
  }
  return cached[dev] == 1;
}

}  // namespace lite_srt
#endif  // !USE_ROCM
