// Python binding of the C++ RadixTree (lite_srt._C.RadixTree). csrc/bindings.cpp calls
// register_radix_tree() when setup.py defines LITE_SRT_WITH_RADIX. Token and slot arrays cross as numpy
// arrays (a list is converted on the way in), so long prompts are not boxed element by element.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "radix/radix_tree.h"

namespace py = pybind11;

namespace lite_srt {
namespace {

using SlotArray = py::array_t<Slot, py::array::c_style | py::array::forcecast>;

// Moves the vector into a heap object the array owns: no copy of the slot data.
py::array_t<Slot> to_numpy(std::vector<Slot>&& v) {
  auto* owner = new std::vector<Slot>(std::move(v));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<Slot>*>(p); });
  return py::array_t<Slot>({static_cast<py::ssize_t>(owner->size())}, {sizeof(Slot)}, owner->data(),
                           free_when_done);
}

// Token ids as int32. Lists and tuples (what the scheduler holds) are read item by item with the C API,
// several times faster than numpy's generic conversion; anything else goes through numpy.
std::vector<Token> to_tokens(const py::handle& obj, const char* op) {
  PyObject* seq = obj.ptr();
  const bool is_list = PyList_Check(seq);
  if (is_list || PyTuple_Check(seq)) {
    const Py_ssize_t n = is_list ? PyList_GET_SIZE(seq) : PyTuple_GET_SIZE(seq);
    std::vector<Token> out(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* item = is_list ? PyList_GET_ITEM(seq, i) : PyTuple_GET_ITEM(seq, i);
      const long v = PyLong_AsLong(item);
      if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
      if (v < INT32_MIN || v > INT32_MAX) {
        throw py::value_error(std::string("RadixTree.") + op + ": token id " + std::to_string(v) +
                              " does not fit in int32");
      }
      out[static_cast<size_t>(i)] = static_cast<Token>(v);
    }
    return out;
  }
  auto arr = py::array_t<Token, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!arr || arr.ndim() != 1) {
    throw py::type_error(std::string("RadixTree.") + op + ": tokens must be a list, tuple or 1-D integer array");
  }
  return std::vector<Token>(arr.data(), arr.data() + arr.shape(0));
}

int64_t length_of(const py::array& a, const char* op, const char* name) {
  if (a.ndim() != 1) {
    throw py::value_error(std::string("RadixTree.") + op + ": " + name + " must be 1-D, got " +
                          std::to_string(a.ndim()) + "-D");
  }
  return static_cast<int64_t>(a.shape(0));
}

py::tuple match_prefix(RadixTree& tree, const py::handle& token_ids) {
  const std::vector<Token> tokens = to_tokens(token_ids, "match_prefix");
  MatchOut out = tree.match_prefix(tokens.data(), static_cast<int64_t>(tokens.size()));
  return py::make_tuple(out.node_id, to_numpy(std::move(out.slots)));
}

py::tuple insert(RadixTree& tree, const py::handle& token_ids, const SlotArray& slots, int64_t owned_from) {
  const std::vector<Token> tokens = to_tokens(token_ids, "insert");
  const int64_t n = static_cast<int64_t>(tokens.size());
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
