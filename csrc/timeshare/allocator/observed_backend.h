// ObservedBackend — an adaptor over a device::Backend (as RMM wraps a resource) that keeps
// the device's own view of what is mapped, for the allocator's snapshot, cacheInfo and history.
//
// Every call goes straight to the wrapped backend. The calls that give memory to the device's
// address space or take it back (reserve/release: a cudaMalloc'd segment; map/map_alias/unmap:
// granules under a virtual range) also update a map of mapped spans, each tagged with the pool
// that asked for it (set_owner, which the Allocator sets before it calls into a pool), and are
// reported to a sink as torch's trace actions (segment_alloc, segment_free, segment_map,
// segment_unmap). Nothing is reported for a call that failed, so the span map always equals
// what the device really has mapped.
//
// Not thread-safe: the Allocator calls it under its mutex, like the pools.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "timeshare/device/backend.h"

namespace timeshare {

// torch's MempoolId_t: {0, 0} is the default pool; CUDA graphs and torch.cuda.MemPool use others.
using PoolId = std::pair<std::uint64_t, std::uint64_t>;
inline constexpr PoolId kDefaultPoolId{0, 0};

enum class SegmentAction : std::uint8_t { kAlloc, kFree, kMap, kUnmap };

struct SegmentEvent {
  SegmentAction action = SegmentAction::kMap;
  std::uintptr_t addr = 0;
  std::size_t bytes = 0;
  PoolId pool = kDefaultPoolId;
};

class ObservedBackend final : public device::Backend {
 public:
  explicit ObservedBackend(std::unique_ptr<device::Backend> inner);

  struct Span {
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;
    PoolId pool = kDefaultPoolId;
  };
  // Mapped spans in address order, adjacent spans of one pool merged.
  std::vector<Span> spans() const;
  // The mapped span holding `addr`, if any.
  bool span_of(std::uintptr_t addr, Span* out) const;
  std::size_t mapped_bytes() const noexcept { return mapped_bytes_; }

  void set_owner(PoolId pool) noexcept { owner_ = pool; }
  // While a stream captures a CUDA graph (torch's markCaptureBegin/End; nested captures
  // count), no event is queried and no host waits for the device, as PyTorch's allocator skips
  // its event processing then: query() answers "not yet" (a pending block stays pending) and
  // the synchronize calls fail without reaching the device (the pools keep the memory).
  // Mapping stays allowed, as PyTorch's cudaMalloc during capture is.
  void set_capturing(bool begin) noexcept { captures_ += begin ? 1 : (captures_ > 0 ? -1 : 0); }
  bool capturing() const noexcept { return captures_ > 0; }
  std::uint64_t calls_held_for_capture() const noexcept { return held_for_capture_; }
  // Called after each successful segment call; null = none (the default).
  void set_sink(std::function<void(const SegmentEvent&)> sink) { sink_ = std::move(sink); }
  device::Backend& inner() noexcept { return *inner_; }

  // ---- device::Backend: forwarded ------------------------------------------------------
  const char* name() const noexcept override { return inner_->name(); }
  int device_index() const noexcept override { return inner_->device_index(); }
  device::Status reserve(std::size_t bytes, void** out) override;
  device::Status release(void* ptr, std::size_t bytes) override;
  device::MemInfo mem_info() override { return inner_->mem_info(); }
  bool supports_virtual_memory() const noexcept override {
    return inner_->supports_virtual_memory();
  }
  std::size_t granule_bytes() const noexcept override { return inner_->granule_bytes(); }
  device::Status va_reserve(std::size_t bytes, void** base) override {
    return inner_->va_reserve(bytes, base);
  }
  device::Status va_release(void* base, std::size_t bytes) override {
    return inner_->va_release(base, bytes);
  }
  device::Status map(void* addr, std::size_t bytes) override;
  device::Status unmap(void* addr, std::size_t bytes) override;
  device::Status map_alias(void* addr, const void* from, std::size_t bytes) override;
  // Shared memory is not the pool's: neither exports nor imports enter the span map.
  device::Status export_granules(const void* addr, std::size_t bytes,
                                 std::vector<int>* fds) override {
    return inner_->export_granules(addr, bytes, fds);
  }
  device::Status import_granules(const std::vector<int>& fds, void** base) override {
    return inner_->import_granules(fds, base);
  }
  device::Status release_import(void* base) override { return inner_->release_import(base); }
  device::Status create_stream(device::Stream* out) override { return inner_->create_stream(out); }
  device::Status destroy_stream(device::Stream s) override { return inner_->destroy_stream(s); }
  device::Status create_event(device::Event* out) override { return inner_->create_event(out); }
  device::Status destroy_event(device::Event e) override { return inner_->destroy_event(e); }
  device::Status record(device::Event e, device::Stream s) override { return inner_->record(e, s); }
  bool query(device::Event e) override {
    if (captures_ > 0) {
      ++held_for_capture_;
      return false;
    }
    return inner_->query(e);
  }
  device::Status stream_wait(device::Stream s, device::Event e) override {
    return inner_->stream_wait(s, e);
  }
  device::Status synchronize_event(device::Event e) override {
    return captures_ > 0 ? held() : inner_->synchronize_event(e);
  }
  device::Status synchronize_stream(device::Stream s) override {
    return captures_ > 0 ? held() : inner_->synchronize_stream(s);
  }
  device::Status synchronize_device() override {
    return captures_ > 0 ? held() : inner_->synchronize_device();
  }
  device::Status copy_async(void* dst, const void* src, std::size_t bytes, device::CopyKind kind,
                            device::Stream s) override {
    return inner_->copy_async(dst, src, bytes, kind, s);
  }
  device::Status host_alloc_pinned(std::size_t bytes, void** out) override {
    return inner_->host_alloc_pinned(bytes, out);
  }
  device::Status host_free_pinned(void* ptr) override { return inner_->host_free_pinned(ptr); }
  std::uint64_t now_ns() override { return inner_->now_ns(); }
  std::string last_error() const override { return inner_->last_error(); }

 private:
  struct Piece {
    std::size_t bytes = 0;
    PoolId pool = kDefaultPoolId;
  };
  device::Status held() noexcept {
    ++held_for_capture_;
    return device::Status::kError;
  }
  void add(std::uintptr_t addr, std::size_t bytes, SegmentAction action);
  void remove(std::uintptr_t addr, std::size_t bytes, SegmentAction action);

  std::unique_ptr<device::Backend> inner_;
  std::map<std::uintptr_t, Piece> pieces_;  // by start address; never overlapping
  std::size_t mapped_bytes_ = 0;
  PoolId owner_ = kDefaultPoolId;
  int captures_ = 0;
  std::uint64_t held_for_capture_ = 0;
  std::function<void(const SegmentEvent&)> sink_;
};

}  // namespace timeshare
