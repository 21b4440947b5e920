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
// Work in flight (the strict model). A GPU runs behind the host: when PyTorch frees a block, the
// kernels that use it may still be queued on its stream (and on the streams it was
// record_stream-ed to), and cuMemUnmap does not wait for them. The sim keeps, per granule of
// device address space, until when queued work on which stream uses it: `touch` says that work
// queued on a stream uses a range until a time on the virtual clock (the stream's queue then
// ends no earlier, so an event recorded after it completes no earlier either); copies touch
// their device ranges until they complete. Then, where a GPU would crash or corrupt data, the
// sim counts a *device fault* (address, stream, what was done) and logs the first ones: an
// `unmap` of a granule that queued work still uses (on a GPU, the illegal-address fault that
// kills the context, or silent corruption once the range is mapped again). Physical memory
// moves between streams' arenas only by unmap + map, so a hand-over to another stream before
// the first one's work completed is caught at its unmap. Pending copies into an unmapped range
// are dropped (their bytes never land), as the GPU's would fault.
// `release` (cudaFree) synchronises the device first, as cudaFree does, and counts that wait.
// Every host wait (synchronize_*, and release's implicit one) is counted in `waits`.
//
// map_alias maps the physical memory of mapped granules at a second address (cuMemMap of the
// same handle); it counts against capacity once and goes back with its last mapping.
//
// Faults: fail the Nth reserve/map, the Nth copy, or the Nth pinned allocation from now.
//
// Thread-safe: one mutex guards all state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
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
  std::uint64_t device_faults = 0;      // see "Work in flight" above
  std::uint64_t waits = 0;              // host synchronisations (incl. release's implicit one)
};

// One device fault: what was done to memory that queued work still used.
struct SimFault {
  std::uintptr_t addr = 0;           // the granule's address
  Stream stream = kDefaultStream;    // the stream whose work still used it
  const char* what = "";             // "unmap"
  std::uint64_t at_ns = 0;           // virtual time of the fault
  std::uint64_t busy_until_ns = 0;   // when that work completes
};
inline constexpr std::size_t kSimFaultLogEntries = 64;  // faults kept for inspection

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
  Status map_alias(void* addr, const void* from, std::size_t bytes) override;

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
  // Work queued on `s` uses [addr, addr+bytes) until `until_ns` (see "Work in flight").
  void touch(Stream s, const void* addr, std::size_t bytes, std::uint64_t until_ns);
  // The first kSimFaultLogEntries faults, oldest first.
  std::vector<SimFault> faults() const;
  void advance(std::uint64_t ns);                          // move the clock forward
  void set_now(std::uint64_t ns);                          // never moves backwards
  std::uint64_t stream_tail_ns(Stream s);                  // when s's queued work completes
  void fail_reserve_at(std::uint64_t nth);  // nth reserve/map from now fails (1 = next)
  void fail_copy_at(std::uint64_t nth);
  void fail_pinned_at(std::uint64_t nth);
  SimCounters counters() const;
  const SimOptions& options() const noexcept { return options_; }

 private:
  // One flag per granule of a reserved range, in calloc'd memory: a range spans the device's
  // memory (a terabyte on the replay's sim), and calloc of that many bytes is lazily zeroed
  // pages, so reserving one costs no pass over its granules (a GPU's cuMemAddressReserve does
  // none either). `count` is the granules set.
  class GranuleFlags {
   public:
    explicit GranuleFlags(std::size_t n = 0);
    bool test(std::size_t i) const noexcept { return (words_[i / 64] >> (i % 64)) & 1u; }
    void set(std::size_t first, std::size_t n, bool value) noexcept;
    std::size_t count() const noexcept { return count_; }

   private:
    struct Free {
      void operator()(std::uint64_t* p) const noexcept;
    };
    std::unique_ptr<std::uint64_t[], Free> words_;
    std::size_t count_ = 0;
  };
  struct Range {
    std::size_t bytes = 0;
    GranuleFlags mapped;
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
  // Per granule of device address space: until when which streams' queued work uses it.
  struct Busy {
    std::uint64_t until_ns[2] = {0, 0};
    Stream stream[2] = {kDefaultStream, kDefaultStream};
  };
  void touch_locked(Stream s, std::uintptr_t addr, std::size_t bytes, std::uint64_t until_ns);
  void fault(const char* what, std::uintptr_t granule_addr, Stream stream,
             std::uint64_t busy_until_ns);
  // Faults for work still using [addr, addr+bytes); forgets that work (the memory is gone).
  void check_unmap(std::uintptr_t addr, std::size_t bytes);
  void drop_copies_into(std::uintptr_t addr, std::size_t bytes);
  void prune_busy();

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
  std::unordered_map<std::uint64_t, Busy> busy_;  // granule index -> work in flight
  // Granules whose physical memory map_alias shares: address -> physical id -> mappings.
  std::unordered_map<std::uintptr_t, std::uint64_t> aliased_;
  std::unordered_map<std::uint64_t, std::uint32_t> phys_refs_;
  std::uint64_t next_phys_ = 1;
  std::size_t busy_prune_at_ = 4096;
  std::vector<SimFault> fault_log_;
};

}  // namespace timeshare::device
