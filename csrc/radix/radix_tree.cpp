// RadixTree implementation; see radix_tree.h for the semantics and ownership rules.
#include "radix/radix_tree.h"

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <unordered_set>

namespace lite_srt {

RadixTree::RadixTree(int64_t page_size) : page_size_(page_size) {
  if (page_size < 1) {
    throw std::invalid_argument("RadixTree: page_size must be >= 1, got " + std::to_string(page_size));
  }
  clear();
}

RadixTree::~RadixTree() = default;

void RadixTree::clear() {
  nodes_.clear();
  heap_ = {};
  next_id_ = 0;
  evictable_ = protected_ = num_locks_ = 0;
  root_ = new_node(nullptr);
}

std::string RadixTree::child_key(const Token* page) const {
  return std::string(reinterpret_cast<const char*>(page), sizeof(Token) * page_size_);
}

RadixTree::Node* RadixTree::new_node(Node* parent) {
  auto node = std::make_unique<Node>();
  node->id = next_id_++;
  node->parent = parent;
  Node* raw = node.get();
  nodes_.emplace(raw->id, std::move(node));
  return raw;
}

RadixTree::Node* RadixTree::find(int64_t node_id, const char* op) const {
  auto it = nodes_.find(node_id);
  if (it == nodes_.end()) {
    throw std::runtime_error(std::string("RadixTree.") + op + ": node " + std::to_string(node_id) +
                             " does not exist (evicted, or never returned by match_prefix)");
  }
  return it->second.get();
}

std::pair<RadixTree::Node*, int64_t> RadixTree::walk(const Token* tokens, int64_t n, std::vector<Slot>* slots) {
  const uint64_t now = ++clock_;
  Node* node = root_;
  int64_t i = 0;
  while (i < n) {
    auto it = node->children.find(child_key(tokens + i));
    if (it == node->children.end()) break;
    Node* child = it->second;
    const int64_t len = std::min<int64_t>(n - i, static_cast<int64_t>(child->key.size()));
    const auto diff = std::mismatch(child->key.begin(), child->key.begin() + len, tokens + i).first;
    const int64_t m = aligned(diff - child->key.begin());
    if (m == 0) break;  // unreachable: the first page matched the child key
    if (m < static_cast<int64_t>(child->key.size())) child = split(child, m);
    child->last_access = now;
    if (slots != nullptr) slots->insert(slots->end(), child->value.begin(), child->value.end());
    node = child;
    i += m;
  }
  return {node, i};
}

RadixTree::Node* RadixTree::split(Node* node, int64_t m) {
  Node* parent = node->parent;
  Node* upper = new_node(parent);
  upper->key.assign(node->key.begin(), node->key.begin() + m);
  upper->value.assign(node->value.begin(), node->value.begin() + m);
  upper->lock_ref = node->lock_ref;
  upper->last_access = node->last_access;
  parent->children[child_key(upper->key.data())] = upper;
  node->key.erase(node->key.begin(), node->key.begin() + m);
  node->value.erase(node->value.begin(), node->value.begin() + m);
  node->parent = upper;
  upper->children.emplace(child_key(node->key.data()), node);
  return upper;
}

MatchOut RadixTree::match_prefix(const Token* tokens, int64_t n) {
  MatchOut out;
  auto [node, len] = walk(tokens, aligned(n), &out.slots);
  out.node_id = len == 0 ? root_->id : node->id;
  return out;
}

InsertOut RadixTree::insert(const Token* tokens, const Slot* slots, int64_t n, int64_t owned_from) {
  if (owned_from < 0 || owned_from > n || owned_from % page_size_ != 0) {
    throw std::invalid_argument("RadixTree.insert: owned_from " + std::to_string(owned_from) +
                                " must be a multiple of page_size " + std::to_string(page_size_) + " in [0, " +
                                std::to_string(n) + "]");
  }
  const int64_t aligned_n = aligned(n);
  auto [node, matched] = walk(tokens, aligned_n, nullptr);
  if (matched < owned_from) {
    throw std::runtime_error("RadixTree.insert: only " + std::to_string(matched) + " of the " +
                             std::to_string(owned_from) +
                             " tokens said to come from the cache are cached (was the match unlocked?)");
  }
  if (matched < aligned_n) {
    Node* leaf = new_node(node);
    leaf->key.assign(tokens + matched, tokens + aligned_n);
    leaf->value.assign(slots + matched, slots + aligned_n);
    leaf->last_access = ++clock_;
    node->children.emplace(child_key(leaf->key.data()), leaf);
    evictable_ += aligned_n - matched;
    push_if_evictable(leaf);
  }
  InsertOut out{aligned_n, {}};
  // The caller's slots for positions someone else cached meanwhile, and its unaligned tail.
  out.to_free.assign(slots + owned_from, slots + matched);
  out.to_free.insert(out.to_free.end(), slots + aligned_n, slots + n);
  return out;
}

void RadixTree::lock(int64_t node_id) {
  Node* node = find(node_id, "lock");
  if (node == root_) return;
  ++num_locks_;
  for (; node != root_; node = node->parent) {
    if (node->lock_ref == 0) {
      evictable_ -= static_cast<int64_t>(node->key.size());
      protected_ += static_cast<int64_t>(node->key.size());
    }
    ++node->lock_ref;
  }
}

void RadixTree::unlock(int64_t node_id) {
  Node* node = find(node_id, "unlock");
  if (node == root_) return;
  if (node->lock_ref <= 0) throw std::runtime_error("RadixTree.unlock: the node is not locked");
  --num_locks_;
  for (; node != root_; node = node->parent) {
    if (--node->lock_ref == 0) {
      protected_ -= static_cast<int64_t>(node->key.size());
      evictable_ += static_cast<int64_t>(node->key.size());
      push_if_evictable(node);
    }
  }
}

void RadixTree::push_if_evictable(Node* node) {
  if (node->in_heap || !node->children.empty() || node->lock_ref != 0 || node == root_) return;
  node->in_heap = true;
  heap_.emplace(node->last_access, seq_++, node->id);
}

std::vector<Slot> RadixTree::evict(int64_t num_tokens) {
  std::vector<Slot> freed;
  while (static_cast<int64_t>(freed.size()) < num_tokens && !heap_.empty()) {
    auto [stamp, seq, id] = heap_.top();
    heap_.pop();
    auto it = nodes_.find(id);
    if (it == nodes_.end()) continue;  // already removed
    Node* node = it->second.get();
    node->in_heap = false;
    // Stale entry: the node is pushed again when it becomes an evictable leaf.
    if (!node->children.empty() || node->lock_ref != 0) continue;
    if (stamp < node->last_access) {  // touched since pushed: re-queue at its real time
      push_if_evictable(node);
      continue;
    }
    freed.insert(freed.end(), node->value.begin(), node->value.end());
    remove_leaf(node);
  }
  return freed;
}

void RadixTree::remove_leaf(Node* node) {
  Node* parent = node->parent;
  evictable_ -= static_cast<int64_t>(node->key.size());
  parent->children.erase(child_key(node->key.data()));
  nodes_.erase(node->id);  // destroys node
  push_if_evictable(parent);
}

std::vector<Slot> RadixTree::reset() {
  if (num_locks_ != 0 || protected_ != 0) {
    throw std::runtime_error("RadixTree.reset: " + std::to_string(num_locks_) + " lock(s) still held (" +
                             std::to_string(protected_) + " protected slots)");
  }
  std::vector<Slot> slots = all_slots();
  clear();
  return slots;
}

std::vector<Slot> RadixTree::all_slots() const {
  std::vector<Slot> out;
  out.reserve(static_cast<size_t>(evictable_ + protected_));
  for (const auto& [id, node] : nodes_) out.insert(out.end(), node->value.begin(), node->value.end());
  return out;
}

std::vector<std::string> RadixTree::integrity_errors() const {
  std::vector<std::string> errors;
  int64_t evictable = 0, protected_size = 0, direct_locks = 0;
  std::unordered_set<Slot> seen;
  for (const auto& [id, owned] : nodes_) {
    const Node* node = owned.get();
    if (node == root_) continue;
    const std::string name = "node " + std::to_string(id);
    const int64_t len = static_cast<int64_t>(node->key.size());
    if (len == 0 || len % page_size_ != 0 || static_cast<int64_t>(node->value.size()) != len) {
      errors.push_back(name + " has " + std::to_string(len) + " tokens and " + std::to_string(node->value.size()) +
                       " slots (page_size " + std::to_string(page_size_) + ")");
      continue;
    }
    auto it = node->parent->children.find(child_key(node->key.data()));
    if (it == node->parent->children.end() || it->second != node) {
      errors.push_back(name + " is not indexed by its parent under its first page");
    }
    int64_t child_locks = 0;
    for (const auto& kv : node->children) child_locks += kv.second->lock_ref;
    if (node->lock_ref < child_locks) errors.push_back(name + " has fewer locks than its children");
    direct_locks += node->lock_ref - child_locks;
    (node->lock_ref ? protected_size : evictable) += len;
    if (node->children.empty() && node->lock_ref == 0 && !node->in_heap) {
      errors.push_back("evictable leaf " + name + " is missing from the eviction heap");
    }
    for (int64_t i = 0; i < len; ++i) {
      if (page_size_ > 1 && i % page_size_ == 0 && node->value[i] % page_size_ != 0) {
        errors.push_back(name + " has a page not starting at a page boundary");
      }
      if (!seen.insert(node->value[i]).second) errors.push_back("slot " + std::to_string(node->value[i]) + " is held twice");
    }
  }
  if (evictable != evictable_ || protected_size != protected_ || direct_locks != num_locks_) {
    errors.push_back("(evictable, protected, locks) counters (" + std::to_string(evictable_) + ", " +
                     std::to_string(protected_) + ", " + std::to_string(num_locks_) + ") != recomputed (" +
                     std::to_string(evictable) + ", " + std::to_string(protected_size) + ", " +
                     std::to_string(direct_locks) + ")");
  }
  return errors;
}

}  // namespace lite_srt
