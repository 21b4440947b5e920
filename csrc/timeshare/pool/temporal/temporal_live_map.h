// TemporalLiveMap — the temporal pool's live blocks by address: an open-addressing hash map.
//
// Every allocate inserts one entry and every deallocate finds and removes one, so this is on
// the hot path twice per block. A node-based std::unordered_map costs a heap allocation and a
// free per block and a pointer chase per lookup; here the entries live in one flat array
// (linear probing, backward-shift deletion: no tombstones), and the table doubles at half load.
// Iteration order is unspecified (as the pool's diagnostics promise).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace timeshare::pool {

template <class V>
class TemporalLiveMap {
 public:
  TemporalLiveMap() { rehash(kInitialCapacity); }

  // The value of `key`, or nullptr.
  V* find(std::uintptr_t key) noexcept {
    for (std::size_t i = home(key);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == key) return &s.value;
      if (s.key == kEmpty) return nullptr;
    }
  }
  const V* find(std::uintptr_t key) const noexcept {
    return const_cast<TemporalLiveMap*>(this)->find(key);
  }

  // Inserts `key` (which must not be present and must not be 0) with `value`.
  V* emplace(std::uintptr_t key, V&& value) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    std::size_t i = home(key);
    while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
    slots_[i].key = key;
    slots_[i].value = std::move(value);
    ++size_;
    return &slots_[i].value;
  }

  // Moves the value of `key` to *out and removes it; false when absent.
  bool take(std::uintptr_t key, V* out) {
    std::size_t i = home(key);
    for (;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) break;
      if (slots_[i].key == kEmpty) return false;
    }
    *out = std::move(slots_[i].value);
    // Backward shift: pull later entries of the probe run into the hole.
    std::size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (slots_[j].key == kEmpty) break;
      const std::size_t h = home(slots_[j].key);
      const bool in_range = i <= j ? (h > i && h <= j) : (h > i || h <= j);
      if (!in_range) {
        slots_[i].key = slots_[j].key;
        slots_[i].value = std::move(slots_[j].value);
        i = j;
      }
    }
    slots_[i].key = kEmpty;
    slots_[i].value = V{};
    --size_;
    return true;
  }

  std::size_t size() const noexcept { return size_; }

  // Calls fn(key, value) for every entry.
  template <class Fn>
  void for_each(Fn&& fn) const {
    for (const Slot& s : slots_) {
      if (s.key != kEmpty) fn(s.key, s.value);
    }
  }

 private:
  static constexpr std::uintptr_t kEmpty = 0;
  static constexpr std::size_t kInitialCapacity = 1024;
  struct Slot {
    std::uintptr_t key = kEmpty;
    V value{};
  };

  // Fibonacci hashing of the address: the top bits of key * 2^64/phi.
  std::size_t home(std::uintptr_t key) const noexcept {
    return static_cast<std::size_t>((std::uint64_t(key) * 0x9e3779b97f4a7c15ull) >> shift_);
  }

  void rehash(std::size_t capacity) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.resize(capacity);
    mask_ = capacity - 1;
    shift_ = 64 - static_cast<unsigned>(std::countr_zero(capacity));
    size_ = 0;
    for (Slot& s : old) {
      if (s.key != kEmpty) emplace(s.key, std::move(s.value));
    }
  }

  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  unsigned shift_ = 64;
  std::size_t size_ = 0;
};

}  // namespace timeshare::pool
