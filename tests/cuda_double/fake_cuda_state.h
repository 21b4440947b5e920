// fake_cuda_state.h — the model behind the CUDA driver test double (internal to libfakecuda).
//
// One process-wide State guarded by one mutex; every driver entry point (fake_cuda.cpp) takes
// the lock, counts the call, returns an armed failure if there is one, checks the calling
// thread's current context where the real driver needs one, then validates its arguments
// against the model. Memory is real host memory so copies move real bytes:
//   - cuMemAlloc ranges and pinned host ranges are anonymous mappings;
//   - an address reservation is a PROT_NONE mapping; a physical handle (cuMemCreate) is a
//     memfd; cuMemMap maps the memfd into the reservation (still PROT_NONE), cuMemSetAccess
//     makes it readable and writable and records which devices may touch it, cuMemUnmap puts
//     PROT_NONE anonymous memory back. A handle released while mapped is freed at its last
//     unmap, as the driver defers it.
// Streams are queues of operations (copies, event markers, waits on events, test kernels) that
// run in order when the host synchronizes, queries (eager mode) or drains; a wait runs the
// awaited stream up to the awaited marker first. Operations enqueued later never run before
// earlier ones on the same stream, and an event completes when its marker runs.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

struct CUctx_st {
  int device = 0;
};

namespace fakecuda {

inline constexpr int kMaxDevices = 8;
inline constexpr int kDefaultDevices = 2;
inline constexpr std::size_t kMiB = std::size_t{1} << 20;
inline constexpr std::size_t kGranuleBytes = 2 * kMiB;
inline constexpr std::size_t kDefaultCapacityBytes = 1024 * kMiB;
inline constexpr std::size_t kDefaultPinnedCapacityBytes = 256 * kMiB;
inline constexpr std::uint64_t kFirstUserStream = 1000;  // ids below: legacy default streams
inline constexpr std::uintptr_t kStreamHandleBase = 0x5100'0000'0000;
inline constexpr std::uintptr_t kEventHandleBase = 0x5200'0000'0000;
inline constexpr std::uintptr_t kHandleStride = 16;

struct Op {
  enum class Kind : std::uint8_t { kCopy, kMarker, kWait, kKernel };
  Kind kind = Kind::kKernel;
  std::uint64_t id = 0;  // global enqueue order
  int device = 0;        // device of the context that enqueued it (whose access is checked)
  std::uintptr_t dst = 0;
  std::uintptr_t src = 0;
  std::size_t bytes = 0;
  int fill = 0;
  CUresult fault = CUDA_SUCCESS;
  std::uint64_t event = 0;        // marker
  std::uint64_t wait_stream = 0;  // wait: run this stream up to wait_op
  std::uint64_t wait_op = 0;
};

struct Stream {
  int device = 0;
  std::deque<Op> queue;
};

struct Event {
  int device = 0;
  std::uint64_t recorded_op = 0;  // 0: never recorded
  std::uint64_t record_stream = 0;
  std::uint64_t completed_op = 0;
};

struct Alloc {  // cuMemAlloc and cuMemHostAlloc ranges
  std::size_t bytes = 0;
  std::size_t mmap_bytes = 0;
  int device = 0;
};

struct Handle {  // cuMemCreate
  int device = 0;
  std::size_t bytes = 0;
  int fd = -1;
  int maps = 0;
  bool released = false;
  bool rdma = false;  // created with allocFlags.gpuDirectRDMACapable
  bool exportable = false;  // created with requestedHandleTypes POSIX_FILE_DESCRIPTOR
  bool imported = false;    // cuMemImportFromShareableHandle: memory of another handle, uncharged
};

struct Mapping {
  std::size_t bytes = 0;
  std::uint64_t handle = 0;
  unsigned access_mask = 0;  // bit d: device d may read and write
  // The flags cuMemSetAccess last set for each device (CU_MEM_ACCESS_FLAGS_PROT_*).
  unsigned char access_flags[kMaxDevices] = {};
};

struct Reservation {
  std::size_t bytes = 0;
  std::uintptr_t mmap_base = 0;
  std::size_t mmap_bytes = 0;
  std::map<std::uintptr_t, Mapping> maps;  // by start address
};

struct Armed {
  unsigned skip = 0;
  unsigned times = 1;  // calls that fail, one after another
  CUresult code = CUDA_SUCCESS;
};

struct State {
  std::mutex mu;
  bool initialized = false;
  int devices = kDefaultDevices;
  std::size_t capacity_bytes[kMaxDevices] = {};
  std::size_t used_bytes[kMaxDevices] = {};
  bool vmm[kMaxDevices] = {};
  bool rdma_vmm[kMaxDevices] = {};  // CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED
  bool posix_fd[kMaxDevices] = {};  // CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
  bool peer[kMaxDevices][kMaxDevices] = {};
  CUresult sticky[kMaxDevices] = {};
  int ctx_refs[kMaxDevices] = {};
  std::size_t pinned_capacity_bytes = kDefaultPinnedCapacityBytes;
  std::size_t pinned_used_bytes = 0;
  bool lazy = false;

