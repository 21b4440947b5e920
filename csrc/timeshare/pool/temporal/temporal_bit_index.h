// TemporalBitIndex — a set of small integers as a hierarchical bitset: set, clear and test in
// O(levels), highest member in O(levels) (levels = log64 of the capacity: 3 for a million).
// The temporal pool indexes its cached granules with it: a big block spans dozens of granules,
// and a balanced tree node per granule was the pool's hottest cost.
//
// The words live in lazily zeroed memory (ZeroedArray): an arena's index spans every granule
// of its virtual range (a device's worth per region) while a job touches a few of them, and a
// zero-filled vector faulted in all its pages at the first allocation of each stream.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "timeshare/pool/zeroed_array.h"

namespace timeshare::pool {

class TemporalBitIndex {
 public:
  static constexpr std::size_t npos = ~std::size_t{0};

  // Grows the capacity to at least `n` members, keeping the current ones.
  void resize(std::size_t n) {
    std::vector<std::size_t> members;
    for (std::size_t i = find_last(); i != npos; i = find_prev(i)) members.push_back(i);
    levels_.clear();
    std::size_t words = (n + kBits - 1) / kBits;
    do {
      words = words == 0 ? 1 : words;
      levels_.emplace_back(words);
      words = (words + kBits - 1) / kBits;
    } while (levels_.back().size() > 1);
    capacity_ = n;
    count_ = 0;
    for (std::size_t i : members) set(i);
  }

  std::size_t capacity() const noexcept { return capacity_; }
  std::size_t count() const noexcept { return count_; }
  bool empty() const noexcept { return count_ == 0; }

  // Members per word, and the bits of a word at or below `bit`.
  static constexpr std::size_t kBits = 64;
  static std::uint64_t mask_upto(std::size_t bit) noexcept {
    return bit == kBits - 1 ? ~std::uint64_t{0} : (std::uint64_t{1} << (bit + 1)) - 1;
  }
  // Set bits of a word, with no work for the words common inside a range: none or all set.
  static std::size_t count_ones(std::uint64_t x) noexcept {
    return x == 0 ? 0 : x == ~std::uint64_t{0} ? kBits : ones(x);
  }
  // The members [kBits w, kBits w + kBits - 1] as bits (bit b: member kBits w + b).
  std::uint64_t word(std::size_t w) const noexcept { return levels_[0][w]; }

  bool test(std::size_t i) const noexcept {
    return (levels_[0][i / kBits] >> (i % kBits)) & 1u;
  }

  void set(std::size_t i) noexcept {
    if (test(i)) return;
    ++count_;
    for (auto& level : levels_) {
      std::uint64_t& w = level[i / kBits];
      const bool was_empty = w == 0;
      w |= std::uint64_t{1} << (i % kBits);
      if (!was_empty) return;
      i /= kBits;
    }
  }

  void clear(std::size_t i) noexcept {
    if (!test(i)) return;
    --count_;
    for (auto& level : levels_) {
      std::uint64_t& w = level[i / kBits];
      w &= ~(std::uint64_t{1} << (i % kBits));
      if (w != 0) return;
      i /= kBits;
    }
  }

  // Adds every member of [lo, hi] (inclusive): O(levels + (hi - lo) / 64).
  void set_range(std::size_t lo, std::size_t hi) noexcept {
    const std::size_t added = leaves(lo, hi, /*set=*/true);
    if (added == 0) return;  // all were members: the upper levels say so already
    count_ += added;
    for (std::size_t l = 1; l < levels_.size(); ++l) {
      lo /= kBits;
      hi /= kBits;
      auto& level = levels_[l];
      const std::size_t wlo = lo / kBits, whi = hi / kBits;
      for (std::size_t w = wlo; w <= whi; ++w) level[w] |= range_mask(w, lo, hi);
    }
  }

  // Whether some word holding a key of [lo, hi] holds a member (a member outside the range in
  // those words counts too: a cheap first look, a word or two of the level above).
  bool maybe_any(std::size_t lo, std::size_t hi) const noexcept {
    // One bit per leaf word in the level above: a range of thousands of keys costs a word or two.
    if (levels_.size() < 2) return true;
    const std::size_t wlo = lo / kBits, whi = hi / kBits;
    for (std::size_t u = wlo / kBits; u <= whi / kBits; ++u) {
      if (levels_[1][u] & range_mask(u, wlo, whi)) return true;
    }
    return false;
  }

  // Removes every member of [lo, hi] (inclusive).
  void clear_range(std::size_t lo, std::size_t hi) noexcept {
    if (!maybe_any(lo, hi)) return;  // no member in the range's words
    const std::size_t removed = leaves(lo, hi, /*set=*/false);
    if (removed == 0) return;  // none were members: the upper levels say so already
    count_ -= removed;
    for (std::size_t l = 0; l < levels_.size(); ++l) {
      auto& level = levels_[l];
      const std::size_t wlo = lo / kBits, whi = hi / kBits;
      if (l != 0) {
        for (std::size_t w = wlo; w <= whi; ++w) level[w] &= ~range_mask(w, lo, hi);
      }
      // Parents of words that became empty: only the two end words can still hold members.
      std::size_t new_lo = wlo, new_hi = whi;
      if (level[new_lo] != 0) ++new_lo;
      if (new_lo <= new_hi && level[new_hi] != 0) {
        if (new_hi == new_lo) return;
        --new_hi;
      }
      if (new_lo > new_hi) return;
      lo = new_lo;
      hi = new_hi;
    }
  }

