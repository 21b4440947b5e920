// PinnedArena — one pinned host allocation, made once, sub-allocated for spilled tensors.
//
// Pinning host memory (cudaHostAlloc) is slow and serialises the device, so the spill engine
// asks the backend for its whole arena once (`init`) and carves ranges out of it: first fit
// over an ordered map of free ranges, neighbours coalesced on free, every range aligned to
// kArenaAlignmentBytes. Not thread-safe: the SpillEngine's mutex guards it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>

#include "timeshare/device/backend.h"

namespace timeshare::spill {

inline constexpr std::size_t kArenaAlignmentBytes = 512;

class PinnedArena {
 public:
  explicit PinnedArena(device::Backend& backend) : backend_(backend) {}
  ~PinnedArena();
  PinnedArena(const PinnedArena&) = delete;
  PinnedArena& operator=(const PinnedArena&) = delete;

  // One host_alloc_pinned of `capacity_bytes` (rounded up to the alignment). A failure leaves
  // the arena empty (capacity 0): every allocate() then fails and spills stay resident.
  device::Status init(std::size_t capacity_bytes);

  // A range of at least `bytes`, or nullptr when no free range is large enough.
  void* allocate(std::size_t bytes);
  // Returns a range from allocate(); false for a pointer that is not a live range.
  bool free(void* ptr);

  std::size_t capacity_bytes() const noexcept { return capacity_bytes_; }
  std::size_t used_bytes() const noexcept { return used_bytes_; }
  std::size_t peak_used_bytes() const noexcept { return peak_used_bytes_; }
  std::size_t largest_free_bytes() const noexcept;
  std::size_t live_ranges() const noexcept { return live_.size(); }
  bool contains(const void* ptr) const noexcept;

 private:
  device::Backend& backend_;
  std::byte* base_ = nullptr;
  std::size_t capacity_bytes_ = 0;
  std::size_t used_bytes_ = 0;
  std::size_t peak_used_bytes_ = 0;
  std::map<std::size_t, std::size_t> free_;  // offset -> bytes, coalesced
  std::map<std::size_t, std::size_t> live_;  // offset -> bytes
};

}  // namespace timeshare::spill
