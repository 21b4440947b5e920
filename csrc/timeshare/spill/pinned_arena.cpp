#include "timeshare/spill/pinned_arena.h"

#include <algorithm>

#include "timeshare/common/units.h"

namespace timeshare::spill {

PinnedArena::~PinnedArena() {
  if (base_) backend_.host_free_pinned(base_);
}

device::Status PinnedArena::init(std::size_t capacity_bytes) {
  if (base_ || capacity_bytes == 0) return device::Status::kInvalid;
  const std::size_t bytes = round_up(capacity_bytes, kArenaAlignmentBytes);
  void* p = nullptr;
  const device::Status s = backend_.host_alloc_pinned(bytes, &p);
  if (s != device::Status::kOk) return s;
  base_ = static_cast<std::byte*>(p);
  capacity_bytes_ = bytes;
  free_.emplace(0, bytes);
  return device::Status::kOk;
}

void* PinnedArena::allocate(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  const std::size_t need = round_up(bytes, kArenaAlignmentBytes);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    const std::size_t offset = it->first;
    const std::size_t rest = it->second - need;
    free_.erase(it);
    if (rest > 0) free_.emplace(offset + need, rest);
    live_.emplace(offset, need);
    used_bytes_ += need;
    peak_used_bytes_ = std::max(peak_used_bytes_, used_bytes_);
    return base_ + offset;
  }
  return nullptr;
}

bool PinnedArena::free(void* ptr) {
  if (!contains(ptr)) return false;
  const auto offset = static_cast<std::size_t>(static_cast<std::byte*>(ptr) - base_);
  auto live = live_.find(offset);
  if (live == live_.end()) return false;
  std::size_t start = offset;
  std::size_t bytes = live->second;
  live_.erase(live);
  used_bytes_ -= bytes;
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + bytes) {
    bytes += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      bytes += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, bytes);
  return true;
}

std::size_t PinnedArena::largest_free_bytes() const noexcept {
  std::size_t best = 0;
  for (const auto& [offset, bytes] : free_) best = std::max(best, bytes);
  return best;
}

bool PinnedArena::contains(const void* ptr) const noexcept {
  const auto* p = static_cast<const std::byte*>(ptr);
  return base_ && p >= base_ && p < base_ + capacity_bytes_;
}

}  // namespace timeshare::spill
