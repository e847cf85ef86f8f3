// The one binding file of lite_srt._C. Every op is exported as <name>_cpu and, in CUDA/ROCm builds,
// <name>_cuda, with the argument order of lite_srt/kernels/__init__.py (outputs first where present).
// Each entry point validates every tensor (dtype, device, shape, strides) with TORCH_CHECK*, so a mismatch is
// a Python TypeError/ValueError/RuntimeError rather than a crash, then fills a torch-free argument block
// (kernel_args.h) and calls the CPU kernel or the CUDA launcher.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/cpu_ops.h"
#include "kernel_args.h"

#ifdef LITE_SRT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "attention/attention.h"
#include "cache/store_kv.h"
#include "comm/all_reduce.h"
#include "launch.h"
#include "ops/gemv.h"
#include "ops/ops.h"
#endif

#ifdef LITE_SRT_WITH_CUDA
namespace lite_srt {
void register_fused_decode(pybind11::module_& m);  // fused/fused_bindings.cpp
}  // namespace lite_srt
#endif
#ifdef LITE_SRT_WITH_RADIX
void register_radix_tree(pybind11::module_& m);
#endif

namespace lite_srt {
namespace {

enum class Backend { kCPU, kCUDA };

DType activation_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return DType::kFloat32;  // unreachable
}

void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                      const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
                   ref_name, " has ", ref.scalar_type(), "; they must match");
}

void check_device(const at::Tensor& t, Backend backend, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  const bool ok = backend == Backend::kCPU ? t.device().is_cpu() : t.device().is_cuda();
  TORCH_CHECK_VALUE(ok, op, "_", backend == Backend::kCPU ? "cpu" : "cuda", ": ", name, " is on ", t.device(),
                    "; every tensor must be on the ", backend == Backend::kCPU ? "CPU" : "GPU");
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but q/x is on ",
                    ref.device());
}

void check_size(const at::Tensor& t, int64_t dim, int64_t expected, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, op, ": ", name, ".size(", dim, ") is ", t.size(dim), ", expected ",
                    expected, " (shape ", t.sizes(), ")");
}

// A [rows, heads, dim] view with a contiguous last dim; returns its row and head strides.
Strides3 strides3(const at::Tensor& t, const char* op, const char* name, int64_t heads, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == 3, op, ": ", name, " must be 3-D [tokens, heads, head_dim], got shape ", t.sizes());
  check_size(t, 1, heads, op, name);
  check_size(t, 2, dim, op, name);
  TORCH_CHECK_VALUE(t.stride(2) == 1, op, ": ", name, " must be contiguous in its last dim (strides ", t.strides(),
                    ")");
  return {t.stride(0), t.stride(1)};
}

// Any tensor [..., hidden] whose leading dims flatten into one strided row dim; returns that row stride.
int64_t row_stride(const at::Tensor& t, const char* op, const char* name, int64_t hidden) {
  TORCH_CHECK_VALUE(t.dim() >= 1, op, ": ", name, " must have at least one dim");
  check_size(t, t.dim() - 1, hidden, op, name);
  TORCH_CHECK_VALUE(t.stride(-1) == 1 || hidden == 1, op, ": ", name,
                    " must be contiguous in its last dim (strides ", t.strides(), ")");
  if (t.dim() == 1) return hidden;
  for (int64_t i = 0; i + 2 < t.dim(); ++i) {
    TORCH_CHECK_VALUE(t.size(i) == 1 || t.stride(i) == t.stride(i + 1) * t.size(i + 1), op, ": ", name,
                      " leading dims cannot be flattened into rows (shape ", t.sizes(), ", strides ", t.strides(),
                      ")");
  }
  return t.stride(-2);
}

int64_t num_rows(const at::Tensor& t) { return t.dim() == 0 ? 0 : t.numel() / t.size(-1); }

IndexArray index_array(const at::Tensor& t, const char* op, const char* name, int64_t expected_len) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", name,
                   " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(0) == expected_len, op, ": ", name, " has ", t.size(0), " entries, expected ",
                    expected_len);
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
  return {t.data_ptr(), t.scalar_type() == at::kLong};
}

void check_head_dim(int64_t d, const char* op) {
  TORCH_CHECK_VALUE(d == 64 || d == 128, op, ": head_dim ", d, " is not supported (64 or 128)");
}

// ---- argument blocks (shared by the CPU and CUDA entry points) ----

