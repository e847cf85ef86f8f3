// Paged decode and extend attention on the CPU.
//
// Both run one routine over tasks of (request, KV head, block of query tokens). A task loads all the query
// heads that share its KV head (GQA: each K/V row is gathered and converted once per group), walks the
// request's keys in blocks of kBlockKeys through req_to_token, and keeps an online softmax (running max and
// sum per query row) so the scores never need the whole context in memory. Causality: query token t of a task
// sits at position first_pos + t and sees keys 0..first_pos + t.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "cpu_ops.h"
#include "vec.h"

namespace lite_srt::cpu {
namespace {

constexpr int64_t kBlockKeys = 64;
constexpr int64_t kTargetRows = 64;  // query rows (tokens x group heads) per extend task
constexpr float kNoMax = -1e30f;     // finite "minus infinity" so exp(old_max - new_max) never sees inf - inf

struct Task {
  int64_t slots_row;  // row of req_to_token
  int64_t kv_head;
  int64_t q_row0;     // first query row in q/out
  int64_t n_q;        // query tokens in this task
  int64_t first_pos;  // position of query token 0
};

struct Workspace {
  std::vector<float> q, o, s, kt, v, m, l;
  void resize(int64_t rows, int64_t d) {
    q.resize(rows * d);
    o.resize(rows * d);
    s.resize(rows * kBlockKeys);
    kt.resize(d * kBlockKeys);
    v.resize(kBlockKeys * d);
    m.resize(rows);
    l.resize(rows);
  }
};

template <typename T>
void load_queries(const AttentionArgs& a, const Task& task, int64_t group, Workspace& ws) {
  const int64_t d = a.head_dim;
  for (int64_t t = 0; t < task.n_q; ++t) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t head = task.kv_head * group + g;
      const T* src = static_cast<const T*>(a.q) + (task.q_row0 + t) * a.q_stride.row + head * a.q_stride.head;
      float* dst = ws.q.data() + (t * group + g) * d;
      for (int64_t i = 0; i < d; ++i) dst[i] = to_float(src[i]) * a.scale;
    }
  }
}

// Gathers keys [j0, j0 + n) of the task's request: K transposed ([d][key], so scores vectorize over keys) and
// V row-major ([key][d], so the weighted sum vectorizes over d).
template <typename T>
void gather_block(const AttentionArgs& a, const Task& task, int64_t j0, int64_t n, Workspace& ws) {
  const int64_t d = a.head_dim;
  const int64_t base = task.slots_row * a.req_to_token_stride + j0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t slot = a.req_to_token[base + j];
    const T* kp = static_cast<const T*>(a.k_cache) + slot * a.k_stride.row + task.kv_head * a.k_stride.head;
    const T* vp = static_cast<const T*>(a.v_cache) + slot * a.v_stride.row + task.kv_head * a.v_stride.head;
    for (int64_t i = 0; i < d; ++i) ws.kt[i * kBlockKeys + j] = to_float(kp[i]);
    float* vrow = ws.v.data() + j * d;
    for (int64_t i = 0; i < d; ++i) vrow[i] = to_float(vp[i]);
  }
}

// One query row against one gathered key block: scores, online-softmax rescale, weighted sum of V.
inline void attend_row(const float* q, float* s, float* o, float& m, float& l, const Workspace& ws, int64_t d,
                       int64_t visible) {
  for (int64_t j = 0; j < visible; ++j) s[j] = 0.0f;
  for (int64_t i = 0; i < d; ++i) {
    const float qi = q[i];
    const float* kt = ws.kt.data() + i * kBlockKeys;
#pragma omp simd
    for (int64_t j = 0; j < visible; ++j) s[j] += qi * kt[j];
  }
  float block_max = kNoMax;
  for (int64_t j = 0; j < visible; ++j) block_max = std::max(block_max, s[j]);
  const float new_max = std::max(m, block_max);
  const float alpha = exp_nonpositive(m - new_max);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < visible; ++j) {
    const float p = exp_nonpositive(s[j] - new_max);
    s[j] = p;
    sum += p;
  }
  l = l * alpha + sum;
  m = new_max;
  if (alpha != 1.0f) {
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) o[i] *= alpha;
  }
  for (int64_t j = 0; j < visible; ++j) {
    const float p = s[j];
    const float* vrow = ws.v.data() + j * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) o[i] += p * vrow[i];
  }
}

