#include "timeshare/pool/temporal/arena_free_ranges.h"

#include <algorithm>
#include <iterator>

namespace timeshare::pool {

std::size_t ArenaFreeRanges::first_fit(std::size_t bytes) const noexcept {
  return size_index({bytes, 0});
}

std::size_t ArenaFreeRanges::addr_at_or_above(std::uintptr_t addr) const noexcept {
  const auto it = std::lower_bound(by_addr_.begin(), by_addr_.end(), addr,
                                   [](const Range& r, std::uintptr_t a) { return r.addr < a; });
  return static_cast<std::size_t>(it - by_addr_.begin());
}

std::size_t ArenaFreeRanges::size_index(const SizeKey& k) const noexcept {
  return static_cast<std::size_t>(std::lower_bound(by_size_.begin(), by_size_.end(), k) -
                                  by_size_.begin());
}

void ArenaFreeRanges::size_insert(const SizeKey& k) {
  by_size_.insert(by_size_.begin() + static_cast<std::ptrdiff_t>(size_index(k)), k);
}

void ArenaFreeRanges::size_erase(const SizeKey& k) {
  by_size_.erase(by_size_.begin() + static_cast<std::ptrdiff_t>(size_index(k)));
}

void ArenaFreeRanges::size_replace(const SizeKey& old, const SizeKey& now) {
  const auto begin = by_size_.begin();
  const std::size_t i = size_index(old);
  if (i > 0 && now < by_size_[i - 1]) {  // moves down: shift [j, i) up by one
    const auto j = std::lower_bound(begin, begin + static_cast<std::ptrdiff_t>(i), now);
    std::move_backward(j, begin + static_cast<std::ptrdiff_t>(i),
                       begin + static_cast<std::ptrdiff_t>(i + 1));
    *j = now;
  } else if (i + 1 < by_size_.size() && by_size_[i + 1] < now) {  // up: shift (i, j) down
    const auto j = std::lower_bound(begin + static_cast<std::ptrdiff_t>(i + 1), by_size_.end(), now);
    std::move(begin + static_cast<std::ptrdiff_t>(i + 1), j, begin + static_cast<std::ptrdiff_t>(i));
    *std::prev(j) = now;
  } else {
    by_size_[i] = now;
  }
}

bool ArenaFreeRanges::insert(std::uintptr_t addr, std::size_t bytes) {
  const std::size_t next = addr_at_or_above(addr);
  if (bytes == 0 || (next < by_addr_.size() && by_addr_[next].addr < addr + bytes) ||
      (next > 0 && by_addr_[next - 1].addr + by_addr_[next - 1].bytes > addr)) {
    return false;
  }
  const bool merge_next = next < by_addr_.size() && by_addr_[next].addr == addr + bytes;
  const bool merge_prev = next > 0 && by_addr_[next - 1].addr + by_addr_[next - 1].bytes == addr;
  free_bytes_ += bytes;
  if (merge_prev) {
    // Grow the previous range in place (and swallow the next one).
    Range& p = by_addr_[next - 1];
    const SizeKey old{p.bytes, p.addr};
    if (merge_next) {
      size_erase({by_addr_[next].bytes, by_addr_[next].addr});
      p.bytes += bytes + by_addr_[next].bytes;
      by_addr_.erase(by_addr_.begin() + static_cast<std::ptrdiff_t>(next));
    } else {
      p.bytes += bytes;
    }
    size_replace(old, {p.bytes, p.addr});
    return true;
  }
  if (merge_next) {
    // Move the next range's start down to `addr`: its place by address stays.
    Range& n = by_addr_[next];
    const SizeKey old{n.bytes, n.addr};
    n.addr = addr;
    n.bytes += bytes;
    size_replace(old, {n.bytes, n.addr});
    return true;
  }
  by_addr_.insert(by_addr_.begin() + static_cast<std::ptrdiff_t>(next), Range{addr, bytes});
  size_insert({bytes, addr});
  return true;
}

void ArenaFreeRanges::carve(const Range& r, std::size_t bytes) {
  free_bytes_ -= bytes;
  const std::size_t i = addr_at_or_above(r.addr);
  if (r.bytes == bytes) {
    by_addr_.erase(by_addr_.begin() + static_cast<std::ptrdiff_t>(i));
    size_erase({r.bytes, r.addr});
    return;
  }
  // The rest keeps the range's place by address (it still lies between the same neighbours).
  by_addr_[i] = Range{r.addr + bytes, r.bytes - bytes};
  size_replace({r.bytes, r.addr}, {r.bytes - bytes, r.addr + bytes});
}

bool ArenaFreeRanges::take_best_fit(std::size_t bytes, Range* out) {
  if (!peek_best_fit(bytes, out)) return false;
  carve(*out, out->bytes);
  return true;
}

bool ArenaFreeRanges::containing(std::uintptr_t addr, std::size_t bytes, Range* out) const {
  // The last range starting at or below addr.
  const auto it = std::upper_bound(by_addr_.begin(), by_addr_.end(), addr,
                                   [](std::uintptr_t a, const Range& r) { return a < r.addr; });
  if (it == by_addr_.begin()) return false;
  const Range& r = *std::prev(it);
  if (addr + bytes > r.addr + r.bytes) return false;
  *out = r;
  return true;
}

void ArenaFreeRanges::carve_at(const Range& r, std::uintptr_t addr, std::size_t bytes) {
  if (addr == r.addr) {
    carve(r, bytes);
    return;
  }
  free_bytes_ -= bytes;
  const std::size_t i = addr_at_or_above(r.addr);
  const std::uintptr_t end = r.addr + r.bytes;
  // The head keeps the range's place; the tail, if any, comes right after it.
  by_addr_[i].bytes = addr - r.addr;
  size_replace({r.bytes, r.addr}, {addr - r.addr, r.addr});
  if (addr + bytes < end) {
    by_addr_.insert(by_addr_.begin() + static_cast<std::ptrdiff_t>(i + 1),
                    Range{addr + bytes, end - addr - bytes});
    size_insert({end - addr - bytes, addr + bytes});
  }
}

}  // namespace timeshare::pool
