// Paged decode attention: one query token per request, K/V gathered through req_to_token.
//
// Grid = (split, kv head x query-head chunk, request). A block streams its share of the request's keys once and
// applies them to every query head of the GQA group (up to GMAX heads in registers), so each K/V row is read
// from HBM once per group. Within a block, a key is handled by TPK = head_dim / (16 B / sizeof(T)) lanes, each
// holding one 16-byte slice of K and V; every lane group keeps its own online softmax (base-2 exponent, scale
// folded into q), and groups are merged through shared memory at the end. Long contexts are cut into splits
// (chosen from the SM count so the grid fills the GPU) whose normalized partials and log-sum-exps a second
// kernel merges.
#include <algorithm>
#include <cfloat>

#include "../cuda_utils.cuh"
#include "attention.h"

namespace lite_srt {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxSplits = 64;
constexpr float kLog2e = 1.4426950408889634f;

template <typename T, int D, int GMAX>
__global__ void __launch_bounds__(kThreads) decode_kernel(AttentionArgs a, int num_splits, float* ws_out,
                                                          float* ws_lse) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int TPK = D / VEC;  // lanes per key
  constexpr int GROUPS = kThreads / TPK;
  // Keys per lane group in flight per iteration (memory-level parallelism); fewer with 8 heads to avoid spills.
  constexpr int kUnroll = GMAX >= 8 ? 2 : 4;
  static_assert(TPK <= WARP_SIZE && WARP_SIZE % TPK == 0, "a key's lanes must sit in one warp");

  const int64_t b = blockIdx.z;
  const int split = blockIdx.x;
  const int64_t group_size = a.q_heads / a.kv_heads;
  const int64_t chunks = (group_size + GMAX - 1) / GMAX;
  const int64_t kvh = blockIdx.y / chunks;
  const int64_t head0 = kvh * group_size + (blockIdx.y % chunks) * GMAX;
  const int n_heads = static_cast<int>(min(static_cast<int64_t>(GMAX), kvh * group_size + group_size - head0));

  const int64_t seq_len = a.seq_lens[b];
  const int64_t per_split = (seq_len + num_splits - 1) / num_splits;
  const int64_t j_begin = split * per_split;
  const int64_t j_end = min(seq_len, j_begin + per_split);
  const int64_t table_row = a.req_pool_indices[b] * a.req_to_token_stride;

  const int lane = threadIdx.x % TPK;
  const int grp = threadIdx.x / TPK;

  float q[GMAX][VEC];
  const float qscale = a.scale * kLog2e;
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    Pack16<T> qp;
    qp.raw = make_uint4(0, 0, 0, 0);
    if (g < n_heads) qp = load_pack(static_cast<const T*>(a.q) + b * a.q_stride.row + (head0 + g) * a.q_stride.head + lane * VEC);
#pragma unroll
    for (int e = 0; e < VEC; ++e) q[g][e] = to_float(qp[e]) * qscale;
  }
  float m[GMAX], l[GMAX], acc[GMAX][VEC];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[g][e] = 0.0f;
  }

  const T* k_base = static_cast<const T*>(a.k_cache) + kvh * a.k_stride.head + lane * VEC;
  const T* v_base = static_cast<const T*>(a.v_cache) + kvh * a.v_stride.head + lane * VEC;
  // Every lane runs the same trip count (lane groups start at different keys): the shuffles below need the
  // whole warp, so a group with no key left still takes part with zeros.
  for (int64_t base = j_begin; base < j_end; base += GROUPS * kUnroll) {
    const int64_t j0 = base + grp;
    Pack16<T> kp[kUnroll], vp[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + u * GROUPS;
      valid[u] = j < j_end;
      kp[u].raw = make_uint4(0, 0, 0, 0);
      vp[u].raw = make_uint4(0, 0, 0, 0);
      if (valid[u]) {
        const int64_t slot = a.req_to_token[table_row + j];
        kp[u] = load_pack(k_base + slot * a.k_stride.row);
        vp[u] = load_pack(v_base + slot * a.v_stride.row);
      }
    }
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      float s[kUnroll];
      float block_max = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot += q[g][e] * to_float(kp[u][e]);
#pragma unroll
        for (int mask = TPK / 2; mask > 0; mask >>= 1) dot += LSRT_SHFL_XOR(dot, mask);  // all lanes take part
        s[u] = valid[u] ? dot : -FLT_MAX;
        block_max = fmaxf(block_max, s[u]);
      }
      const float alpha = exp2f(m[g] - block_max);
      float p[kUnroll];
      float p_sum = 0.0f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        p[u] = valid[u] ? exp2f(s[u] - block_max) : 0.0f;
        p_sum += p[u];
      }
      l[g] = l[g] * alpha + p_sum;
      m[g] = block_max;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float o = acc[g][e] * alpha;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) o += p[u] * to_float(vp[u][e]);
        acc[g][e] = o;
      }
    }
  }

  // Merge the lane groups' softmax states.
  __shared__ float sm_m[GROUPS][GMAX];
  __shared__ float sm_l[GROUPS][GMAX];
  __shared__ float sm_o[GROUPS][GMAX][D];
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) sm_o[grp][g][lane * VEC + e] = acc[g][e];
    if (lane == 0) {
      sm_m[grp][g] = m[g];
      sm_l[grp][g] = l[g];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < n_heads * D; idx += kThreads) {
    const int g = idx / D;
    const int d = idx % D;
    float mx = -FLT_MAX;
    for (int r = 0; r < GROUPS; ++r) mx = fmaxf(mx, sm_m[r][g]);
    float total_l = 0.0f, total_o = 0.0f;
    for (int r = 0; r < GROUPS; ++r) {
      const float w = sm_l[r][g] > 0.0f ? exp2f(sm_m[r][g] - mx) : 0.0f;
      total_l += sm_l[r][g] * w;
      total_o += sm_o[r][g][d] * w;
    }
    const float o = total_l > 0.0f ? total_o / total_l : 0.0f;  // an empty context gives zeros, as the reference
    const int64_t head = head0 + g;
    if (num_splits == 1) {
      static_cast<T*>(a.out)[b * a.out_stride.row + head * a.out_stride.head + d] = from_float<T>(o);
    } else {
      const int64_t part = (b * a.q_heads + head) * num_splits + split;
      ws_out[part * D + d] = o;
      if (d == 0) ws_lse[part] = total_l > 0.0f ? mx + log2f(total_l) : -FLT_MAX;
    }
  }
}