  // Highest member, or npos when empty.
  std::size_t find_last() const noexcept {
    if (count_ == 0) return npos;
    std::size_t i = 0;
    for (std::size_t l = levels_.size(); l-- > 0;) {
      const std::uint64_t w = levels_[l][i];
      i = i * kBits + (kBits - 1 - static_cast<std::size_t>(std::countl_zero(w)));
    }
    return i;
  }

  // Highest member below `i`, or npos. Linear in the distance at the leaf level only when
  // words are empty, which the upper levels skip.
  std::size_t find_prev(std::size_t i) const noexcept {
    if (count_ == 0) return npos;
    return prev_in(i, [this](std::size_t l, std::size_t w) { return levels_[l][w]; });
  }

  // Highest member below `i` of the union of three indices of the same capacity, or npos: one
  // walk over their words ORed, where three find_prev calls would make three.
  static std::size_t find_prev_union(const TemporalBitIndex& a, const TemporalBitIndex& b,
                                     const TemporalBitIndex& c, std::size_t i) noexcept {
    if (a.count_ + b.count_ + c.count_ == 0) return npos;
    return a.prev_in(i, [&](std::size_t l, std::size_t w) {
      return a.levels_[l][w] | b.levels_[l][w] | c.levels_[l][w];
    });
  }

 private:
  // find_prev over the words word(level, w) (this index's shape): climb until a word has a
  // member at or below the position, then descend.
  template <class WordAt>
  std::size_t prev_in(std::size_t i, WordAt&& word) const noexcept {
    if (i == 0) return npos;
    --i;
    std::size_t l = 0;
    for (; l < levels_.size(); ++l) {
      const std::uint64_t w = word(l, i / kBits) & mask_upto(i % kBits);
      if (w != 0) {
        i = (i / kBits) * kBits + (kBits - 1 - static_cast<std::size_t>(std::countl_zero(w)));
        break;
      }
      if (i / kBits == 0) return npos;
      i = i / kBits - 1;
    }
    if (l == levels_.size()) return npos;
    while (l-- > 0) {
      const std::uint64_t w = word(l, i);
      i = i * kBits + (kBits - 1 - static_cast<std::size_t>(std::countl_zero(w)));
    }
    return i;
  }
  // Sets (or clears) the leaf bits of members [lo, hi]; returns how many changed. The inside
  // words of a range are mostly all members or none: they are looked at as a whole first (an
  // OR and an AND, loops the compiler vectorizes, as it does the fill), and counted one by
  // one only when mixed.
  std::size_t leaves(std::size_t lo, std::size_t hi, bool set) noexcept {
    std::uint64_t* words = levels_[0].begin();
    const std::size_t wlo = lo / kBits, whi = hi / kBits;
    const std::uint64_t first = ~std::uint64_t{0} << (lo % kBits);
    const std::uint64_t last = mask_upto(hi % kBits);
    const auto end = [&](std::uint64_t& w, std::uint64_t m) {
      const std::size_t n = count_ones(set ? m & ~w : m & w);
      w = set ? w | m : w & ~m;
      return n;
    };
    if (wlo == whi) return end(words[wlo], first & last);
    std::size_t changed = end(words[wlo], first) + end(words[whi], last);
    std::uint64_t* inside = words + wlo + 1;
    const std::size_t n = whi - wlo - 1;
    std::uint64_t any = 0;
    std::uint64_t all = ~std::uint64_t{0};
    for (std::size_t i = 0; i < n; ++i) {
      any |= inside[i];
      all &= inside[i];
    }
    std::size_t members = 0;  // among the inside words
    if (all == ~std::uint64_t{0}) {
      members = n * kBits;
    } else if (any != 0) {
      for (std::size_t i = 0; i < n; ++i) members += count_ones(inside[i]);
    }
    changed += set ? n * kBits - members : members;
    std::fill_n(inside, n, set ? ~std::uint64_t{0} : std::uint64_t{0});
    return changed;
  }
  // The bits of word `w` that lie in [lo, hi].
  static std::uint64_t range_mask(std::size_t w, std::size_t lo, std::size_t hi) noexcept {
    const std::size_t a = w == lo / kBits ? lo % kBits : 0;
    const std::size_t b = w == hi / kBits ? hi % kBits : kBits - 1;
    return mask_upto(b) & ~(a == 0 ? std::uint64_t{0} : mask_upto(a - 1));
  }
  // Set bits of a word. std::popcount compiles to a libgcc call (a table walk) on baseline
  // x86-64, which the profile of the pool's hot path showed; this is the branch-free SWAR
  // count, inlined.
  static std::size_t ones(std::uint64_t x) noexcept {
#if defined(__POPCNT__)
    return static_cast<std::size_t>(std::popcount(x));
#else
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return static_cast<std::size_t>((x * 0x0101010101010101ULL) >> 56);
#endif
  }

  std::vector<ZeroedArray<std::uint64_t>> levels_;
  std::size_t capacity_ = 0;
  std::size_t count_ = 0;
};

}  // namespace timeshare::pool