RmsNormArgs make_rmsnorm(const at::Tensor& out, const at::Tensor& x, const at::Tensor* residual,
                         const at::Tensor& weight, double eps, Backend be, const char* op) {
  RmsNormArgs a{};
  a.dtype = activation_dtype(x, op, "x");
  check_device(out, be, x, op, "out");
  check_device(weight, be, x, op, "weight");
  check_same_dtype(out, x, op, "out", "x");
  TORCH_CHECK_VALUE(weight.dim() == 1 && weight.is_contiguous(), op, ": weight must be a contiguous 1-D tensor");
  a.hidden = weight.size(0);
  TORCH_CHECK_VALUE(a.hidden > 0, op, ": weight is empty");
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type() || weight.scalar_type() == at::kFloat, op,
                   ": weight must have x's dtype (", x.scalar_type(), ") or float32, got ", weight.scalar_type());
  a.weight_dtype = weight.scalar_type() == at::kFloat ? DType::kFloat32 : a.dtype;
  a.x_stride = row_stride(x, op, "x", a.hidden);
  a.out_stride = row_stride(out, op, "out", a.hidden);
  a.rows = num_rows(x);
  TORCH_CHECK_VALUE(num_rows(out) == a.rows, op, ": out has shape ", out.sizes(), " but x has ", x.sizes());
  if (residual != nullptr) {
    check_device(*residual, be, x, op, "residual");
    check_same_dtype(*residual, x, op, "residual", "x");
    a.residual_stride = row_stride(*residual, op, "residual", a.hidden);
    TORCH_CHECK_VALUE(num_rows(*residual) == a.rows, op, ": residual has shape ", residual->sizes(),
                      " but x has ", x.sizes());
    a.residual = residual->data_ptr();
  }
  TORCH_CHECK_VALUE(eps >= 0.0, op, ": eps must be >= 0, got ", eps);
  a.out = out.data_ptr();
  a.x = x.data_ptr();
  a.weight = weight.data_ptr();
  a.eps = static_cast<float>(eps);
  return a;
}

SiluAndMulArgs make_silu_and_mul(const at::Tensor& out, const at::Tensor& x, Backend be) {
  const char* op = "silu_and_mul";
  SiluAndMulArgs a{};
  a.dtype = activation_dtype(x, op, "x");
  check_device(out, be, x, op, "out");
  check_same_dtype(out, x, op, "out", "x");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) % 2 == 0, op, ": x's last dim must be even (gate | up), shape ",
                    x.sizes());
  a.inter = x.size(-1) / 2;
  a.x_stride = row_stride(x, op, "x", 2 * a.inter);
  a.out_stride = row_stride(out, op, "out", a.inter);
  a.rows = num_rows(x);
  TORCH_CHECK_VALUE(num_rows(out) == a.rows, op, ": out has shape ", out.sizes(), " but x has ", x.sizes());
  a.out = out.data_ptr();
  a.x = x.data_ptr();
  return a;
}

RopeArgs make_rope(const at::Tensor& positions, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& cos_sin_cache, bool is_neox, Backend be) {
  const char* op = "rotary_embedding";
  RopeArgs a{};
  a.dtype = activation_dtype(q, op, "q");
  check_device(k, be, q, op, "k");
  check_device(positions, be, q, op, "positions");
  check_device(cos_sin_cache, be, q, op, "cos_sin_cache");
  check_same_dtype(k, q, op, "k", "q");
  TORCH_CHECK_VALUE(q.dim() == 3 && k.dim() == 3, op, ": q and k must be 3-D [tokens, heads, head_dim], got ",
                    q.sizes(), " and ", k.sizes());
  a.tokens = q.size(0);
  a.q_heads = q.size(1);
  a.kv_heads = k.size(1);
  a.head_dim = q.size(2);
  TORCH_CHECK_VALUE(a.head_dim % 2 == 0, op, ": head_dim must be even, got ", a.head_dim);
  check_size(k, 0, a.tokens, op, "k");
  a.q_stride = strides3(q, op, "q", a.q_heads, a.head_dim);
  a.k_stride = strides3(k, op, "k", a.kv_heads, a.head_dim);
  a.positions = index_array(positions, op, "positions", a.tokens);
  TORCH_CHECK_TYPE(cos_sin_cache.scalar_type() == at::kFloat, op, ": cos_sin_cache must be float32, got ",
                   cos_sin_cache.scalar_type());
  TORCH_CHECK_VALUE(cos_sin_cache.dim() == 2 && cos_sin_cache.size(1) == a.head_dim && cos_sin_cache.is_contiguous(),
                    op, ": cos_sin_cache must be a contiguous [max_pos, head_dim=", a.head_dim, "] tensor, got ",
                    cos_sin_cache.sizes());
  a.max_pos = cos_sin_cache.size(0);
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.cos_sin = cos_sin_cache.data_ptr<float>();
  a.is_neox = is_neox;
  return a;
}

// A KV pool: [slots, kv_heads, head_dim], contiguous in the last dim.
Strides3 pool_strides(const at::Tensor& cache, const at::Tensor& ref, Backend be, const char* op, const char* name,
                      int64_t kv_heads, int64_t d) {
  check_device(cache, be, ref, op, name);
  check_same_dtype(cache, ref, op, name, "the activations");
  return strides3(cache, op, name, kv_heads, d);
}

