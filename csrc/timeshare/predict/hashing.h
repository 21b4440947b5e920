// Small hashing helpers shared by the predictors (64-bit mixers, open-addressing id map).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace timeshare::predict {

// SplitMix64 finaliser: a fast, well-mixed 64-bit hash.
inline std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline std::uint64_t hash_combine(std::uint64_t h, std::uint64_t v) noexcept {
  return mix64(h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2)));
}

// A direct-mapped memo of an exact function of K (N a power of two): get(k, f) returns the
// remembered f() for k, calling f only when k's slot holds another key. The hot path's libm
// calls on values that repeat.
template <typename K, typename V, std::size_t N>
class DirectMemo {
  static_assert((N & (N - 1)) == 0, "N must be a power of two");

 public:
  template <typename F>
  V get(K k, F&& f) {
    const std::size_t i = std::size_t(mix64(std::uint64_t(k))) & (N - 1);
    if (!used_[i] || key_[i] != k) {
      key_[i] = k;
      value_[i] = f();
      used_[i] = true;
    }
    return value_[i];
  }

 private:
  K key_[N]{};
  V value_[N]{};
  bool used_[N] = {};
};

// Open-addressing map from a 64-bit id to V, linear probing with backward-shift deletion
// (no tombstones), grows at half load. The hot path's id -> pending-allocation lookup.
template <typename V>
class IdMap {
 public:
  IdMap() { rehash(kInitialCapacity); }

  V* insert(std::uint64_t id) { return emplace(id, V{}); }

  // insert(id) with `value` written once (not value-initialised first); an existing entry
  // is overwritten.
  V* emplace(std::uint64_t id, const V& value) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    std::size_t i = mix64(id) & mask_;
    while (slots_[i].used) {
      if (slots_[i].id == id) {
        slots_[i].value = value;
        return &slots_[i].value;
      }
      i = (i + 1) & mask_;
    }
    slots_[i].used = true;
    slots_[i].id = id;
    slots_[i].value = value;
    ++size_;
    return &slots_[i].value;
  }

  // Starts loading the home slot of `id` (no effect on any result).
  void prefetch(std::uint64_t id) const noexcept { __builtin_prefetch(&slots_[mix64(id) & mask_]); }

  V* find(std::uint64_t id) {
    std::size_t i = mix64(id) & mask_;
    while (slots_[i].used) {
      if (slots_[i].id == id) return &slots_[i].value;
      i = (i + 1) & mask_;
    }
    return nullptr;
  }

  // Removes id if present; `out` receives the value.
  bool take(std::uint64_t id, V* out) {
    std::size_t i = mix64(id) & mask_;
    while (slots_[i].used) {
      if (slots_[i].id == id) {
        *out = slots_[i].value;
        erase_at(i);
        return true;
      }
      i = (i + 1) & mask_;
    }
    return false;
  }

  std::size_t size() const noexcept { return size_; }

 private:
  static constexpr std::size_t kInitialCapacity = 1024;
  struct Slot {
    std::uint64_t id = 0;
    bool used = false;
    V value{};
  };

  void erase_at(std::size_t i) {
    std::size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (!slots_[j].used) break;
      const std::size_t home = mix64(slots_[j].id) & mask_;
      // Move j back to i if its home is not cyclically in (i, j].
      const bool in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
      if (!in_range) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i].used = false;
    --size_;
  }

  void rehash(std::size_t capacity) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    size_ = 0;
    for (const Slot& s : old) {
      if (s.used) emplace(s.id, s.value);
    }
  }

  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace timeshare::predict
