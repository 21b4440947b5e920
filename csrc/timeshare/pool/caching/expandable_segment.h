// ExpandableSegment — PyTorch's "expandable segments" (PYTORCH_CUDA_ALLOC_CONF=
// expandable_segments:True) modelled on the Backend's virtual-memory calls.
//
// One virtual address range is reserved once per (stream, pool), large enough for 9/8 of the
// device's memory, and physical memory is mapped into it page by page as the pool grows: pages
// of 2 MiB (kSmallBuffer) for the small pool and 20 MiB (kLargeBuffer) for the large pool, as
// torch does. Reserved bytes are the mapped bytes. `map` maps whole pages covering a range
// (all or nothing: on failure the pages it mapped are unmapped again); `unmap` unmaps the
// pages lying completely inside a range, after the segment's stream has finished its work
// (torch synchronises the stream because unmapping does not wait for the GPU). A page the device
// fails to unmap stays mapped, here as in the device (the backend's unmap is all or nothing):
// `unmap` stops there and returns the pages before it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "timeshare/device/backend.h"

namespace timeshare::pool {

struct SegmentRange {
  std::uintptr_t addr = 0;
  std::size_t bytes = 0;
};

class ExpandableSegment {
 public:
  // Reserves `va_bytes` (rounded up to pages) of address space; nullptr (and `*status` set)
  // when the backend refuses.
  static std::unique_ptr<ExpandableSegment> create(device::Backend& backend,
                                                   device::Stream stream, std::size_t va_bytes,
                                                   std::size_t page_bytes,
                                                   device::Status* status);
  ~ExpandableSegment();
  ExpandableSegment(const ExpandableSegment&) = delete;
  ExpandableSegment& operator=(const ExpandableSegment&) = delete;

  // Maps every page touching `range` (range.addr must be page-aligned). Returns the range
  // mapped (whole pages, possibly larger than asked), or bytes == 0 when the device refused.
  SegmentRange map(SegmentRange range);
  // Unmaps the pages lying entirely inside `range`; returns those unmapped (bytes == 0: none),
  // from the first up to a page the device failed to unmap (last_status() then says why).
  SegmentRange unmap(SegmentRange range);

  std::uintptr_t base() const noexcept { return base_; }
  std::size_t size_bytes() const noexcept { return num_pages_ * page_bytes_; }
  std::size_t page_bytes() const noexcept { return page_bytes_; }
  std::size_t mapped_bytes() const noexcept { return mapped_pages_ * page_bytes_; }
  device::Stream stream() const noexcept { return stream_; }
  device::Status last_status() const noexcept { return last_status_; }

 private:
  ExpandableSegment(device::Backend& backend, device::Stream stream, std::uintptr_t base,
                    std::size_t num_pages, std::size_t page_bytes);
  // Unmaps the mapped pages of [begin, end) in order, stopping at the first the device fails
  // to unmap (it stays mapped); returns the index of that page, or `end`.
  std::size_t unmap_pages(std::size_t begin, std::size_t end);
  SegmentRange pages_range(std::size_t begin, std::size_t end) const noexcept {
    return {base_ + begin * page_bytes_, (end - begin) * page_bytes_};
  }

  device::Backend& backend_;
  const device::Stream stream_;
  const std::uintptr_t base_;
  const std::size_t num_pages_;
  const std::size_t page_bytes_;
  std::vector<bool> page_mapped_;
  std::size_t mapped_pages_ = 0;
  device::Status last_status_ = device::Status::kOk;
};

}  // namespace timeshare::pool