StoreKVArgs make_store_kv(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& slots,
                          const at::Tensor& k, const at::Tensor& v, Backend be) {
  const char* op = "store_kv";
  StoreKVArgs a{};
  a.dtype = activation_dtype(k, op, "k");
  check_device(v, be, k, op, "v");
  check_device(slots, be, k, op, "slots");
  check_same_dtype(v, k, op, "v", "k");
  TORCH_CHECK_VALUE(k.dim() == 3, op, ": k must be 3-D [tokens, kv_heads, head_dim], got ", k.sizes());
  a.tokens = k.size(0);
  a.kv_heads = k.size(1);
  a.head_dim = k.size(2);
  a.k_stride = strides3(k, op, "k", a.kv_heads, a.head_dim);
  a.v_stride = strides3(v, op, "v", a.kv_heads, a.head_dim);
  check_size(v, 0, a.tokens, op, "v");
  a.k_cache_stride = pool_strides(k_cache, k, be, op, "k_cache", a.kv_heads, a.head_dim);
  a.v_cache_stride = pool_strides(v_cache, k, be, op, "v_cache", a.kv_heads, a.head_dim);
  a.num_slots = k_cache.size(0);
  check_size(v_cache, 0, a.num_slots, op, "v_cache");
  a.slots = index_array(slots, op, "slots", a.tokens);
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  return a;
}

AttentionArgs make_attention(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const at::Tensor& req_to_token,
                             const at::Tensor& req_pool_indices, const at::Tensor& seq_lens, double scale,
                             Backend be, const char* op) {
  AttentionArgs a{};
  a.dtype = activation_dtype(q, op, "q");
  TORCH_CHECK_VALUE(q.dim() == 3, op, ": q must be 3-D [tokens, q_heads, head_dim], got ", q.sizes());
  TORCH_CHECK_VALUE(k_cache.dim() == 3, op, ": k_cache must be 3-D [slots, kv_heads, head_dim], got ",
                    k_cache.sizes());
  a.tokens = q.size(0);
  a.q_heads = q.size(1);
  a.head_dim = q.size(2);
  a.kv_heads = k_cache.size(1);
  check_head_dim(a.head_dim, op);
  TORCH_CHECK_VALUE(a.kv_heads > 0 && a.q_heads % a.kv_heads == 0, op, ": q_heads (", a.q_heads,
                    ") must be a multiple of kv_heads (", a.kv_heads, ")");
  check_device(out, be, q, op, "out");
  check_same_dtype(out, q, op, "out", "q");
  a.q_stride = strides3(q, op, "q", a.q_heads, a.head_dim);
  a.out_stride = strides3(out, op, "out", a.q_heads, a.head_dim);
  check_size(out, 0, a.tokens, op, "out");
  a.k_stride = pool_strides(k_cache, q, be, op, "k_cache", a.kv_heads, a.head_dim);
  a.v_stride = pool_strides(v_cache, q, be, op, "v_cache", a.kv_heads, a.head_dim);
  a.num_slots = k_cache.size(0);
  check_size(v_cache, 0, a.num_slots, op, "v_cache");

  check_device(req_to_token, be, q, op, "req_to_token");
  check_device(req_pool_indices, be, q, op, "req_pool_indices");
  check_device(seq_lens, be, q, op, "seq_lens");
  TORCH_CHECK_TYPE(req_to_token.scalar_type() == at::kInt || req_to_token.scalar_type() == at::kLong, op,
                   ": req_to_token must be int32 or int64, got ", req_to_token.scalar_type());
  TORCH_CHECK_VALUE(req_to_token.dim() == 2 && (req_to_token.stride(1) == 1 || req_to_token.size(1) <= 1), op,
                    ": req_to_token must be 2-D [rows, max_context] and contiguous in its last dim, got shape ",
                    req_to_token.sizes(), " strides ", req_to_token.strides());
  a.req_to_token = {req_to_token.data_ptr(), req_to_token.scalar_type() == at::kLong};
  a.req_to_token_stride = req_to_token.stride(0);
  a.req_to_token_rows = req_to_token.size(0);
  a.req_to_token_cols = req_to_token.size(1);
  a.batch = req_pool_indices.dim() == 1 ? req_pool_indices.size(0) : -1;
  a.req_pool_indices = index_array(req_pool_indices, op, "req_pool_indices", a.batch);
  a.seq_lens = index_array(seq_lens, op, "seq_lens", a.batch);
  TORCH_CHECK_VALUE(scale > 0.0, op, ": scale must be > 0, got ", scale);
  a.scale = static_cast<float>(scale);
  a.out = out.data_ptr();
  a.q = q.data_ptr();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  return a;
}

AttentionArgs make_decode(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                          const at::Tensor& v_cache, const at::Tensor& req_to_token,
                          const at::Tensor& req_pool_indices, const at::Tensor& seq_lens, double scale, Backend be) {
  const char* op = "decode_attention";
  AttentionArgs a = make_attention(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, be, op);
  TORCH_CHECK_VALUE(a.batch == a.tokens, op, ": q has ", a.tokens, " rows but there are ", a.batch,
                    " requests (one query token per request)");
  a.extend_lens = {nullptr, false};
  a.extend_start_loc = {nullptr, false};
  return a;
}

AttentionArgs make_extend(const at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache,
                          const at::Tensor& v_cache, const at::Tensor& req_to_token,
                          const at::Tensor& req_pool_indices, const at::Tensor& seq_lens,
                          const at::Tensor& extend_lens, const at::Tensor& extend_start_loc, double scale,
                          Backend be) {
  const char* op = "extend_attention";
  AttentionArgs a = make_attention(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, be, op);
  check_device(extend_lens, be, q, op, "extend_lens");
  check_device(extend_start_loc, be, q, op, "extend_start_loc");
  a.extend_lens = index_array(extend_lens, op, "extend_lens", a.batch);
  a.extend_start_loc = index_array(extend_start_loc, op, "extend_start_loc", a.batch);
  return a;
}

