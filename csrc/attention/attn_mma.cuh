// Tensor-core building blocks shared by the paged attention kernels (decode.cu, extend.cu), NVIDIA sm_80+ only:
// cp.async gathers of K/V rows through the slot table, ldmatrix fragment loads, mma.sync m16n8k16, and the
// online-softmax step in the mma accumulator layout. No torch headers.
//
// Fragment layout reminders (PTX ISA, m16n8k16): lane = 4 * g + tig. The C/D accumulator c[0..1] holds row g,
// columns 2 tig, 2 tig + 1 of the 8-column tile, c[2..3] the same columns of row g + 8. So a row's scores sit in
// one quad of lanes, and two adjacent 8-key accumulators form exactly the A fragment of a 16-key step of P V.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../cuda_utils.cuh"
#include "../kernel_args.h"

#if !defined(USE_ROCM)
namespace lite_srt {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; with valid == false nothing is read and the 16 bytes are zero-filled
// (padding rows must be zeros, not garbage: P = 0 times a NaN would still poison the output).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}

// c += A (16x16, row) * B (16x8, col), f32 accumulate.
template <typename T>
__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  const T l = from_float<T>(lo), h = from_float<T>(hi);
  return static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(l)) |
         (static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(h)) << 16);
}

// The pool slot of key j of a request (table row offset given), or -1 past `end`: -1 makes the tile loader
// zero-fill the row.
__device__ __forceinline__ int slot_at(const AttentionArgs& a, int64_t table_row, int64_t j, int64_t end) {
  return j < end ? static_cast<int>(a.req_to_token[table_row + j]) : -1;
}

// Shared-memory geometry of one pipeline stage: kRows keys of K and of V, rows padded by 16 bytes so that the
// 8 row addresses of an ldmatrix (and the cp.async stores) fall into 8 different 16-byte bank groups.
template <typename T, int D, int kRows>
struct KVTile {
  static constexpr int kStride = D + 16 / static_cast<int>(sizeof(T));
  static constexpr int kElems = kRows * kStride;
};

// Gathers a tile of kRows K and V rows (one KV head) into shared memory with cp.async; slots[r] < 0 rows are
// zero-filled. Every thread of the block calls it (kThreads threads share the 16-byte chunks).
template <typename T, int D, int kRows, int kThreads>
__device__ __forceinline__ void issue_kv_tile(T* ks, T* vs, const int* slots, const T* k_base, int64_t k_row,
                                              const T* v_base, int64_t v_row) {
  constexpr int kChunks = D * static_cast<int>(sizeof(T)) / 16;
  constexpr int kElemsPerChunk = 16 / static_cast<int>(sizeof(T));
  constexpr int kTotal = kRows * kChunks;
  constexpr int kStride = KVTile<T, D, kRows>::kStride;
  static_assert(kTotal % kThreads == 0, "chunks must divide evenly over the block");
#pragma unroll
  for (int i = 0; i < kTotal / kThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / kChunks;
    const int col = (c % kChunks) * kElemsPerChunk;
    const int slot = slots[r];
    const int64_t s = slot < 0 ? 0 : slot;
    cp_async_16(ks + r * kStride + col, k_base + s * k_row + col, slot >= 0);
    cp_async_16(vs + r * kStride + col, v_base + s * v_row + col, slot >= 0);
  }
}

// Online-softmax state of the two rows (g, g + 8) a lane holds in the accumulator layout. m is in raw-score
// units (before scale); l is this lane's partial sum (the quad is reduced once at the end).
struct RowState {
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
};

// 2^x in one MUFU instruction (ex2.approx.ftz: about 2 ulp; results below 2^-126 flush to zero, which no bf16 or
// fp16 probability could hold anyway). exp2f wraps the same instruction in a range check and two multiplies per
// element, 16% of the extend kernel's inner loop (SASS count).
__device__ __forceinline__ float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The probability half of an online-softmax step over NT 8-key accumulators: turns s into probabilities (base 2,
// scale folded into the exponent) and updates st; returns in alpha0/alpha1 the factors by which the output
// accumulators of rows g and g + 8 must be rescaled. Masked scores must be -inf.
template <int NT>
__device__ __forceinline__ void softmax_probs(float (&s)[NT][4], RowState& st, float scale, float& alpha0,
                                              float& alpha1) {
  float mx0 = st.m0, mx1 = st.m1;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
    mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
  }
  mx0 = quad_max(mx0);
  mx1 = quad_max(mx1);
  // A row with no visible key yet keeps m = -inf; use 0 as its reference so no inf - inf NaN appears.
  const float ref0 = mx0 == -INFINITY ? 0.0f : mx0 * scale;
  const float ref1 = mx1 == -INFINITY ? 0.0f : mx1 * scale;
  alpha0 = fast_exp2(st.m0 * scale - ref0);
  alpha1 = fast_exp2(st.m1 * scale - ref1);
  st.m0 = mx0;
  st.m1 = mx1;
  float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    s[n][0] = fast_exp2(fmaf(s[n][0], scale, -ref0));
    s[n][1] = fast_exp2(fmaf(s[n][1], scale, -ref0));
    s[n][2] = fast_exp2(fmaf(s[n][2], scale, -ref1));
    s[n][3] = fast_exp2(fmaf(s[n][3], scale, -ref1));
    sum0 += s[n][0] + s[n][1];
    sum1 += s[n][2] + s[n][3];
  }
  st.l0 = st.l0 * alpha0 + sum0;
  st.l1 = st.l1 * alpha1 + sum1;
}