// out = sum_s o_s * 2^(lse_s - lse), one block per (request, head), one thread per element of the head.
template <typename T>
__global__ void merge_splits_kernel(AttentionArgs a, int num_splits, const float* ws_out, const float* ws_lse) {
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / a.q_heads;
  const int64_t head = bh % a.q_heads;
  const float* lse = ws_lse + bh * num_splits;
  float mx = -FLT_MAX;
  for (int s = 0; s < num_splits; ++s) mx = fmaxf(mx, lse[s]);
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
      if (lse[s] == -FLT_MAX) continue;  // an empty split
      const float w = exp2f(lse[s] - mx);
      num += w * ws_out[(bh * num_splits + s) * a.head_dim + d];
      den += w;
    }
    static_cast<T*>(a.out)[b * a.out_stride.row + head * a.out_stride.head + d] =
        from_float<T>(den > 0.0f ? num / den : 0.0f);
  }
}

int gmax_for(int64_t group) { return group >= 8 ? 8 : group >= 4 ? 4 : group >= 2 ? 2 : 1; }

// Splits so that the grid has about 8 blocks per SM; the context length lives on the device, so each request
// divides its own keys evenly over this many splits (empty splits cost one early exit).
int choose_splits(const AttentionArgs& a) {
  const int64_t group = a.q_heads / a.kv_heads;
  const int64_t chunks = ceil_div(group, gmax_for(group));
  const int64_t blocks = std::max<int64_t>(1, a.batch * a.kv_heads * chunks);
  const int64_t target = static_cast<int64_t>(current_num_sms()) * 8;
  return static_cast<int>(std::clamp<int64_t>(ceil_div(target, blocks), 1, kMaxSplits));
}

template <typename T, int D, int GMAX>
void launch_typed(const AttentionArgs& a, int splits, float* ws_out, float* ws_lse, cudaStream_t stream) {
  const int64_t group = a.q_heads / a.kv_heads;
  const dim3 grid(splits, static_cast<unsigned>(a.kv_heads * ceil_div(group, GMAX)), static_cast<unsigned>(a.batch));
  decode_kernel<T, D, GMAX><<<grid, kThreads, 0, stream>>>(a, splits, ws_out, ws_lse);
  if (splits > 1) {
    merge_splits_kernel<T><<<static_cast<unsigned>(a.batch * a.q_heads), D, 0, stream>>>(a, splits, ws_out, ws_lse);
  }
}

template <typename T, int D>
void launch_gmax(const AttentionArgs& a, int splits, float* ws_out, float* ws_lse, cudaStream_t stream) {
  switch (gmax_for(a.q_heads / a.kv_heads)) {
    case 8:
      launch_typed<T, D, 8>(a, splits, ws_out, ws_lse, stream);
      break;
    case 4:
      launch_typed<T, D, 4>(a, splits, ws_out, ws_lse, stream);
      break;
    case 2:
      launch_typed<T, D, 2>(a, splits, ws_out, ws_lse, stream);
      break;
    default:
      launch_typed<T, D, 1>(a, splits, ws_out, ws_lse, stream);
  }
}

}  // namespace

int64_t decode_attention_workspace_bytes(const AttentionArgs& a) {
  const int splits = choose_splits(a);
  if (splits == 1) return 0;
  return a.batch * a.q_heads * splits * (a.head_dim + 1) * static_cast<int64_t>(sizeof(float));
}

void launch_decode_attention(const AttentionArgs& a, void* workspace, cudaStream_t stream) {
  if (a.batch == 0) return;
  const int splits = choose_splits(a);
  float* ws_out = static_cast<float*>(workspace);
  float* ws_lse = ws_out + a.batch * a.q_heads * splits * a.head_dim;
  dispatch_cuda_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (a.head_dim == 64) {
      launch_gmax<T, 64>(a, splits, ws_out, ws_lse, stream);
    } else {
      launch_gmax<T, 128>(a, splits, ws_out, ws_lse, stream);
    }
  });
  check_launch("decode_attention");
}

}  // namespace lite_srt