// ---- CPU entry points ----

void rmsnorm_cpu(at::Tensor out, at::Tensor x, at::Tensor weight, double eps) {
  cpu::rmsnorm(make_rmsnorm(out, x, nullptr, weight, eps, Backend::kCPU, "rmsnorm"));
}

void fused_add_rmsnorm_cpu(at::Tensor x, at::Tensor residual, at::Tensor weight, double eps) {
  cpu::rmsnorm(make_rmsnorm(x, x, &residual, weight, eps, Backend::kCPU, "fused_add_rmsnorm"));
}

void silu_and_mul_cpu(at::Tensor out, at::Tensor x) { cpu::silu_and_mul(make_silu_and_mul(out, x, Backend::kCPU)); }

void rotary_embedding_cpu(at::Tensor positions, at::Tensor q, at::Tensor k, at::Tensor cos_sin_cache, bool is_neox) {
  cpu::rotary_embedding(make_rope(positions, q, k, cos_sin_cache, is_neox, Backend::kCPU));
}

void store_kv_cpu(at::Tensor k_cache, at::Tensor v_cache, at::Tensor slots, at::Tensor k, at::Tensor v) {
  cpu::store_kv(make_store_kv(k_cache, v_cache, slots, k, v, Backend::kCPU));
}

void decode_attention_cpu(at::Tensor out, at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                          at::Tensor req_to_token, at::Tensor req_pool_indices, at::Tensor seq_lens, double scale) {
  cpu::decode_attention(
      make_decode(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, Backend::kCPU));
}

void extend_attention_cpu(at::Tensor out, at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                          at::Tensor req_to_token, at::Tensor req_pool_indices, at::Tensor seq_lens,
                          at::Tensor extend_lens, at::Tensor extend_start_loc, double scale) {
  cpu::extend_attention(make_extend(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_lens,
                                    extend_start_loc, scale, Backend::kCPU));
}

#ifdef LITE_SRT_WITH_CUDA
// ---- CUDA entry points: same checks, then the launcher on the current stream of the tensors' device ----

cudaStream_t stream_for(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.get_device()).stream(); }

// Checked before the device guard is built: a CUDAGuard on a CPU device throws a message naming no argument.
c10::cuda::CUDAGuard guard_for(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, "_cuda: ", name, " is on ", t.device(), "; every tensor must be on the GPU");
  return c10::cuda::CUDAGuard(t.device());
}

void rmsnorm_cuda(at::Tensor out, at::Tensor x, at::Tensor weight, double eps) {
  const c10::cuda::CUDAGuard guard = guard_for(x, "rmsnorm", "x");
  launch_rmsnorm(make_rmsnorm(out, x, nullptr, weight, eps, Backend::kCUDA, "rmsnorm"), stream_for(x));
}

void fused_add_rmsnorm_cuda(at::Tensor x, at::Tensor residual, at::Tensor weight, double eps) {
  const c10::cuda::CUDAGuard guard = guard_for(x, "fused_add_rmsnorm", "x");
  launch_rmsnorm(make_rmsnorm(x, x, &residual, weight, eps, Backend::kCUDA, "fused_add_rmsnorm"), stream_for(x));
}

void silu_and_mul_cuda(at::Tensor out, at::Tensor x) {
  const c10::cuda::CUDAGuard guard = guard_for(x, "silu_and_mul", "x");
  launch_silu_and_mul(make_silu_and_mul(out, x, Backend::kCUDA), stream_for(x));
}

void rotary_embedding_cuda(at::Tensor positions, at::Tensor q, at::Tensor k, at::Tensor cos_sin_cache,
                           bool is_neox) {
  const c10::cuda::CUDAGuard guard = guard_for(q, "rotary_embedding", "q");
  launch_rotary_embedding(make_rope(positions, q, k, cos_sin_cache, is_neox, Backend::kCUDA), stream_for(q));
}

// RoPE on q and k in place, then k and v stored into their pool slots, in one kernel.
void rope_store_kv_cuda(at::Tensor positions, at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor cos_sin_cache,
                        bool is_neox, at::Tensor k_cache, at::Tensor v_cache, at::Tensor slots) {
  const c10::cuda::CUDAGuard guard = guard_for(q, "rope_store_kv", "q");
  const RopeArgs rope = make_rope(positions, q, k, cos_sin_cache, is_neox, Backend::kCUDA);
  const StoreKVArgs store = make_store_kv(k_cache, v_cache, slots, k, v, Backend::kCUDA);
  launch_rope_store_kv(rope, store, stream_for(q));
}

void store_kv_cuda(at::Tensor k_cache, at::Tensor v_cache, at::Tensor slots, at::Tensor k, at::Tensor v) {
  const c10::cuda::CUDAGuard guard = guard_for(k, "store_kv", "k");
  launch_store_kv(make_store_kv(k_cache, v_cache, slots, k, v, Backend::kCUDA), stream_for(k));
}

