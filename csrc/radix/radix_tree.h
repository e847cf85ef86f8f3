// RadixTree: the radix prefix tree of lite_srt's prefix cache, in plain C++17 (no torch, no Python).
//
// Same semantics as lite_srt/mem/radix_cache.py: each node holds a run of tokens (a multiple of page_size)
// and the KV slots of those tokens; children are keyed by their first page; a match ending inside a node
// splits it (the lower half keeps the node's id, so handles stay valid); lock counts run up to the root;
// eviction takes unlocked leaves in LRU order from a heap with lazy invalidation.
//
// The tree never frees slots itself: operations that drop slots return them, and the Python wrapper
// (lite_srt/mem/radix_cache_cpp.py) hands them to the allocator. Nodes are addressed by integer ids (root 0)
// so a stale handle is an error, never a dangling pointer.
//
// Thread ownership: like the Python tree, one instance is used only by the event-loop thread. No locks.
#pragma once

#include <cstdint>
#include <memory>
#include <queue>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace lite_srt {

using Token = int32_t;
using Slot = int64_t;

struct MatchOut {
  int64_t node_id;          // handle for lock/unlock (0 = root: nothing matched)
  std::vector<Slot> slots;  // slots of the matched prefix
};

struct InsertOut {
  int64_t cached_len;         // page-aligned length of the sequence now cached
  std::vector<Slot> to_free;  // handed-over slots the tree did not keep (duplicates, unaligned tail)
};

class RadixTree {
 public:
  explicit RadixTree(int64_t page_size);
  ~RadixTree();
  RadixTree(const RadixTree&) = delete;
  RadixTree& operator=(const RadixTree&) = delete;

  // Longest cached prefix of tokens[0, n), truncated to a multiple of page_size. Touches LRU time.
  MatchOut match_prefix(const Token* tokens, int64_t n);
  // Cache tokens' page-aligned prefix; slots[0, owned_from) came from the tree through a locked match.
  InsertOut insert(const Token* tokens, const Slot* slots, int64_t n, int64_t owned_from);
  void lock(int64_t node_id);
  void unlock(int64_t node_id);
  // Remove unlocked leaves in LRU order until at least num_tokens slots are released (or none is left).
  std::vector<Slot> evict(int64_t num_tokens);
  // Drop every node; returns all cached slots. Throws std::runtime_error while anything is locked.
  std::vector<Slot> reset();

  int64_t page_size() const { return page_size_; }
  int64_t evictable_size() const { return evictable_; }
  int64_t protected_size() const { return protected_; }
  int64_t num_nodes() const { return static_cast<int64_t>(nodes_.size()) - 1; }
  // Every slot the tree holds (for the wrapper's allocator cross-check).
  std::vector<Slot> all_slots() const;
  // Recomputes sizes, lock counts and structure; one message per problem found (empty when sound).
  std::vector<std::string> integrity_errors() const;

 private:
  struct Node {
    int64_t id = 0;
    std::vector<Token> key;
    std::vector<Slot> value;
    Node* parent = nullptr;
    std::unordered_map<std::string, Node*> children;  // keyed by the bytes of the child's first page
    int64_t lock_ref = 0;                              // locks on this node plus on every descendant
    uint64_t last_access = 0;
    bool in_heap = false;  // has a heap entry whose time is <= last_access
  };
  // (last_access, sequence, node id); std::greater makes the priority_queue a min-heap.
  using HeapEntry = std::tuple<uint64_t, uint64_t, int64_t>;

  std::string child_key(const Token* page) const;
  int64_t aligned(int64_t n) const { return n - n % page_size_; }
  Node* new_node(Node* parent);
  Node* find(int64_t node_id, const char* op) const;
  // Follow tokens[0, n) down the tree, splitting where the match ends inside a node. Appends the matched
  // slots to *slots when given. Returns the deepest matched node and the matched length.
  std::pair<Node*, int64_t> walk(const Token* tokens, int64_t n, std::vector<Slot>* slots);
  Node* split(Node* node, int64_t m);
  void push_if_evictable(Node* node);
  void remove_leaf(Node* node);
  void clear();

  int64_t page_size_;
  Node* root_ = nullptr;
  std::unordered_map<int64_t, std::unique_ptr<Node>> nodes_;
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, std::greater<HeapEntry>> heap_;
  int64_t next_id_ = 0;
  uint64_t clock_ = 0;
  uint64_t seq_ = 0;
  int64_t evictable_ = 0;
  int64_t protected_ = 0;
  int64_t num_locks_ = 0;  // outstanding lock() calls on non-root nodes
};

}  // namespace lite_srt
