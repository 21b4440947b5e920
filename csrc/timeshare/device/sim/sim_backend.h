// SimBackend — a device modelled in host memory with a virtual clock.
//
// Memory: a capacity in bytes shared by plain reservations and mapped granules. With
// `backing = false` the device addresses are fake (never dereferenceable) and nothing is
// allocated: replays of multi-GiB traces cost nothing. With `backing = true` every reservation
// is real host memory, virtual ranges are mmap'ed PROT_NONE and granules become readable and
// writable only while mapped, so a use of unmapped memory faults as it would on a GPU.
//
// Time: a virtual clock in nanoseconds that moves only when told (advance, set_now) or when the
// host waits (synchronize_*). Each stream is a queue whose work completes in order: a simulated
// kernel (enqueue_work) or a copy occupies the stream from max(now, stream tail) for its
// duration. Copies take latency + bytes / bandwidth for their direction, and their bytes move
// when the clock passes their completion, so code that reads a copy's destination before
// waiting on it reads stale data here too. An event recorded on a stream completes when the
// stream's work queued before it completes.
//
// Faults: fail the Nth reserve/map, the Nth copy, or the Nth pinned allocation from now.
//
// Thread-safe: one mutex guards all state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <queue>
#include <unordered_map>
#include <vector>

#include "timeshare/common/units.h"
#include "timeshare/device/backend.h"

namespace timeshare::device {

struct SimOptions {
  std::size_t capacity_bytes = 80 * kGiB;
  bool backing = false;
  std::size_t pinned_capacity_bytes = 64 * kGiB;
  std::size_t granule_bytes = 2 * kMiB;
  double h2d_bytes_per_ns = 25.0;    // PCIe 4.0 x16, about 25 GB/s achieved
  double d2h_bytes_per_ns = 25.0;
  double d2d_bytes_per_ns = 1500.0;  // HBM-class device copies
  std::uint64_t copy_latency_ns = 5'000;
};

struct SimCounters {
  std::size_t reserved_bytes = 0;       // plain reservations + mapped granules
  std::size_t peak_reserved_bytes = 0;
  std::uint64_t reserve_calls = 0;      // reserve + map calls that succeeded
  std::uint64_t release_calls = 0;      // release + unmap calls
  std::size_t pinned_bytes = 0;
  std::uint64_t copies = 0;
  std::size_t copied_bytes = 0;
};

class SimBackend final : public Backend {
 public:
  explicit SimBackend(SimOptions options = {}, int device_index = 0);
  ~SimBackend() override;
  SimBackend(const SimBackend&) = delete;
  SimBackend& operator=(const SimBackend&) = delete;

  const char* name() const noexcept override { return "sim"; }
  int device_index() const noexcept override { return device_index_; }

  Status reserve(std::size_t bytes, void** out) override;
  Status release(void* ptr, std::size_t bytes) override;
  MemInfo mem_info() override;

  bool supports_virtual_memory() const noexcept override { return true; }
  std::size_t granule_bytes() const noexcept override { return options_.granule_bytes; }
  Status va_reserve(std::size_t bytes, void** base) override;
  Status va_release(void* base, std::size_t bytes) override;
  Status map(void* addr, std::size_t bytes) override;
  Status unmap(void* addr, std::size_t bytes) override;

  Status create_stream(Stream* out) override;
  Status destroy_stream(Stream s) override;
  Status create_event(Event* out) override;
  Status destroy_event(Event e) override;
  Status record(Event e, Stream s) override;
  bool query(Event e) override;
  Status stream_wait(Stream s, Event e) override;
  Status synchronize_event(Event e) override;
  Status synchronize_stream(Stream s) override;
  Status synchronize_device() override;

  Status copy_async(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                    Stream s) override;
  Status host_alloc_pinned(std::size_t bytes, void** out) override;
  Status host_free_pinned(void* ptr) override;

  std::uint64_t now_ns() override;
  std::string last_error() const override;

  // ---- simulation controls ------------------------------------------------------------------
  void enqueue_work(Stream s, std::uint64_t duration_ns);  // a kernel of that length on s
  void advance(std::uint64_t ns);                          // move the clock forward
  void set_now(std::uint64_t ns);                          // never moves backwards
  std::uint64_t stream_tail_ns(Stream s);                  // when s's queued work completes
  void fail_reserve_at(std::uint64_t nth);  // nth reserve/map from now fails (1 = next)
  void fail_copy_at(std::uint64_t nth);
  void fail_pinned_at(std::uint64_t nth);
  SimCounters counters() const;
  const SimOptions& options() const noexcept { return options_; }

 private:
  struct Range {
    std::size_t bytes = 0;
    std::vector<bool> mapped;  // one flag per granule
  };
  struct PendingCopy {
    std::uint64_t done_ns;
    std::uint64_t seq;
    void* dst;
    const void* src;
    std::size_t bytes;
    bool operator>(const PendingCopy& o) const noexcept {
      return done_ns != o.done_ns ? done_ns > o.done_ns : seq > o.seq;
    }
  };

  Status fail(Status s, std::string message);
  bool take_fault(std::uint64_t& countdown);
  Status charge(std::size_t bytes);  // capacity check + counters; lock held
  void uncharge(std::size_t bytes);
  std::uint64_t& tail(Stream s);
  void run_until(std::uint64_t ns);  // complete copies due by ns; lock held
  void* next_fake(std::size_t bytes, std::size_t align);
  Range* find_range(void* addr, std::size_t bytes, std::size_t* first_granule);

  const SimOptions options_;
  const int device_index_;
  mutable std::mutex mu_;
  std::uint64_t now_ns_ = 0;
  SimCounters counters_;
  std::uintptr_t fake_next_;
  std::unordered_map<void*, std::size_t> reservations_;
  std::map<std::uintptr_t, Range> ranges_;
  std::unordered_map<void*, std::size_t> pinned_;
  std::unordered_map<Stream, std::uint64_t> stream_tail_ns_;
  Stream next_stream_ = 1'000'000;
  std::unordered_map<Event, std::uint64_t> events_;  // event -> completion time
  Event next_event_ = 1;
  std::priority_queue<PendingCopy, std::vector<PendingCopy>, std::greater<>> copies_;
  std::uint64_t copy_seq_ = 0;
  std::uint64_t reserve_fault_ = 0;  // countdowns; 0 = none armed
  std::uint64_t copy_fault_ = 0;
  std::uint64_t pinned_fault_ = 0;
};

}  // namespace timeshare::device
