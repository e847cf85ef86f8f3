// Python bindings of the fused batch-1 decode step (decode_step.h): tensor checks, then the launcher on the
// current stream. lite_srt/engine/fused_decode.py decides when a step takes this path and builds the arguments.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "decode_step.h"

namespace lite_srt {
namespace {

constexpr const char* kOp = "fused_decode";

void check_tensor(const at::Tensor& t, const at::Tensor& ref, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda() && t.device() == ref.device(), kOp, ": ", name, " must be on ", ref.device(),
                    ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, kOp, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), kOp, ": ", name, " must be contiguous");
}

void check_shape(const at::Tensor& t, std::vector<int64_t> shape, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), kOp, ": ", name, " has shape ", t.sizes(), ", expected ",
                    at::IntArrayRef(shape));
}

std::string unsupported(int64_t hidden, int64_t inter, int64_t hq, int64_t hkv, int64_t head_dim) {
  const char* why = fused_decode_unsupported(static_cast<int>(hidden), static_cast<int>(inter), static_cast<int>(hq),
                                             static_cast<int>(hkv), static_cast<int>(head_dim));
  return why != nullptr ? why : "";
}

// (workspace bytes, counters) the step needs.
std::vector<int64_t> sizes(int64_t layers, int64_t hidden, int64_t inter, int64_t hq, int64_t hkv) {
  return {static_cast<int64_t>(fused_decode_workspace_bytes(static_cast<int>(layers), static_cast<int>(hidden),
                                                            static_cast<int>(inter), static_cast<int>(hq),
                                                            static_cast<int>(hkv))),
          static_cast<int64_t>(fused_decode_counters(static_cast<int>(layers)))};
}

bool available(int64_t device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  return fused_decode_available();
}

