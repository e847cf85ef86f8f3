// Python binding of the C++ RadixTree (lite_srt._C.RadixTree). csrc/bindings.cpp calls
// register_radix_tree() when setup.py defines LITE_SRT_WITH_RADIX. Token and slot arrays cross as numpy
// arrays (a list is converted on the way in), so long prompts are not boxed element by element.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "radix/radix_tree.h"

namespace py = pybind11;

namespace lite_srt {
namespace {

using TokenArray = py::array_t<Token, py::array::c_style | py::array::forcecast>;
using SlotArray = py::array_t<Slot, py::array::c_style | py::array::forcecast>;

// Moves the vector into a heap object the array owns: no copy of the slot data.
py::array_t<Slot> to_numpy(std::vector<Slot>&& v) {
  auto* owner = new std::vector<Slot>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<Slot>*>(p); });
  return py::array_t<Slot>({static_cast<py::ssize_t>(owner->size())}, {sizeof(Slot)}, owner->data(),
                           free_when_done);
}

int64_t length_of(const py::array& a, const char* op, const char* name) {
  if (a.ndim() != 1) {
    throw py::value_error(std::string("RadixTree.") + op + ": " + name + " must be 1-D, got " +
                          std::to_string(a.ndim()) + "-D");
  }
  return static_cast<int64_t>(a.shape(0));
}

py::tuple match_prefix(RadixTree& tree, const TokenArray& tokens) {
  const int64_t n = length_of(tokens, "match_prefix", "tokens");
  MatchOut out = tree.match_prefix(tokens.data(), n);
  return py::make_tuple(out.node_id, to_numpy(std::move(out.slots)));
}

py::tuple insert(RadixTree& tree, const TokenArray& tokens, const SlotArray& slots, int64_t owned_from) {
  const int64_t n = length_of(tokens, "insert", "tokens");
  if (length_of(slots, "insert", "slots") != n) {
    throw py::value_error("RadixTree.insert: " + std::to_string(slots.shape(0)) + " slots for " +
                          std::to_string(n) + " tokens");
  }
  InsertOut out = tree.insert(tokens.data(), slots.data(), n, owned_from);
  return py::make_tuple(out.cached_len, to_numpy(std::move(out.to_free)));
}

}  // namespace
}  // namespace lite_srt

void register_radix_tree(py::module_& m) {
  using lite_srt::RadixTree;
  py::class_<RadixTree>(m, "RadixTree", "Radix prefix tree (token runs -> KV slots); see csrc/radix/radix_tree.h")
      .def(py::init<int64_t>(), py::arg("page_size"))
      .def("match_prefix", &lite_srt::match_prefix, py::arg("tokens"),
           "-> (node_id, slots): longest cached page-aligned prefix; touches LRU time")
      .def("insert", &lite_srt::insert, py::arg("tokens"), py::arg("slots"), py::arg("owned_from"),
           "-> (cached_len, slots_to_free)")
      .def("lock", &RadixTree::lock, py::arg("node_id"))
      .def("unlock", &RadixTree::unlock, py::arg("node_id"))
      .def(
          "evict", [](RadixTree& t, int64_t n) { return lite_srt::to_numpy(t.evict(n)); }, py::arg("num_tokens"),
          "-> slots freed from LRU unlocked leaves (at least num_tokens when possible)")
      .def("reset", [](RadixTree& t) { return lite_srt::to_numpy(t.reset()); })
      .def("all_slots", [](const RadixTree& t) { return lite_srt::to_numpy(t.all_slots()); })
      .def("integrity_errors", &RadixTree::integrity_errors)
      .def_property_readonly("page_size", &RadixTree::page_size)
      .def_property_readonly("evictable_size", &RadixTree::evictable_size)
      .def_property_readonly("protected_size", &RadixTree::protected_size)
      .def_property_readonly("num_nodes", &RadixTree::num_nodes);
}
