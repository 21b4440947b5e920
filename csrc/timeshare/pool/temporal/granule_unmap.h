// unmap_granules — how the temporal pool unmaps a run of granules (TemporalGranules trims and
// tears down with it; GranuleRelease unmaps retiring addresses and undone aliases with it).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "timeshare/device/backend.h"

namespace timeshare::pool {

// Unmaps granules [first, first+n) of the arena at `base` and sets gone[i] for each granule i
// of them that is unmapped afterwards; returns how many are, and adds the device calls made to
// *calls. When the device refuses, the pool's record must still be the device's: the granules
// it kept stay mapped (callers keep them as they were).
inline std::size_t unmap_granules(device::Backend& backend, std::uintptr_t base,
                                  std::size_t granule_bytes, std::size_t first, std::size_t n,
                                  std::uint8_t* gone, std::uint64_t* calls) {
  const auto at = [&](std::size_t g) { return reinterpret_cast<void*>(base + g * granule_bytes); };
  const device::Status st = backend.unmap(at(first), n * granule_bytes);
  ++*calls;
  if (st == device::Status::kOk) {
    std::fill_n(gone, n, std::uint8_t{1});
    return n;
  }
  // A failed unmap unmaps nothing (the Backend contract): each granule is asked alone, so that
  // even a backend that broke it leaves the pool knowing what is mapped. A granule the backend
  // refuses as not mapped (kInvalid: the range is otherwise always a valid one of ours) is not.
  std::size_t done = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const device::Status one = n == 1 ? st : backend.unmap(at(first + i), granule_bytes);
    if (n != 1) ++*calls;
    gone[i] = one == device::Status::kOk || one == device::Status::kInvalid;
    done += gone[i];
  }
  return done;
}

}  // namespace timeshare::pool