template <typename T>
void run_task(const AttentionArgs& a, const Task& task, Workspace& ws) {
  const int64_t d = a.head_dim;
  const int64_t group = a.q_heads / a.kv_heads;
  const int64_t rows = task.n_q * group;
  ws.resize(rows, d);
  load_queries<T>(a, task, group, ws);
  std::fill(ws.o.begin(), ws.o.begin() + rows * d, 0.0f);
  std::fill(ws.m.begin(), ws.m.begin() + rows, kNoMax);
  std::fill(ws.l.begin(), ws.l.begin() + rows, 0.0f);

  const int64_t kv_end = task.first_pos + task.n_q;  // keys visible to the task's last query
  for (int64_t j0 = 0; j0 < kv_end; j0 += kBlockKeys) {
    const int64_t n = std::min(kBlockKeys, kv_end - j0);
    gather_block<T>(a, task, j0, n, ws);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t visible = std::min(n, task.first_pos + r / group - j0 + 1);
      if (visible <= 0) continue;
      attend_row(ws.q.data() + r * d, ws.s.data() + r * kBlockKeys, ws.o.data() + r * d, ws.m[r], ws.l[r], ws, d,
                 visible);
    }
  }

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r / group;
    const int64_t head = task.kv_head * group + r % group;
    T* dst = static_cast<T*>(a.out) + (task.q_row0 + t) * a.out_stride.row + head * a.out_stride.head;
    // An empty context (seq_len 0) has no keys; the reference's empty softmax-matmul gives zeros.
    const float inv = ws.l[r] > 0.0f ? 1.0f / ws.l[r] : 0.0f;
    const float* o = ws.o.data() + r * d;
    for (int64_t i = 0; i < d; ++i) dst[i] = from_float<T>(o[i] * inv);
  }
}

// Runs tasks on ATen's thread pool, pulling them from a shared counter so causal tasks of uneven cost balance.
void run_tasks(const AttentionArgs& a, std::vector<Task>& tasks) {
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& x, const Task& y) {
    return x.first_pos + x.n_q > y.first_pos + y.n_q;  // longest first
  });
  std::atomic<int64_t> next{0};
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), n_tasks);
  if (n_tasks == 0) return;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
      Workspace ws;
      for (int64_t i = next.fetch_add(1); i < n_tasks; i = next.fetch_add(1)) run_task<T>(a, tasks[i], ws);
    });
  });
}

// Checks one request's table row and length; on the CPU a bad index becomes an IndexError, not a wild read.
void check_request(const AttentionArgs& a, const char* op, int64_t b, int64_t seq_len) {
  const int64_t row = a.req_pool_indices[b];
  TORCH_CHECK_INDEX(row >= 0 && row < a.req_to_token_rows, op, ": req_pool_indices[", b, "] = ", row,
                    " is outside req_to_token (", a.req_to_token_rows, " rows)");
  TORCH_CHECK_INDEX(seq_len >= 0 && seq_len <= a.req_to_token_cols, op, ": seq_lens[", b, "] = ", seq_len,
                    " is outside req_to_token (", a.req_to_token_cols, " columns)");
  for (int64_t j = 0; j < seq_len; ++j) {
    const int64_t slot = a.req_to_token[row * a.req_to_token_stride + j];
    TORCH_CHECK_INDEX(slot >= 0 && slot < a.num_slots, op, ": req_to_token[", row, ", ", j, "] = ", slot,
                      " is not a slot of the pool (", a.num_slots, " slots)");
  }
}

}  // namespace

void decode_attention(const AttentionArgs& a) {
  std::vector<Task> tasks;
  tasks.reserve(a.batch * a.kv_heads);
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t seq_len = a.seq_lens[b];
    check_request(a, "decode_attention", b, seq_len);
    for (int64_t h = 0; h < a.kv_heads; ++h) tasks.push_back({a.req_pool_indices[b], h, b, 1, seq_len - 1});
  }
  run_tasks(a, tasks);
}

void extend_attention(const AttentionArgs& a) {
  const int64_t group = a.q_heads / a.kv_heads;
  const int64_t block_tokens = std::max<int64_t>(1, kTargetRows / group);
  std::vector<Task> tasks;
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t seq_len = a.seq_lens[b];
    const int64_t n_ext = a.extend_lens[b];
    const int64_t start = a.extend_start_loc[b];
    check_request(a, "extend_attention", b, seq_len);
    TORCH_CHECK_INDEX(n_ext >= 0 && n_ext <= seq_len, "extend_attention: extend_lens[", b, "] = ", n_ext,
                      " must be in [0, seq_lens[", b, "] = ", seq_len, "]");
    TORCH_CHECK_INDEX(start >= 0 && start + n_ext <= a.tokens, "extend_attention: rows [", start, ", ",
                      start + n_ext, ") of request ", b, " are outside q (", a.tokens, " rows)");
    const int64_t prefix = seq_len - n_ext;
    for (int64_t t0 = 0; t0 < n_ext; t0 += block_tokens) {
      const int64_t n_q = std::min(block_tokens, n_ext - t0);
      for (int64_t h = 0; h < a.kv_heads; ++h) {
        tasks.push_back({a.req_pool_indices[b], h, start + t0, n_q, prefix + t0});
      }
    }
  }
  run_tasks(a, tasks);
}

}  // namespace lite_srt::cpu