template <int NO>
__device__ __forceinline__ void rescale_rows(float (&o)[NO][4], float alpha0, float alpha1) {
#pragma unroll
  for (int n = 0; n < NO; ++n) {
    o[n][0] *= alpha0;
    o[n][1] *= alpha0;
    o[n][2] *= alpha1;
    o[n][3] *= alpha1;
  }
}

// One whole online-softmax step: probabilities, then the rescale of the D/8 output accumulators o.
template <int NT, int NO>
__device__ __forceinline__ void softmax_step(float (&s)[NT][4], float (&o)[NO][4], RowState& st, float scale) {
  float alpha0, alpha1;
  softmax_probs<NT>(s, st, scale, alpha0, alpha1);
  rescale_rows<NO>(o, alpha0, alpha1);
}

// S[16 x 8 NT] += Q (A fragments, D/16 steps) * K^T, K rows [0, 8 NT) of a padded smem tile.
template <typename T, int D, int NT>
__device__ __forceinline__ void qk_tile(float (&s)[NT][4], const uint32_t (&qa)[D / 16][4], const T* k_tile,
                                        int lane) {
  constexpr int kStride = D + 16 / static_cast<int>(sizeof(T));
  static_assert(NT % 2 == 0, "keys come in pairs of 8-key tiles");
  // ldmatrix.x4 matrices: (keys 0-7, d lo), (keys 0-7, d hi), (keys 8-15, d lo), (keys 8-15, d hi).
  const T* base = k_tile + ((lane & 7) + (lane >> 4) * 8) * kStride + ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, base + np * 16 * kStride + kk * 16);
      mma_16816<T>(s[2 * np], qa[kk], b[0], b[1]);
      mma_16816<T>(s[2 * np + 1], qa[kk], b[2], b[3]);
    }
  }
}

// O[16 x D] += P (probabilities of NT 8-key tiles, in accumulator layout) * V, V rows [0, 8 NT) of a tile.
template <typename T, int D, int NT>
__device__ __forceinline__ void pv_tile(float (&o)[D / 8][4], const float (&p)[NT][4], const T* v_tile, int lane) {
  constexpr int kStride = D + 16 / static_cast<int>(sizeof(T));
  // ldmatrix.x4.trans matrices: (keys 0-7, d lo), (keys 8-15, d lo), (keys 0-7, d hi), (keys 8-15, d hi).
  const T* base = v_tile + ((lane & 7) + ((lane >> 3) & 1) * 8) * kStride + (lane >> 4) * 8;
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    uint32_t pa[4];
    pa[0] = pack2<T>(p[2 * kk][0], p[2 * kk][1]);
    pa[1] = pack2<T>(p[2 * kk][2], p[2 * kk][3]);
    pa[2] = pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    pa[3] = pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, base + kk * 16 * kStride + np * 16);
      mma_16816<T>(o[2 * np], pa, b[0], b[1]);
      mma_16816<T>(o[2 * np + 1], pa, b[2], b[3]);
    }
  }
}

// Q rows (r0, r1) of a 16-row block as A fragments, read from global memory once; absent rows are zeros.
template <typename T, int D>
__device__ __forceinline__ void load_q_frags(uint32_t (&qa)[D / 16][4], const T* q0, const T* q1, bool v0, bool v1,
                                             int tig) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c = kk * 16 + tig * 2;
    qa[kk][0] = v0 ? *reinterpret_cast<const uint32_t*>(q0 + c) : 0u;
    qa[kk][1] = v1 ? *reinterpret_cast<const uint32_t*>(q1 + c) : 0u;
    qa[kk][2] = v0 ? *reinterpret_cast<const uint32_t*>(q0 + c + 8) : 0u;
    qa[kk][3] = v1 ? *reinterpret_cast<const uint32_t*>(q1 + c + 8) : 0u;
  }
}

}  // namespace attn

// Opts a kernel into more than 48 KB of dynamic shared memory, once per kernel and device (the opt-in is a
// per-function attribute; repeating the driver call on every launch would cost microseconds).
template <auto Kernel>
inline void set_smem_opt_in(size_t bytes) {
  static bool done[64] = {false};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (!done[dev]) {
    cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    done[dev] = true;
  }
}
}  // namespace lite_srt
#endif  // !USE_ROCM
