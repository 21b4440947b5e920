// ArenaFreeRanges — the free address ranges of one region, indexed for O(log n) best fit.
//
// Two indexes over the same ranges: by (size, address) for best fit, and by address for
// coalescing a returned range with its free neighbours. Ranges never overlap and are always
// fully coalesced (no two free ranges touch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <set>
#include <utility>

namespace timeshare::pool {

class ArenaFreeRanges {
 public:
  struct Range {
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;
  };

  // Adds [addr, addr+bytes), merging it with touching free ranges.
  void insert(std::uintptr_t addr, std::size_t bytes);

  // Removes and returns the smallest range of at least `bytes` (lowest address among equal
  // sizes). Returns false when no range is large enough.
  bool take_best_fit(std::size_t bytes, Range* out);

  // The range take_best_fit would return, left in place.
  bool peek_best_fit(std::size_t bytes, Range* out) const;

  // Of the `k` smallest ranges of at least `bytes`, the one at the lowest address.
  bool peek_lowest_of(std::size_t bytes, std::size_t k, Range* out) const {
    auto it = by_size_.lower_bound({bytes, 0});
    if (it == by_size_.end()) return false;
    *out = Range{it->second, it->first};
    for (std::size_t i = 1; i < k && ++it != by_size_.end(); ++i) {
      if (it->second < out->addr) *out = Range{it->second, it->first};
    }
    return true;
  }

  // Calls `fn(range)` on up to `max_candidates` ranges of at least `bytes`, smallest first,
  // until it returns true; returns whether one did (and sets *out to it).
  template <class Fn>
  bool find_fit(std::size_t bytes, std::size_t max_candidates, Fn&& fn, Range* out) const {
    auto it = by_size_.lower_bound({bytes, 0});
    for (std::size_t k = 0; k < max_candidates && it != by_size_.end(); ++k, ++it) {
      const Range r{it->second, it->first};
      if (fn(r)) {
        *out = r;
        return true;
      }
    }
    return false;
  }

  // The free range at the highest address (in a region, its untouched tail); false if none.
  bool last(Range* out) const {
    if (by_addr_.empty()) return false;
    const auto it = std::prev(by_addr_.end());
    *out = Range{it->first, it->second};
    return true;
  }

  // The free range that holds all of [addr, addr+bytes), if any.
  bool containing(std::uintptr_t addr, std::size_t bytes, Range* out) const;

  // Takes [addr, addr+bytes) out of the free range `r` that holds it; both ends stay free.
  void carve_at(const Range& r, std::uintptr_t addr, std::size_t bytes);

  // Takes the first `bytes` of the free range `r` (as returned by peek_best_fit, unchanged
  // since); the rest stays free. Reuses the index nodes: no heap allocation.
  void carve(const Range& r, std::size_t bytes);

  std::size_t count() const noexcept { return by_addr_.size(); }
  std::size_t free_bytes() const noexcept { return free_bytes_; }
  std::size_t largest_bytes() const noexcept {
    return by_size_.empty() ? 0 : by_size_.rbegin()->first;
  }

 private:
  void erase(std::map<std::uintptr_t, std::size_t>::iterator it);
  void add(std::uintptr_t addr, std::size_t bytes);

  std::set<std::pair<std::size_t, std::uintptr_t>> by_size_;
  std::map<std::uintptr_t, std::size_t> by_addr_;
  std::size_t free_bytes_ = 0;
};

}  // namespace timeshare::pool
