#include "timeshare/pool/arena_free_ranges.h"

namespace timeshare::pool {

void ArenaFreeRanges::add(std::uintptr_t addr, std::size_t bytes) {
  by_addr_.emplace(addr, bytes);
  by_size_.emplace(bytes, addr);
  free_bytes_ += bytes;
}

void ArenaFreeRanges::erase(std::map<std::uintptr_t, std::size_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  free_bytes_ -= it->second;
  by_addr_.erase(it);
}

void ArenaFreeRanges::insert(std::uintptr_t addr, std::size_t bytes) {
  auto next = by_addr_.lower_bound(addr);
  const bool merge_next = next != by_addr_.end() && next->first == addr + bytes;
  auto prev = next == by_addr_.begin() ? by_addr_.end() : std::prev(next);
  const bool merge_prev = prev != by_addr_.end() && prev->first + prev->second == addr;
  free_bytes_ += bytes;
  if (merge_prev) {
    // Grow the previous range in place (and swallow the next one).
    auto size_node = by_size_.extract({prev->second, prev->first});
    if (merge_next) {
      by_size_.erase({next->second, next->first});
      prev->second += bytes + next->second;
      by_addr_.erase(next);
    } else {
      prev->second += bytes;
    }
    size_node.value().first = prev->second;
    by_size_.insert(std::move(size_node));
    return;
  }
  if (merge_next) {
    // Move the next range's start down to `addr`, reusing both nodes.
    auto size_node = by_size_.extract({next->second, next->first});
    auto addr_node = by_addr_.extract(next);
    addr_node.key() = addr;
    addr_node.mapped() += bytes;
    size_node.value() = {addr_node.mapped(), addr};
    by_addr_.insert(std::move(addr_node));
    by_size_.insert(std::move(size_node));
    return;
  }
  free_bytes_ -= bytes;
  add(addr, bytes);
}

bool ArenaFreeRanges::peek_best_fit(std::size_t bytes, Range* out) const {
  auto it = by_size_.lower_bound({bytes, 0});
  if (it == by_size_.end()) return false;
  out->bytes = it->first;
  out->addr = it->second;
  return true;
}

void ArenaFreeRanges::carve(const Range& r, std::size_t bytes) {
  free_bytes_ -= bytes;
  auto size_node = by_size_.extract({r.bytes, r.addr});
  auto addr_it = by_addr_.find(r.addr);
  if (r.bytes == bytes) {
    by_addr_.erase(addr_it);
    return;
  }
  auto hint = std::next(addr_it);
  auto addr_node = by_addr_.extract(addr_it);
  addr_node.key() = r.addr + bytes;
  addr_node.mapped() = r.bytes - bytes;
  by_addr_.insert(hint, std::move(addr_node));
  size_node.value() = {r.bytes - bytes, r.addr + bytes};
  by_size_.insert(std::move(size_node));
}

bool ArenaFreeRanges::take_best_fit(std::size_t bytes, Range* out) {
  auto it = by_size_.lower_bound({bytes, 0});
  if (it == by_size_.end()) return false;
  out->bytes = it->first;
  out->addr = it->second;
  by_size_.erase(it);
  by_addr_.erase(out->addr);
  free_bytes_ -= out->bytes;
  return true;
}

bool ArenaFreeRanges::containing(std::uintptr_t addr, std::size_t bytes, Range* out) const {
  auto it = by_addr_.upper_bound(addr);
  if (it == by_addr_.begin()) return false;
  --it;
  if (addr + bytes > it->first + it->second) return false;
  *out = Range{it->first, it->second};
  return true;
}

void ArenaFreeRanges::carve_at(const Range& r, std::uintptr_t addr, std::size_t bytes) {
  if (addr == r.addr) {
    carve(r, bytes);
    return;
  }
  by_size_.erase({r.bytes, r.addr});
  by_addr_.erase(r.addr);
  free_bytes_ -= r.bytes;
  add(r.addr, addr - r.addr);
  const std::uintptr_t end = r.addr + r.bytes;
  if (addr + bytes < end) add(addr + bytes, end - addr - bytes);
}

}  // namespace timeshare::pool
