#include "timeshare/pool/caching/expandable_segment.h"

#include "timeshare/common/log.h"

namespace timeshare::pool {

using device::Status;

std::unique_ptr<ExpandableSegment> ExpandableSegment::create(device::Backend& backend,
                                                             device::Stream stream,
                                                             std::size_t va_bytes,
                                                             std::size_t page_bytes,
                                                             Status* status) {
  const std::size_t num_pages = (va_bytes + page_bytes - 1) / page_bytes;
  void* base = nullptr;
  *status = backend.va_reserve(num_pages * page_bytes, &base);
  if (*status != Status::kOk) return nullptr;
  return std::unique_ptr<ExpandableSegment>(new ExpandableSegment(
      backend, stream, reinterpret_cast<std::uintptr_t>(base), num_pages, page_bytes));
}

ExpandableSegment::ExpandableSegment(device::Backend& backend, device::Stream stream,
                                     std::uintptr_t base, std::size_t num_pages,
                                     std::size_t page_bytes)
    : backend_(backend),
      stream_(stream),
      base_(base),
      num_pages_(num_pages),
      page_bytes_(page_bytes),
      page_mapped_(num_pages, false) {}

ExpandableSegment::~ExpandableSegment() {
  for (std::size_t i = 0; i < num_pages_; ++i) {
    if (page_mapped_[i]) unmap_pages(i, i + 1);
  }
  backend_.va_release(reinterpret_cast<void*>(base_), num_pages_ * page_bytes_);
}

SegmentRange ExpandableSegment::map(SegmentRange range) {
  const std::size_t begin = (range.addr - base_) / page_bytes_;
  const std::size_t end = (range.addr + range.bytes - base_ + page_bytes_ - 1) / page_bytes_;
  if (begin >= end || end > num_pages_) return {range.addr, 0};
  for (std::size_t i = begin; i < end; ++i) {
    if (page_mapped_[i]) {  // caller bug: only unmapped ranges are mapped
      last_status_ = Status::kInvalid;
      unmap_pages(begin, i);
      return {range.addr, 0};
    }
    last_status_ = backend_.map(reinterpret_cast<void*>(base_ + i * page_bytes_), page_bytes_);
    if (last_status_ != Status::kOk) {
      unmap_pages(begin, i);  // all or nothing, as torch releases the handles it created
      return {range.addr, 0};
    }
    page_mapped_[i] = true;
    ++mapped_pages_;
  }
  return pages_range(begin, end);
}

SegmentRange ExpandableSegment::unmap(SegmentRange range) {
  const std::size_t begin = (range.addr - base_ + page_bytes_ - 1) / page_bytes_;
  const std::size_t end = (range.addr + range.bytes - base_) / page_bytes_;
  if (begin >= end) return {range.addr, 0};
  // Unmapping does not wait for the GPU: let the segment's stream drain first.
  backend_.synchronize_stream(stream_);
  return pages_range(begin, unmap_pages(begin, end));
}

std::size_t ExpandableSegment::unmap_pages(std::size_t begin, std::size_t end) {
  for (std::size_t i = begin; i < end; ++i) {
    if (!page_mapped_[i]) continue;
    const device::Status st =
        backend_.unmap(reinterpret_cast<void*>(base_ + i * page_bytes_), page_bytes_);
    if (st != device::Status::kOk) {
      last_status_ = st;
      log().warn("expandable segment: unmapping a page at {:#x} failed ({}); it stays mapped",
                 base_ + i * page_bytes_, backend_.last_error());
      return i;
    }
    page_mapped_[i] = false;
    --mapped_pages_;
  }
  return end;
}

}  // namespace timeshare::pool