// The in-kernel split merge's counters (attention.h, MergeCounters): an int32 CUDA tensor on q's device.
MergeCounters merge_counters_of(const std::optional<at::Tensor>& t, const at::Tensor& q, const char* op) {
  if (!t.has_value()) return {};
  check_device(*t, Backend::kCUDA, q, op, "merge_counters");
  TORCH_CHECK_VALUE(t->scalar_type() == at::kInt && t->is_contiguous(), op,
                    ": merge_counters must be a contiguous int32 tensor");
  return {t->data_ptr<int>(), t->numel()};
}

// The step's key counts for balanced key splits (kernel_args.h, DecodeBalance).
DecodeBalance decode_balance_of(int64_t total_keys, int64_t max_keys, const std::optional<at::Tensor>& chunk_keys,
                                const at::Tensor& q, const char* op) {
  TORCH_CHECK_VALUE(total_keys >= 0 && max_keys >= 0, op, ": total_keys and max_keys must be >= 0, got ",
                    std::to_string(total_keys), " and ", std::to_string(max_keys));
  DecodeBalance bal{total_keys, max_keys, {nullptr, true}};
  if (chunk_keys.has_value()) {
    check_device(*chunk_keys, Backend::kCUDA, q, op, "chunk_keys");
    TORCH_CHECK_VALUE(max_keys > 0, op, ": chunk_keys needs max_keys > 0 (it sizes the grid's splits)");
    bal.chunk_keys = index_array(*chunk_keys, op, "chunk_keys", 1);
  }
  return bal;
}

void decode_attention_cuda(at::Tensor out, at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                           at::Tensor req_to_token, at::Tensor req_pool_indices, at::Tensor seq_lens, double scale,
                           std::optional<at::Tensor> merge_counters, int64_t total_keys, int64_t max_keys,
                           std::optional<at::Tensor> chunk_keys) {
  const char* op = "decode_attention";
  const c10::cuda::CUDAGuard guard = guard_for(q, op, "q");
  const AttentionArgs a =
      make_decode(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, Backend::kCUDA);
  const MergeCounters counters = merge_counters_of(merge_counters, q, op);
  const DecodeBalance bal = decode_balance_of(total_keys, max_keys, chunk_keys, q, op);
  // Split-K partials live in a scratch buffer from torch's caching allocator (cheap, CUDA-graph safe).
  const int64_t bytes = decode_attention_workspace_bytes(a, nullptr, bal);
  at::Tensor workspace = at::empty({std::max<int64_t>(bytes, 1)}, q.options().dtype(at::kByte));
  launch_decode_attention(a, nullptr, workspace.data_ptr(), counters, stream_for(q), bal);
}

py::tuple decode_split_plan_cuda(int64_t q_heads, int64_t kv_heads, int64_t batch, int64_t total_keys,
                                 int64_t max_keys) {
  // std::to_string: formatting an int64 through the check's stream crashes some builds (docs/BENCHMARKS.md).
  TORCH_CHECK_VALUE(kv_heads > 0 && q_heads % kv_heads == 0 && batch >= 1, "decode_split_plan: need kv_heads > 0 "
                    "dividing q_heads and batch >= 1, got ", std::to_string(q_heads), ", ", std::to_string(kv_heads),
                    ", ", std::to_string(batch));
  const DecodeSplitPlan p = decode_split_plan(q_heads, kv_heads, batch, total_keys, max_keys);
  return py::make_tuple(p.base, p.chunk, p.splits);
}

// Decode attention with cascade groups (kernel_args.h, CascadeArgs): rows sharing a prefix attend it once.
// The index values are the scheduler's (prefix_groups.py); only their shapes and devices are checked here.
void decode_attention_cascade_cuda(at::Tensor out, at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                   at::Tensor req_to_token, at::Tensor req_pool_indices, at::Tensor seq_lens,
                                   double scale, at::Tensor shared_lens, at::Tensor group_start,
                                   at::Tensor group_size, int64_t max_shared, int64_t max_group,
                                   int64_t shared_splits, std::optional<at::Tensor> split_count,
                                   std::optional<at::Tensor> merge_counters, int64_t total_keys, int64_t max_keys,
                                   std::optional<at::Tensor> chunk_keys) {
  const char* op = "decode_attention_cascade";
  const c10::cuda::CUDAGuard guard = guard_for(q, op, "q");
  const AttentionArgs a =
      make_decode(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, scale, Backend::kCUDA);
  for (const auto& [t, name] : {std::pair{&shared_lens, "shared_lens"}, {&group_start, "group_start"},
                                {&group_size, "group_size"}}) {
    check_device(*t, Backend::kCUDA, q, op, name);
  }
  CascadeArgs c;
  c.shared_lens = index_array(shared_lens, op, "shared_lens", a.batch);
  c.num_groups = group_start.dim() == 1 ? group_start.size(0) : -1;
  c.group_start = index_array(group_start, op, "group_start", c.num_groups);
  c.group_size = index_array(group_size, op, "group_size", c.num_groups);
  TORCH_CHECK_VALUE(max_shared >= 0 && max_group >= 1 && max_group <= a.batch, op,
                    ": max_shared must be >= 0 and max_group in [1, batch], got ", std::to_string(max_shared), " and ",
                    std::to_string(max_group));
  TORCH_CHECK_VALUE(shared_splits >= 0, op, ": shared_splits must be >= 0, got ", std::to_string(shared_splits));
  c.max_shared = max_shared;
  c.max_group = max_group;
  c.shared_splits = shared_splits;
  c.split_count = {nullptr, true};
  if (split_count.has_value()) {
    check_device(*split_count, Backend::kCUDA, q, op, "split_count");
    TORCH_CHECK_VALUE(shared_splits > 0, op, ": split_count needs shared_splits > 0 (the blocks launched per group)");
    c.split_count = index_array(*split_count, op, "split_count", 1);
  }
  const MergeCounters counters = merge_counters_of(merge_counters, q, op);
  const DecodeBalance bal = decode_balance_of(total_keys, max_keys, chunk_keys, q, op);
  const int64_t bytes = decode_attention_workspace_bytes(a, &c, bal);
  at::Tensor workspace = at::empty({std::max<int64_t>(bytes, 1)}, q.options().dtype(at::kByte));
  launch_decode_attention(a, &c, workspace.data_ptr(), counters, stream_for(q), bal);
}

