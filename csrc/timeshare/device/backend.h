// device/ — the only layer that talks to a GPU runtime.
//
// Everything above this folder (pool/, predict/, spill/, trace/, allocator/) sees a device
// through the narrow `Backend` interface below and nothing else: device memory reserve and
// release (cudaMalloc/cudaFree), virtual address ranges with physically mapped granules (the
// CUDA driver's cuMemAddressReserve/cuMemCreate/cuMemMap, as PyTorch's expandable segments
// use), streams, events, asynchronous copies, pinned host memory and a clock. Two backends
// implement it: `cuda/` on the CUDA runtime and driver, and `sim/`, which models a device in
// host memory with a virtual clock so that the whole allocator is built, tested and
// benchmarked on machines without a GPU.
//
// Handles (streams, events) are opaque 64-bit values. A `Stream` value for the CUDA backend
// is the `cudaStream_t` itself (PyTorch hands us those), with 0 the legacy default stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace timeshare::device {

using Stream = std::uint64_t;  // cudaStream_t on CUDA; an index on sim; 0 = default stream
using Event = std::uint64_t;   // cudaEvent_t on CUDA; an index on sim; 0 = no event

inline constexpr Stream kDefaultStream = 0;
inline constexpr Event kNoEvent = 0;

enum class Status : std::uint8_t {
  kOk = 0,
  kOutOfMemory,   // the device (or the pinned pool) has no room for the request
  kInvalid,       // bad argument: unknown handle, misaligned range, unsupported call
  kError,         // anything else the runtime reported; see Backend::last_error()
};

const char* to_string(Status s) noexcept;

enum class CopyKind : std::uint8_t { kDeviceToHost, kHostToDevice, kDeviceToDevice };

struct MemInfo {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const char* name() const noexcept = 0;  // "cuda" or "sim"
  virtual int device_index() const noexcept = 0;

  // ---- device memory (cudaMalloc / cudaFree) --------------------------------------------
  virtual Status reserve(std::size_t bytes, void** out) = 0;
  virtual Status release(void* ptr, std::size_t bytes) = 0;
  virtual MemInfo mem_info() = 0;

  // ---- virtual memory: reserve an address range once, map physical granules into it -----
  virtual bool supports_virtual_memory() const noexcept = 0;
  virtual std::size_t granule_bytes() const noexcept = 0;  // 2 MiB on CUDA and sim
  virtual Status va_reserve(std::size_t bytes, void** base) = 0;
  virtual Status va_release(void* base, std::size_t bytes) = 0;
  // Map (create + map + set access) physical memory for [addr, addr+bytes); both multiples
  // of granule_bytes() inside a range from va_reserve. Counts against device capacity.
  virtual Status map(void* addr, std::size_t bytes) = 0;
  // Unmaps [addr, addr+bytes); the physical memory goes back to the device when this was its
  // last mapping (see map_alias).
  virtual Status unmap(void* addr, std::size_t bytes) = 0;
  // Maps at [addr, addr+bytes) (unmapped, granule-aligned, inside a range from va_reserve) the
  // physical memory now mapped at [from, from+bytes): both ranges then reach the same memory,
  // and it counts against capacity once. With it, the pool moves memory to another address
  // of the same stream's arena while work queued on that stream still uses the old address
  // (stream order makes the new use safe), and unmaps the old address only once that work is
  // done. kInvalid where unsupported (the default).
  virtual Status map_alias(void* addr, const void* from, std::size_t bytes) {
    (void)addr;
    (void)from;
    (void)bytes;
    return Status::kInvalid;
  }

  // ---- memory shared with another process (CUDA IPC over virtual memory) -------------------
  // A POSIX file descriptor for the physical memory of each granule of [addr, addr+bytes)
  // (mapped, granule-aligned, inside a range from va_reserve), new descriptors the caller owns
  // and closes; another process that holds them (pidfd_getfd) maps the same memory with
  // import_granules. kInvalid where unsupported (the default: the sim has no memory another
  // process could reach).
  virtual Status export_granules(const void* addr, std::size_t bytes, std::vector<int>* fds) {
    (void)addr;
    (void)bytes;
    (void)fds;
    return Status::kInvalid;
  }
  // Maps, at a new address range of fds.size() granules (*base), the physical memory that
  // `fds` (from export_granules, in this or another process) name, readable and writable by
  // this device. The caller keeps the descriptors. All or nothing.
  virtual Status import_granules(const std::vector<int>& fds, void** base) {
    (void)fds;
    *base = nullptr;
    return Status::kInvalid;
  }
  // Unmaps and gives back what import_granules mapped at `base`.
  virtual Status release_import(void* base) {
    (void)base;
    return Status::kInvalid;
  }

  // ---- streams and events -----------------------------------------------------------------
  virtual Status create_stream(Stream* out) = 0;
  virtual Status destroy_stream(Stream s) = 0;
  virtual Status create_event(Event* out) = 0;
  virtual Status destroy_event(Event e) = 0;
  virtual Status record(Event e, Stream s) = 0;          // e completes when s reaches it
  virtual bool query(Event e) = 0;                        // true: completed (or never recorded)
  virtual Status stream_wait(Stream s, Event e) = 0;      // later work on s waits for e
  virtual Status synchronize_event(Event e) = 0;          // host waits for e
  virtual Status synchronize_stream(Stream s) = 0;
  virtual Status synchronize_device() = 0;

  // ---- copies and pinned host memory ------------------------------------------------------
  virtual Status copy_async(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                            Stream s) = 0;
  virtual Status host_alloc_pinned(std::size_t bytes, void** out) = 0;
  virtual Status host_free_pinned(void* ptr) = 0;

  // ---- clock --------------------------------------------------------------------------------
  virtual std::uint64_t now_ns() = 0;  // monotonic; virtual time on sim

  // The message of the last failing call on this thread (empty when none).
  virtual std::string last_error() const = 0;
};

}  // namespace timeshare::device
