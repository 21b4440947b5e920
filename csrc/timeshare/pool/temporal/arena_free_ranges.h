// ArenaFreeRanges — the free address ranges of one region, indexed for best fit.
//
// Two sorted flat arrays over the same ranges: by (size, address) for best fit, and by address
// for coalescing a returned range with its free neighbours. Ranges never overlap and are always
// fully coalesced (no two free ranges touch).
//
// Why flat arrays and not balanced trees: a region holds few free ranges (measured on the
// shipped traces and the GPU snapshots: at most 107, and 64 or fewer at most frees on 9 of the
// 10 traces), and every malloc and free changes one or two of them. Two red-black trees (a node allocated or freed,
// rebalanced, per change) were a third of the temporal pool's hot path; a binary search and a
// memmove of a few hundred bytes in two arrays is a fraction of that. A change costs O(n) moves
// for n free ranges, so a region fragmented into tens of thousands of ranges would pay for it;
// none of the traces comes near.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace timeshare::pool {

class ArenaFreeRanges {
 public:
  struct Range {
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;
  };

  // Adds [addr, addr+bytes), merging it with touching free ranges. Refuses (false, nothing
  // changed) a range that is empty or overlaps a free one: the range, or part of it, is already
  // free, so a caller that inserts it is wrong about what is live, and taking it would hand the
  // same bytes out twice. Checked always (two comparisons with the neighbours the merge reads).
  bool insert(std::uintptr_t addr, std::size_t bytes);

  // Removes and returns the smallest range of at least `bytes` (lowest address among equal
  // sizes). Returns false when no range is large enough.
  bool take_best_fit(std::size_t bytes, Range* out);

  // The range take_best_fit would return, left in place.
  bool peek_best_fit(std::size_t bytes, Range* out) const {
    const std::size_t i = first_fit(bytes);
    if (i == by_size_.size()) return false;
    *out = Range{by_size_[i].addr, by_size_[i].bytes};
    return true;
  }

  // Of the `k` smallest ranges of at least `bytes`, the one at the lowest address.
  bool peek_lowest_of(std::size_t bytes, std::size_t k, Range* out) const {
    std::size_t i = first_fit(bytes);
    if (i == by_size_.size()) return false;
    *out = Range{by_size_[i].addr, by_size_[i].bytes};
    for (const std::size_t end = std::min(by_size_.size(), i + k); ++i < end;) {
      if (by_size_[i].addr < out->addr) *out = Range{by_size_[i].addr, by_size_[i].bytes};
    }
    return true;
  }

  // Calls `fn(range)` on up to `max_candidates` ranges of at least `bytes`, smallest first,
  // until it returns true; returns whether one did (and sets *out to it).
  template <class Fn>
  bool find_fit(std::size_t bytes, std::size_t max_candidates, Fn&& fn, Range* out) const {
    for (std::size_t i = first_fit(bytes), k = 0; k < max_candidates && i < by_size_.size();
         ++k, ++i) {
      const Range r{by_size_[i].addr, by_size_[i].bytes};
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
    *out = by_addr_.back();
    return true;
  }

  // The free range that holds all of [addr, addr+bytes), if any.
  bool containing(std::uintptr_t addr, std::size_t bytes, Range* out) const;

  // Takes [addr, addr+bytes) out of the free range `r` that holds it; both ends stay free.
  void carve_at(const Range& r, std::uintptr_t addr, std::size_t bytes);

  // Takes the first `bytes` of the free range `r` (as returned by peek_best_fit, unchanged
  // since); the rest stays free.
  void carve(const Range& r, std::size_t bytes);

  std::size_t count() const noexcept { return by_addr_.size(); }
  std::size_t free_bytes() const noexcept { return free_bytes_; }
  std::size_t largest_bytes() const noexcept {
    return by_size_.empty() ? 0 : by_size_.back().bytes;
  }

 private:
  struct SizeKey {  // ordered by (bytes, addr)
    std::size_t bytes = 0;
    std::uintptr_t addr = 0;
    bool operator<(const SizeKey& o) const noexcept {
      return bytes != o.bytes ? bytes < o.bytes : addr < o.addr;
    }
  };
  // Index in by_size_ of the first key of at least `bytes` (size() when none).
  std::size_t first_fit(std::size_t bytes) const noexcept;
  // Index in by_addr_ of the first range at or above `addr`.
  std::size_t addr_at_or_above(std::uintptr_t addr) const noexcept;
  // Index in by_size_ of the first key not below `k` (of `k` itself when it is present).
  std::size_t size_index(const SizeKey& k) const noexcept;
  void size_insert(const SizeKey& k);
  void size_erase(const SizeKey& k);
  // Replaces the present key `old` with `now`, moving only the keys between their places.
  void size_replace(const SizeKey& old, const SizeKey& now);

  std::vector<SizeKey> by_size_;
  std::vector<Range> by_addr_;
  std::size_t free_bytes_ = 0;
};

}  // namespace timeshare::pool