void run(at::Tensor logits, at::Tensor token, std::optional<at::Tensor> token_table, at::Tensor layers, at::Tensor embed, at::Tensor final_norm, at::Tensor lm_head,
         at::Tensor input_ids, at::Tensor positions, at::Tensor out_cache_loc, at::Tensor req_pool_indices,
         at::Tensor seq_lens, at::Tensor req_to_token, at::Tensor cos_sin, at::Tensor workspace, at::Tensor counters,
         int64_t hq, int64_t hkv, int64_t inter, double eps, double scale, bool neox) {
  TORCH_CHECK_VALUE(embed.is_cuda(), kOp, ": embed is on ", embed.device(), "; every tensor must be on the GPU");
  TORCH_CHECK_VALUE(embed.dim() == 2, kOp, ": embed must be [vocab, hidden], got ", embed.sizes());
  const int64_t vocab = embed.size(0), hidden = embed.size(1);
  const std::string why = unsupported(hidden, inter, hq, hkv, kFusedHeadDim);
  TORCH_CHECK_VALUE(why.empty(), kOp, ": unsupported shapes: ", why);
  check_tensor(embed, embed, at::kBFloat16, "embed");
  check_tensor(lm_head, embed, at::kBFloat16, "lm_head");
  check_shape(lm_head, {vocab, hidden}, "lm_head");
  check_tensor(final_norm, embed, at::kBFloat16, "final_norm");
  check_shape(final_norm, {hidden}, "final_norm");
  check_tensor(logits, embed, at::kFloat, "logits");
  check_shape(logits, {vocab}, "logits");
  check_tensor(token, embed, at::kLong, "token");
  check_shape(token, {1}, "token");
  if (token_table.has_value()) {
    check_tensor(*token_table, embed, at::kLong, "token_table");
    TORCH_CHECK_VALUE(token_table->dim() == 1, kOp, ": token_table must be 1-D, got ", token_table->sizes());
  }
  check_tensor(layers, embed, at::kLong, "layers");
  TORCH_CHECK_VALUE(layers.dim() == 2 && layers.size(1) == 9 && layers.size(0) > 0, kOp,
                    ": layers must be [num_layers, 9] device pointers, got ", layers.sizes());
  for (const auto& [t, name] : {std::pair{&input_ids, "input_ids"}, {&positions, "positions"},
                                {&out_cache_loc, "out_cache_loc"}, {&req_pool_indices, "req_pool_indices"},
                                {&seq_lens, "seq_lens"}}) {
    check_tensor(*t, embed, at::kLong, name);
    TORCH_CHECK_VALUE(t->numel() >= 1, kOp, ": ", name, " is empty");
  }
  TORCH_CHECK_VALUE(req_to_token.is_cuda() && req_to_token.device() == embed.device() &&
                        req_to_token.scalar_type() == at::kInt && req_to_token.dim() == 2 &&
                        req_to_token.stride(1) == 1,
                    kOp, ": req_to_token must be a [rows, width] int32 GPU table with unit column stride");
  check_tensor(cos_sin, embed, at::kFloat, "cos_sin");
  TORCH_CHECK_VALUE(cos_sin.dim() == 2 && cos_sin.size(1) == kFusedHeadDim, kOp,
                    ": cos_sin must be [max_pos, 128], got ", cos_sin.sizes());
  const int num_layers = static_cast<int>(layers.size(0));
  const std::vector<int64_t> need = sizes(num_layers, hidden, inter, hq, hkv);
  check_tensor(workspace, embed, at::kByte, "workspace");
  TORCH_CHECK_VALUE(workspace.numel() >= need[0], kOp, ": workspace holds ", std::to_string(workspace.numel()),
                    " bytes, needs ", std::to_string(need[0]));
  check_tensor(counters, embed, at::kInt, "counters");
  TORCH_CHECK_VALUE(counters.numel() >= need[1], kOp, ": counters holds ", std::to_string(counters.numel()),
                    " entries, needs ", std::to_string(need[1]));

  FusedDecodeArgs a{};
  a.layers = reinterpret_cast<const FusedLayer*>(layers.data_ptr());
  a.num_layers = num_layers;
  a.hidden = static_cast<int>(hidden);
  a.inter = static_cast<int>(inter);
  a.vocab = static_cast<int>(vocab);
  a.hq = static_cast<int>(hq);
  a.hkv = static_cast<int>(hkv);
  a.eps = static_cast<float>(eps);
  a.scale = static_cast<float>(scale);
  a.neox = neox;
  a.embed = embed.data_ptr();
  a.final_norm = final_norm.data_ptr();
  a.lm_head = lm_head.data_ptr();
  a.input_ids = input_ids.data_ptr<int64_t>();
  a.positions = positions.data_ptr<int64_t>();
  a.out_cache_loc = out_cache_loc.data_ptr<int64_t>();
  a.req_pool_indices = req_pool_indices.data_ptr<int64_t>();
  a.seq_lens = seq_lens.data_ptr<int64_t>();
  a.req_to_token = req_to_token.data_ptr<int32_t>();
  a.table_stride = req_to_token.stride(0);
  a.cos_sin = cos_sin.data_ptr<float>();
  a.logits = logits.data_ptr<float>();
  a.token = token.data_ptr<int64_t>();
  a.token_table = token_table.has_value() ? token_table->data_ptr<int64_t>() : nullptr;
  a.workspace = workspace.data_ptr();
  a.counters = reinterpret_cast<unsigned*>(counters.data_ptr<int32_t>());
  const char* skip = std::getenv("LITE_SRT_FUSED_SKIP");  // timing-only cuts (decode_step.h)
  a.skip = skip != nullptr ? std::atoi(skip) : 0;
  // Benchmarks and tests only: fewer ring slots per attention unit (more, shorter units) than the default.
  const char* slots = std::getenv("LITE_SRT_FUSED_UNIT_SLOTS");
  a.unit_slots = slots != nullptr ? std::atoi(slots) : kFusedUnitSlots;
  const c10::cuda::CUDAGuard guard(embed.device());
  const cudaError_t err = launch_fused_decode(a, c10::cuda::getCurrentCUDAStream(embed.get_device()).stream());
  TORCH_CHECK(err == cudaSuccess, kOp, ": launch failed: ", cudaGetErrorString(err));
}

}  // namespace

void register_fused_decode(pybind11::module_& m) {
  m.attr("fused_decode_max_keys") = py::int_(kFusedMaxKeys);  // longer contexts take the unfused step
  m.def("fused_decode_unsupported_cuda", &unsupported,
        "why the fused batch-1 decode step cannot take these shapes ('' when it can)", py::arg("hidden"),
        py::arg("inter"), py::arg("hq"), py::arg("hkv"), py::arg("head_dim"));
  m.def("fused_decode_sizes_cuda", &sizes, "(workspace bytes, int32 counters) of the fused decode step",
        py::arg("layers"), py::arg("hidden"), py::arg("inter"), py::arg("hq"), py::arg("hkv"));
  m.def("fused_decode_available_cuda", &available,
        "whether the device runs the fused decode step (compute capability 9.x and sm_90a code)", py::arg("device"));
  m.def("fused_decode_cuda", &run, "the batch-1 decode step of a Llama-architecture model in one kernel",
        py::arg("logits"), py::arg("token"), py::arg("token_table"), py::arg("layers"), py::arg("embed"), py::arg("final_norm"), py::arg("lm_head"),
        py::arg("input_ids"), py::arg("positions"), py::arg("out_cache_loc"), py::arg("req_pool_indices"),
        py::arg("seq_lens"), py::arg("req_to_token"), py::arg("cos_sin"), py::arg("workspace"), py::arg("counters"),
        py::arg("hq"), py::arg("hkv"), py::arg("inter"), py::arg("eps"), py::arg("scale"), py::arg("neox"));
}

}  // namespace lite_srt