void extend_attention_cuda(at::Tensor out, at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                           at::Tensor req_to_token, at::Tensor req_pool_indices, at::Tensor seq_lens,
                           at::Tensor extend_lens, at::Tensor extend_start_loc, double scale) {
  const c10::cuda::CUDAGuard guard = guard_for(q, "extend_attention", "q");
  launch_extend_attention(make_extend(out, q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                                      extend_lens, extend_start_loc, scale, Backend::kCUDA),
                          stream_for(q));
}

// out [M, N] = in(x) [M, K] @ weight[N, K]^T (+ bias), M <= 8; in(x) = x, or silu_and_mul(x) for x [M, 2K].
GemvArgs make_gemv(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, bool fuse_silu_mul) {
  const char* op = "gemv";
  GemvArgs a{};
  a.dtype = activation_dtype(x, op, "x");
  TORCH_CHECK_TYPE(a.dtype != DType::kFloat32, op, ": x must be float16 or bfloat16, got ", x.scalar_type());
  check_device(out, Backend::kCUDA, x, op, "out");
  check_device(weight, Backend::kCUDA, x, op, "weight");
  check_same_dtype(out, x, op, "out", "x");
  check_same_dtype(weight, x, op, "weight", "x");
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.is_contiguous(), op, ": weight must be a contiguous 2-D [N, K] ",
                    "tensor, got shape ", weight.sizes(), " strides ", weight.strides());
  a.n = weight.size(0);
  a.k = weight.size(1);
  TORCH_CHECK_VALUE(a.k > 0 && a.k % 8 == 0, op, ": K = weight.size(1) must be a positive multiple of 8, got ",
                    a.k);
  const int64_t in_width = fuse_silu_mul ? 2 * a.k : a.k;
  a.x_stride = row_stride(x, op, "x", in_width);
  a.out_stride = row_stride(out, op, "out", a.n);
  a.rows = num_rows(x);
  TORCH_CHECK_VALUE(a.rows >= 1 && a.rows <= kGemvMaxRows, op, ": x has ", a.rows, " rows (shape ", x.sizes(),
                    "); the GEMV takes 1 to ", kGemvMaxRows);
  TORCH_CHECK_VALUE(num_rows(out) == a.rows, op, ": out has shape ", out.sizes(), " but x has ", x.sizes());
  TORCH_CHECK_VALUE(a.x_stride % 8 == 0 && (reinterpret_cast<uintptr_t>(x.data_ptr()) & 15u) == 0 &&
                        (reinterpret_cast<uintptr_t>(weight.data_ptr()) & 15u) == 0,
                    op, ": x and weight must be 16-byte aligned with a row stride that is a multiple of 8 ",
                    "(x row stride ", a.x_stride, ")");
  if (bias.has_value() && bias->defined()) {
    check_device(*bias, Backend::kCUDA, x, op, "bias");
    check_same_dtype(*bias, x, op, "bias", "x");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == a.n && bias->is_contiguous(), op,
                      ": bias must be a contiguous [N=", a.n, "] tensor, got shape ", bias->sizes());
    a.bias = bias->data_ptr();
  }
  a.out = out.data_ptr();
  a.x = x.data_ptr();
  a.weight = weight.data_ptr();
  a.fuse_silu_mul = fuse_silu_mul;
  return a;
}

void gemv_cuda(at::Tensor out, at::Tensor x, at::Tensor weight, std::optional<at::Tensor> bias,
               bool fuse_silu_mul) {
  const c10::cuda::CUDAGuard guard = guard_for(x, "gemv", "x");
  launch_gemv(make_gemv(out, x, weight, bias, fuse_silu_mul), stream_for(x));
}

// Custom all-reduce (comm/all_reduce.h). Buffers are raw device pointers passed as ints: they come from
// cudaMalloc / cudaIpcOpenMemHandle, not torch's allocator, and lite_srt/distributed/custom_all_reduce.py owns
// them. Messages format numbers with std::to_string: on the device build a TORCH_CHECK message streaming an int64
// crashed (docs/BENCHMARKS.md).
void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

