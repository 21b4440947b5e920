#include "timeshare/predict/context_table.h"

#include <algorithm>
#include <cmath>

#include "timeshare/predict/hashing.h"

namespace timeshare::predict {

namespace {
std::size_t round_pow2(std::size_t n) {
  std::size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}
constexpr float kWithin2xLog2 = 1.0f;
}  // namespace

ContextTable::ContextTable(int context_k, std::size_t entries)
    : k_(std::clamp(context_k, 0, kMaxContextK)),
      entries_(round_pow2(std::max<std::size_t>(entries, 64))),
      mask_(entries_.size() - 1),
      occ_(kOccurrenceSlots) {}

ContextKeys ContextTable::keys(std::uint64_t bytes, std::uint64_t stream,
                               std::uint64_t cycle) noexcept {
  ContextKeys out;
  out.levels = k_ + 1;
  std::uint64_t h = hash_combine(mix64(bytes), stream);
  out.key[0] = h | 1;  // never 0 (the empty marker)
  if (cycle != 0) {
    Occurrence& o = occ_[h & (kOccurrenceSlots - 1)];
    if (o.key != h || o.cycle != cycle) {
      o.key = h;
      o.cycle = cycle;
      o.count = 0;
    }
    last_occurrence_ = o.count++;
    out.key[k_ + 1] = hash_combine(h ^ 0x6f63637572ull, last_occurrence_) | 1;
    out.levels = k_ + 2;
  } else {
    last_occurrence_ = 0;
  }
  for (int k = 1; k <= k_; ++k) {
    h = hash_combine(h, recent_[k - 1]);
    out.key[k] = h | 1;
  }
  return out;
}

void ContextTable::push_size(std::uint64_t bytes) noexcept {
  for (int k = kMaxContextK - 1; k > 0; --k) recent_[k] = recent_[k - 1];
  recent_[0] = bytes;
}

ContextEntry* ContextTable::find(std::uint64_t key) noexcept {
  std::size_t i = mix64(key) & mask_;
  for (int probe = 0; probe < kTableMaxProbe; ++probe, i = (i + 1) & mask_) {
    if (entries_[i].key == key) return &entries_[i];
    if (entries_[i].key == 0) return nullptr;
  }
  return nullptr;
}

ContextEntry* ContextTable::slot_for(std::uint64_t key) noexcept {
  std::size_t i = mix64(key) & mask_;
  ContextEntry* victim = nullptr;
  for (int probe = 0; probe < kTableMaxProbe; ++probe, i = (i + 1) & mask_) {
    ContextEntry& e = entries_[i];
    if (e.key == key) return &e;
    if (e.key == 0) {
      e = ContextEntry{};
      e.key = key;
      return &e;
    }
    if (!victim || e.count < victim->count) victim = &e;
  }
  // Table full along this probe run: replace the least-used entry.
  *victim = ContextEntry{};
  victim->key = key;
  return victim;
}

ContextAnswer ContextTable::lookup(const ContextKeys& keys) noexcept {
  // The most specific stable context; failing that, the most specific known one.
  ContextAnswer a;
  for (int k = keys.levels - 1; k >= 0; --k) {
    ContextEntry* e = find(keys.key[k]);
    if (!e) continue;
    if (k == keys.levels - 1) a.full = e;
    const bool stable = e->count >= 2 && std::fabs(e->last_log2 - e->prev_log2) < kWithin2xLog2;
    if (a.level < 0 || stable) {
      a.log2_life = e->last_log2;
      a.level = k;
      a.stable = stable;
    }
    if (stable) break;
  }
  return a;
}

void ContextTable::learn(const ContextKeys& keys, float log2_life) noexcept {
  prefetch(keys);
  for (int k = 0; k < keys.levels; ++k) {
    ContextEntry* e = slot_for(keys.key[k]);
    e->prev_log2 = e->count ? e->last_log2 : log2_life;
    e->last_log2 = log2_life;
    if (e->count < UINT32_MAX) ++e->count;
  }
}

}  // namespace timeshare::predict