  std::map<std::uintptr_t, Alloc> allocs;
  std::map<std::uintptr_t, Alloc> pinned;
  std::map<std::uintptr_t, Reservation> reservations;
  std::unordered_map<std::uint64_t, Handle> handles;
  std::uint64_t next_handle = 1;
  std::map<std::uint64_t, Stream> streams;
  std::uint64_t next_stream = kFirstUserStream;
  std::unordered_map<std::uint64_t, Event> events;
  std::uint64_t next_event = 1;
  std::uint64_t next_op = 1;

  std::map<std::string, Armed> armed;
  std::unordered_map<std::string, std::uint64_t> calls;
  std::uint64_t access_descriptors = 0;  // CUmemAccessDesc entries cuMemSetAccess was given
  std::deque<std::string> violations;
};

State& state();
CUctx_st* primary_context(int device);  // null for a bad index
CUctx_st*& current_context();           // the calling thread's
void reset_locked(State& s);

// Counts the call; returns CUDA_ERROR_NOT_INITIALIZED before cuInit, or an armed failure.
CUresult enter(State& s, const char* function);
// enter() plus: a current context is required (violation otherwise); its sticky error, if any.
CUresult enter_ctx(State& s, const char* function);
CUresult violation(State& s, CUresult code, const std::string& what);

// Whether the device `device` may touch [addr, addr+bytes) with a copy; `why` when not.
bool accessible(State& s, std::uintptr_t addr, std::size_t bytes, int device, std::string* why);
// Whether queued work still touches [addr, addr+bytes); counts a violation and runs all queued
// work when it does (memory is then freed safely: the violation is the loud signal).
void check_no_pending(State& s, std::uintptr_t addr, std::size_t bytes, const char* function);

std::uint64_t stream_id(State& s, CUstream h, bool* ok);  // null: the context's default stream
CUstream stream_handle(std::uint64_t id);
std::uint64_t event_id(CUevent h);
CUevent event_handle(std::uint64_t id);

void enqueue(State& s, std::uint64_t stream, Op op);
void run_stream(State& s, std::uint64_t stream, std::uint64_t up_to_op);
void run_device(State& s, int device);
void run_all(State& s);
bool event_done(const Event& e);

void free_handle(State& s, std::uint64_t id);  // closes its memfd; uncharges its device

}  // namespace fakecuda

// ---- helpers for the entry points ---------------------------------------------------------------

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

// Takes the lock, counts the call and returns early with an armed failure (or before cuInit).
#define FAKE_ENTER(name)                                  \
  ::fakecuda::State& s = ::fakecuda::state();             \
  std::lock_guard lock(s.mu);                             \
  if (CUresult r_ = ::fakecuda::enter(s, name); r_ != CUDA_SUCCESS) return r_

// FAKE_ENTER plus a current context (and its sticky error).
#define FAKE_ENTER_CTX(name)                              \
  ::fakecuda::State& s = ::fakecuda::state();             \
  std::lock_guard lock(s.mu);                             \
  if (CUresult r_ = ::fakecuda::enter_ctx(s, name); r_ != CUDA_SUCCESS) return r_

namespace fakecuda {

inline int current_device() { return current_context()->device; }
inline bool granular(std::size_t v) { return v % kGranuleBytes == 0; }
void* map_anonymous(std::size_t bytes, int prot);  // null on failure
std::size_t page_round(std::size_t bytes);

}  // namespace fakecuda