int64_t ar_alloc_cuda(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes > 0, "ar_alloc: bytes must be positive");
  void* ptr = nullptr;
  check_cuda(ar_alloc(static_cast<size_t>(bytes), &ptr), "ar_alloc");
  return reinterpret_cast<int64_t>(ptr);
}

void ar_free_cuda(int64_t ptr) { check_cuda(ar_free(reinterpret_cast<void*>(ptr)), "ar_free"); }

py::bytes ar_ipc_handle_cuda(int64_t ptr) {
  char handle[kIpcHandleBytes];
  check_cuda(ar_ipc_handle(reinterpret_cast<void*>(ptr), handle), "cudaIpcGetMemHandle");
  return py::bytes(handle, kIpcHandleBytes);
}

int64_t ar_ipc_open_cuda(const py::bytes& handle) {
  const std::string h = handle;
  TORCH_CHECK_VALUE(h.size() == kIpcHandleBytes, "ar_ipc_open: an IPC handle has ", std::to_string(kIpcHandleBytes),
                    " bytes, got ", std::to_string(h.size()));
  void* ptr = nullptr;
  check_cuda(ar_ipc_open(h.data(), &ptr), "cudaIpcOpenMemHandle");
  return reinterpret_cast<int64_t>(ptr);
}

void ar_ipc_close_cuda(int64_t ptr) { check_cuda(ar_ipc_close(reinterpret_cast<void*>(ptr)), "cudaIpcCloseMemHandle"); }

