// GranuleBits — a flat bitset over an arena's granules with range operations a word (64
// granules) at a time: TemporalGranules keeps which granules are mapped, retiring and fully
// covered by a block in them, so that a block of a thousand granules costs its sixteen words,
// not a thousand steps ("walk runs, not granules"). Ranges are half-open, [lo, hi).
//
// The words live in lazily zeroed memory (ZeroedArray), like the pool's other per-granule state:
// an arena spans a device's worth of granules while a job touches few of them.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

#include "timeshare/pool/temporal/temporal_bit_index.h"
#include "timeshare/pool/zeroed_array.h"

namespace timeshare::pool {

class GranuleBits {
 public:
  static constexpr std::size_t kBits = 64;

  GranuleBits() = default;
  explicit GranuleBits(std::size_t n) : words_((n + kBits - 1) / kBits), size_(n) {}
  std::size_t size() const noexcept { return size_; }

  bool test(std::size_t i) const noexcept { return (words_[i / kBits] >> (i % kBits)) & 1u; }
  void set(std::size_t i) noexcept { words_[i / kBits] |= bit(i); }
  void clear(std::size_t i) noexcept { words_[i / kBits] &= ~bit(i); }

  void set_range(std::size_t lo, std::size_t hi) noexcept {
    for_words(lo, hi, [](std::uint64_t& w, std::uint64_t m) {
      w |= m;
      return false;
    });
  }
  void clear_range(std::size_t lo, std::size_t hi) noexcept {
    for_words(lo, hi, [](std::uint64_t& w, std::uint64_t m) {
      w &= ~m;
      return false;
    });
  }
  // Clear bits in [lo, hi).
  std::size_t count_clear(std::size_t lo, std::size_t hi) const noexcept {
    std::size_t n = 0;
    for_words(lo, hi, [&](std::uint64_t w, std::uint64_t m) {
      n += TemporalBitIndex::count_ones(~w & m);
      return false;
    });
    return n;
  }
  // Whether every bit of [lo, hi) is set (true when empty).
  bool all(std::size_t lo, std::size_t hi) const noexcept {
    return !for_words(lo, hi, [](std::uint64_t w, std::uint64_t m) { return (w & m) != m; });
  }
  // Whether some bit of [lo, hi) is set.
  bool any(std::size_t lo, std::size_t hi) const noexcept {
    return for_words(lo, hi, [](std::uint64_t w, std::uint64_t m) { return (w & m) != 0; });
  }
  // The first set (clear) bit in [lo, hi), or hi when none.
  std::size_t find_set(std::size_t lo, std::size_t hi) const noexcept {
    return find(lo, hi, 0);
  }
  std::size_t find_clear(std::size_t lo, std::size_t hi) const noexcept {
    return find(lo, hi, ~std::uint64_t{0});
  }
  // The first bit in [lo, hi) set in `a` or in `b` (bitsets of the same size), or hi when none.
  static std::size_t find_set_either(const GranuleBits& a, const GranuleBits& b, std::size_t lo,
                                     std::size_t hi) noexcept {
    return first_in(lo, hi, [&](std::size_t w) { return a.words_[w] | b.words_[w]; });
  }

 private:
  static std::uint64_t bit(std::size_t i) noexcept { return std::uint64_t{1} << (i % kBits); }
  // Calls fn(word, mask of [lo, hi) in it) on each word that meets [lo, hi), first first; stops
  // and returns true when fn does.
  template <class Fn>
  bool for_words(std::size_t lo, std::size_t hi, Fn&& fn) const noexcept {
    return for_words(words_.begin(), lo, hi, fn);
  }
  template <class Fn>
  bool for_words(std::size_t lo, std::size_t hi, Fn&& fn) noexcept {
    return for_words(words_.begin(), lo, hi, fn);
  }
  template <class Word, class Fn>
  static bool for_words(Word* words, std::size_t lo, std::size_t hi, Fn& fn) noexcept {
    if (lo >= hi) return false;
    const std::size_t w0 = lo / kBits, w1 = (hi - 1) / kBits;
    const std::uint64_t first = ~std::uint64_t{0} << (lo % kBits);
    const std::uint64_t last = ~std::uint64_t{0} >> (kBits - 1 - (hi - 1) % kBits);
    if (w0 == w1) return fn(words[w0], first & last);
    if (fn(words[w0], first)) return true;
    // The inside words whole: a loop the compiler keeps tight.
    for (std::size_t w = w0 + 1; w < w1; ++w) {
      if (fn(words[w], ~std::uint64_t{0})) return true;
    }
    return fn(words[w1], last);
  }
  // The first bit in [lo, hi) whose value differs from `flip`'s (0: set bits; ~0: clear ones).
  std::size_t find(std::size_t lo, std::size_t hi, std::uint64_t flip) const noexcept {
    return first_in(lo, hi, [&](std::size_t w) { return words_[w] ^ flip; });
  }
  // The first bit in [lo, hi) set in word(w), the words looked at one by one from lo's; or hi.
  template <class WordOf>
  static std::size_t first_in(std::size_t lo, std::size_t hi, WordOf&& word) noexcept {
    while (lo < hi) {
      const std::size_t w = lo / kBits;
      const std::uint64_t x = word(w) & (~std::uint64_t{0} << (lo % kBits));
      if (x != 0) {
        const std::size_t at = w * kBits + static_cast<std::size_t>(std::countr_zero(x));
        return at < hi ? at : hi;
      }
      lo = (w + 1) * kBits;
    }
    return hi;
  }

  ZeroedArray<std::uint64_t> words_;
  std::size_t size_ = 0;
};

}  // namespace timeshare::pool