// In place: t = sum over ranks of t. buffers: every rank's IPC buffer as mapped here, this rank's at [rank].
void all_reduce_cuda(at::Tensor t, const std::vector<int64_t>& buffers, int64_t rank, int64_t capacity) {
  const char* op = "all_reduce";
  const c10::cuda::CUDAGuard guard = guard_for(t, op, "t");
  AllReduceArgs a{};
  a.dtype = activation_dtype(t, op, "t");
  const int64_t bytes = t.numel() * t.element_size();
  TORCH_CHECK_VALUE(t.is_contiguous() && bytes % 16 == 0 && (reinterpret_cast<uintptr_t>(t.data_ptr()) & 15u) == 0,
                    "all_reduce: t must be contiguous, 16-byte aligned and a multiple of 16 bytes (", std::to_string(bytes),
                    " bytes)");
  TORCH_CHECK_VALUE(bytes <= capacity, "all_reduce: ", std::to_string(bytes), " bytes exceed the buffer capacity of ",
                    std::to_string(capacity));
  const int64_t n = static_cast<int64_t>(buffers.size());
  TORCH_CHECK_VALUE(n >= 2 && n <= kArMaxRanks && rank >= 0 && rank < n, "all_reduce: needs 2 to ",
                    std::to_string(kArMaxRanks), " buffers and 0 <= rank < their number");
  for (int64_t r = 0; r < n; ++r) a.buffers[r] = reinterpret_cast<void*>(buffers[r]);
  a.data = t.data_ptr();
  a.numel = t.numel();
  a.rank = static_cast<int>(rank);
  a.nranks = static_cast<int>(n);
  a.capacity = capacity;
  launch_all_reduce(a, stream_for(t));
}
#endif

}  // namespace
}  // namespace lite_srt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace lite_srt;
  m.doc() = "lite_srt compiled kernels (CPU and, in GPU builds, CUDA/ROCm).";
  m.def("rmsnorm_cpu", &rmsnorm_cpu, "out = rmsnorm(x) * weight", py::arg("out"), py::arg("x"), py::arg("weight"),
        py::arg("eps"));
  m.def("fused_add_rmsnorm_cpu", &fused_add_rmsnorm_cpu, "residual += x; x = rmsnorm(residual) * weight",
        py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("eps"));
  m.def("silu_and_mul_cpu", &silu_and_mul_cpu, "out = silu(x[:, :I]) * x[:, I:]", py::arg("out"), py::arg("x"));
  m.def("rotary_embedding_cpu", &rotary_embedding_cpu, "in-place RoPE on q and k", py::arg("positions"),
        py::arg("q"), py::arg("k"), py::arg("cos_sin_cache"), py::arg("is_neox"));
  m.def("store_kv_cpu", &store_kv_cpu, "k_cache[slots] = k; v_cache[slots] = v (slot < 0 skipped)",
        py::arg("k_cache"), py::arg("v_cache"), py::arg("slots"), py::arg("k"), py::arg("v"));
  m.def("decode_attention_cpu", &decode_attention_cpu, "paged decode attention", py::arg("out"), py::arg("q"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("req_to_token"), py::arg("req_pool_indices"),
        py::arg("seq_lens"), py::arg("scale"));
  m.def("extend_attention_cpu", &extend_attention_cpu, "paged extend (prefill) attention", py::arg("out"),
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("req_to_token"), py::arg("req_pool_indices"),
        py::arg("seq_lens"), py::arg("extend_lens"), py::arg("extend_start_loc"), py::arg("scale"));
#ifdef LITE_SRT_WITH_CUDA
  m.def("rmsnorm_cuda", &rmsnorm_cuda, py::arg("out"), py::arg("x"), py::arg("weight"), py::arg("eps"));
  m.def("fused_add_rmsnorm_cuda", &fused_add_rmsnorm_cuda, py::arg("x"), py::arg("residual"), py::arg("weight"),
        py::arg("eps"));
  m.def("silu_and_mul_cuda", &silu_and_mul_cuda, py::arg("out"), py::arg("x"));
  m.def("rotary_embedding_cuda", &rotary_embedding_cuda, py::arg("positions"), py::arg("q"), py::arg("k"),
        py::arg("cos_sin_cache"), py::arg("is_neox"));
  m.def("rope_store_kv_cuda", &rope_store_kv_cuda,
        "in-place RoPE on q and k, then k_cache[slots] = k; v_cache[slots] = v (slot < 0 skipped)",
        py::arg("positions"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cos_sin_cache"),
        py::arg("is_neox"), py::arg("k_cache"), py::arg("v_cache"), py::arg("slots"));
  m.def("store_kv_cuda", &store_kv_cuda, py::arg("k_cache"), py::arg("v_cache"), py::arg("slots"), py::arg("k"),
        py::arg("v"));
  m.def("decode_attention_cuda", &decode_attention_cuda, py::arg("out"), py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("req_to_token"), py::arg("req_pool_indices"), py::arg("seq_lens"),
        py::arg("scale"), py::arg("merge_counters") = py::none(), py::arg("total_keys") = 0,
        py::arg("max_keys") = 0, py::arg("chunk_keys") = py::none());
  m.def("decode_split_plan_cuda", &decode_split_plan_cuda,
        "(one-wave splits, keys per split, grid splits) of the decode kernel for a batch on the current device",
        py::arg("q_heads"), py::arg("kv_heads"), py::arg("batch"), py::arg("total_keys"), py::arg("max_keys"));
  m.def("decode_attention_cascade_cuda", &decode_attention_cascade_cuda,
        "decode attention where groups of rows share a prefix's KV (attended once per group)", py::arg("out"),
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("req_to_token"), py::arg("req_pool_indices"),
        py::arg("seq_lens"), py::arg("scale"), py::arg("shared_lens"), py::arg("group_start"),
        py::arg("group_size"), py::arg("max_shared"), py::arg("max_group"), py::arg("shared_splits") = 0,
        py::arg("split_count") = py::none(), py::arg("merge_counters") = py::none(), py::arg("total_keys") = 0,
        py::arg("max_keys") = 0, py::arg("chunk_keys") = py::none());
  m.def("decode_cascade_splits_cuda", &decode_cascade_splits,
        "splits of a cascade's shared keys for a step's groups on the current device", py::arg("q_heads"),
        py::arg("kv_heads"), py::arg("num_groups"), py::arg("max_group"), py::arg("max_shared"));
  m.def(
      "decode_cascade_shared_kernel_cuda",
      [](const at::Tensor& q) {
        return decode_cascade_shared_kernel(activation_dtype(q, "decode_cascade_shared_kernel", "q"), q.size(-1));
      },
      "which kernel runs a cascade's shared pass for q's dtype and head dim: wgmma, mma or none", py::arg("q"));
  m.def("extend_attention_cuda", &extend_attention_cuda, py::arg("out"), py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("req_to_token"), py::arg("req_pool_indices"), py::arg("seq_lens"),
        py::arg("extend_lens"), py::arg("extend_start_loc"), py::arg("scale"));
  m.def("gemv_cuda", &gemv_cuda, "out = x @ weight.T (+ bias) for 1..8 rows; x = silu_and_mul(x) if fused",
        py::arg("out"), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("fuse_silu_mul"));
  m.def("ar_alloc_cuda", &ar_alloc_cuda, "zeroed device memory for a custom all-reduce buffer", py::arg("bytes"));
  m.def("ar_free_cuda", &ar_free_cuda, py::arg("ptr"));
  m.def("ar_ipc_handle_cuda", &ar_ipc_handle_cuda, "the CUDA IPC handle of a buffer", py::arg("ptr"));
  m.def("ar_ipc_open_cuda", &ar_ipc_open_cuda, "map a peer's buffer from its IPC handle", py::arg("handle"));
  m.def("ar_ipc_close_cuda", &ar_ipc_close_cuda, py::arg("ptr"));
  m.def("all_reduce_cuda", &all_reduce_cuda, "in-place one-shot sum over the ranks' IPC buffers", py::arg("t"),
        py::arg("buffers"), py::arg("rank"), py::arg("capacity"));
  m.attr("ar_header_bytes") = py::int_(kArHeaderBytes);
  m.def("pdl_enabled_cuda", &pdl_enabled,
        "whether kernels on the current device use programmatic dependent launch (LITE_SRT_PDL=0 turns it off)");
  register_fused_decode(m);
#endif
#ifdef LITE_SRT_WITH_RADIX
  register_radix_tree(m);
#endif
  m.attr("has_cuda") = py::bool_(
#ifdef LITE_SRT_WITH_CUDA
      true
#else
      false
#endif
  );
}
