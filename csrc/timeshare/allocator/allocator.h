// allocator/ — one Allocator per device: composes a device backend, a pool and a predictor.
//
// Glossary (see also csrc/timeshare/README.md):
//   block     a range of device memory handed to PyTorch for one tensor storage
//   segment   a range obtained from the device in one reserve call (or a mapped granule run)
//   granule   the 2 MiB unit of physical memory mapped into a virtual range
//   clock     the allocator's own time: every malloc and every free is one tick
//   lifespan  ticks between a block's malloc and its free; the predictor estimates it at malloc
//   budget    a cap on reserved device memory; above it activations are spilled
//   spill     moving a saved activation to pinned host memory (then SSD) until backward
//   restore   bringing it back, on a copy stream, before backward needs it
//
// The Allocator is the thread-safe front: one mutex serialises the pool and the predictor (both
// are single-threaded by design and cheap on the hot path). It never throws on the malloc path:
// out of memory returns nullptr with a message ready for the caller (the C entry points turn it
// into PyTorch's OutOfMemoryError).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "timeshare/allocator/observed_backend.h"
#include "timeshare/common/options.h"
#include "timeshare/common/stats.h"
#include "timeshare/device/backend.h"
#include "timeshare/pool/layout_plan.h"
#include "timeshare/pool/pool.h"
#include "timeshare/pool/temporal/temporal_options.h"
#include "timeshare/predict/async_predictor.h"
#include "timeshare/predict/predictor.h"
#include "timeshare/predict/predictor_options.h"

namespace timeshare {

namespace pool {
class TemporalPool;
}  // namespace pool

struct AllocatorCounters {
  std::uint64_t clock_events = 0;     // mallocs + frees seen
  std::uint64_t unknown_frees = 0;    // frees of pointers this allocator did not hand out
  std::uint64_t zero_size_mallocs = 0;
  std::uint64_t record_streams = 0;
  std::uint64_t empty_cache_calls = 0;
  std::uint64_t spill_retries = 0;    // allocations retried after the spill engine made room
};

// Decides, per allocation, whether it goes to a private pool (see Allocator::begin_allocate_to_pool):
// torch passes a predicate on the stream (a capturing stream, or "this thread" for MemPool).
using StreamFilter = std::function<bool(device::Stream)>;

class Allocator {
 public:
  // Builds the pool and predictor that `options` name on top of `backend`.
  Allocator(const Options& options, std::unique_ptr<device::Backend> backend);
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // A block of at least `bytes` for `stream`; nullptr for 0 bytes, or when out of memory (then
  // last_oom_message() says why).
  void* malloc(std::size_t bytes, device::Stream stream);
  // False (and a logged warning) for a pointer this allocator did not hand out.
  bool free(void* ptr);
  // False when `ptr` is not a live block of this allocator.
  bool record_stream(void* ptr, device::Stream stream);
  void empty_cache();
  // Cap reserved memory at `fraction` of the device's total (torch's memory fraction).
  void set_memory_fraction(double fraction);
  // The cap set_memory_fraction set, as a fraction of the device's total (1.0: none).
  double memory_fraction() const;

  // ---- private pools (CUDA graphs, torch.cuda.MemPool), with torch's semantics -----------
  // A private pool is a pool of its own on the same device: memory freed inside it is reused
  // only by it, until release_pool drops its last reference and its last block is freed; then
  // it is destroyed and its memory goes back to the device. Every call returns "" or one line.
  //   create_or_incref_pool: a new pool (use count 1) or one more reference to it.
  //   begin_allocate_to_pool: from now on, allocations whose stream `filter` accepts go to
  //     `id` (created or referenced as above); end_allocate_to_pool stops that routing.
  //   release_pool: drops a reference (MemPool's destructor, a graph's reset).
  std::string create_or_incref_pool(PoolId id);
  std::string begin_allocate_to_pool(PoolId id, StreamFilter filter);
  std::string end_allocate_to_pool(PoolId id);
  std::string release_pool(PoolId id);
  int pool_use_count(PoolId id) const;
  // torch's MemPool(use_on_oom=True): an allocation outside the pool that finds no memory may
  // take a block from it.
  std::string set_use_on_oom(PoolId id, bool use_on_oom);
  // A stream of this device begins / ends capturing a CUDA graph (ObservedBackend::
  // set_capturing: no event query, no host wait meanwhile).
  void set_capturing(bool begin);
  // Event queries and host waits not made because a capture was under way.
  std::uint64_t calls_held_for_capture() const;
  // Live blocks of pool `id` (kDefaultPoolId: the default pool), unordered.
  std::vector<void*> pool_live_blocks(PoolId id) const;
  // Releases the cached memory of pool `id` only.
  void empty_cache(PoolId id);

  // ---- CUDA IPC: a live block's memory mapped by another process (allocator_ipc.cpp) -------
  // The handle (ipc_handle.h) of the block that starts at `ptr`, for open_ipc in another
  // process, and where the block starts in the memory the handle maps; "" with `why` where it
  // cannot be shared (not a live block's start, a backend without virtual memory). The
  // memory's descriptors stay open until the block is freed; sharing it again gives the same
  // handle.
  std::string share_ipc(void* ptr, std::size_t* offset, std::string* why);
  // Maps the memory a handle from share_ipc names (of another process, or of this one) at a new
  // address on this device; nullptr with `why` when it cannot. close_ipc gives it back.
  void* open_ipc(const std::string& handle, std::string* why);
  bool close_ipc(void* base);

  // ---- what is mapped, for snapshots and cacheInfo ---------------------------------------
  struct BlockView {
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;           // rounded size (the span it occupies)
    std::size_t requested_bytes = 0;
    bool allocated = false;          // false: free space inside the segment
  };
  struct SegmentView {
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;
    PoolId pool = kDefaultPoolId;
    device::Stream stream = device::kDefaultStream;  // of its first live block
    std::vector<BlockView> blocks;  // in address order, covering the segment
  };
  // Mapped memory as segments (runs mapped by one pool), with their blocks and free gaps.
  std::vector<SegmentView> segments() const;
  // The largest run of mapped memory that holds no live block: an upper bound of what a
  // malloc could get without a new device call (torch's cacheInfo, which cuDNN's autotuner
  // uses to size its workspace).
  std::size_t largest_cached_bytes() const;
  // The mapped run holding `ptr` (getBaseAllocation); false when `ptr` is not mapped here.
  bool base_allocation(const void* ptr, std::uintptr_t* base, std::size_t* bytes) const;
  // Mapping changes as they happen (segment_map/unmap in torch's memory history); called
  // under the allocator's lock: it must not call back into the allocator.
  void set_segment_sink(std::function<void(const SegmentEvent&)> sink);
  // Per private pool, its reserved bytes (torch's reserved_bytes_by_private_pools).
  std::vector<std::pair<PoolId, StatArray>> private_pool_reserved() const;

  // All pools together (the default one and every private pool).
  DeviceStats stats() const;
  predict::PredictorStats predictor_stats() const;
  AllocatorCounters counters() const;
  pool::ReleaseStats release_stats() const;
  void reset_peak_stats();
  void reset_accumulated_stats();
  std::string last_oom_message() const;
  // Live blocks as (address, bytes), for tests and the stress checker.
  std::vector<std::pair<std::uintptr_t, std::size_t>> live_blocks() const;

  const Options& options() const noexcept { return options_; }
  device::Backend& backend() noexcept { return *backend_; }
  const char* pool_name() const noexcept { return pool_->name(); }
  // The stream a live block was allocated on and its requested size (either may be null);
  // false when `ptr` is not live here.
  bool block_info(const void* ptr, device::Stream* stream, std::size_t* bytes) const;
  const char* predictor_name() const noexcept;

 private:
  struct PrivatePool {
    PoolId id;
    std::unique_ptr<pool::Pool> pool;
    int use_count = 1;
    std::size_t live_blocks = 0;
    bool use_on_oom = false;
  };
  struct Route {
    PoolId id;
    PrivatePool* pool;
    StreamFilter filter;
  };
  struct Live {
    std::uint64_t alloc_id;
    std::size_t bytes;
    device::Stream stream;
    PrivatePool* pool;  // nullptr: the default pool
  };
  struct Exported {
    std::string handle;
    std::size_t offset = 0;
    std::vector<int> fds;  // open while the block lives
  };
  std::string oom_message(std::size_t bytes, device::Stream stream) const;
  // Closes the descriptors of a block shared with share_ipc (it was freed); mu_ held.
  void forget_export(void* ptr);
  DeviceStats stats_locked() const;
  pool::Pool& pool_of(PrivatePool* p) noexcept { return p ? *p->pool : *pool_; }
  const pool::Pool& pool_of(const PrivatePool* p) const noexcept { return p ? *p->pool : *pool_; }
  // Selects the pool whose mappings the backend attributes from now on.
  void own(PrivatePool* p) noexcept { backend_->set_owner(p ? p->id : kDefaultPoolId); }
  PrivatePool* route_for(device::Stream stream) const;
  // Allocates from `p` and records the block; nullptr when `p` has no room.
  void* allocate_in(PrivatePool* p, std::size_t bytes, device::Stream stream,
                    const pool::AllocHint& hint);
  // Destroys a private pool nobody references any more once its last block is gone.
  void drop_if_unused(PrivatePool* p);
  void track_merged_peaks() noexcept;

  const Options options_;
  std::unique_ptr<ObservedBackend> backend_;
  std::unique_ptr<pool::Pool> pool_;  // the default pool
  std::map<PoolId, std::unique_ptr<PrivatePool>> private_;
  std::vector<Route> routes_;
  // Peaks of all pools together, tracked from the first private pool on (before it, the
  // default pool's own statistics are the whole).
  DeviceStats merged_peaks_;
  bool merged_peaks_valid_ = false;
  DeviceStats retired_;  // totals of destroyed private pools (their currents counted as freed)
  std::unique_ptr<predict::LifespanPredictor> predictor_;  // null under the torch policy
  mutable std::mutex mu_;
  std::unordered_map<void*, Live> live_;
  std::uint64_t next_alloc_id_ = 0;
  AllocatorCounters counters_;
  std::string last_oom_;
  std::unordered_map<void*, Exported> exported_;  // live blocks shared with share_ipc
  std::unordered_set<void*> imported_;            // mappings open_ipc made
};

// ---- the factory (factory.cpp): the one recipe for every pool and predictor stack -------------
// The allocator, the replay's policies (replay/policies.cpp) and the tools (csrc/tools/) build
// their pools and predictor stacks here, so that each runs what the allocator runs.

// A pool and the predictor stack that feeds it: what an Allocator runs.
struct Stack {
  std::unique_ptr<pool::Pool> pool;
  std::unique_ptr<predict::LifespanPredictor> predictor;  // null under the torch policy
};
// The pool and predictor stack `options` select on `backend`. With option `plan` (timeshare
// policy), the TemporalPool follows the PlanBoard that the stack's layout planner publishes on.
Stack make_stack(const Options& options, device::Backend& backend, bool deterministic);

// Builds the pool `options` select: CachingPool for policy torch, TemporalPool for timeshare
// (a CachingPool named "temporal(fallback:torch)" where the backend has no virtual memory).
std::unique_ptr<pool::Pool> make_pool(const Options& options, device::Backend& backend);
// The same pool as a private pool (CUDA graphs, MemPool): it keeps every granule it mapped
// until empty_cache(id) or its destruction, because a graph replays into the addresses its
// capture freed (torch's private pools release nothing before releasePool either).
std::unique_ptr<pool::Pool> make_private_pool(const Options& options, device::Backend& backend);
// The TemporalPool `options` select on `backend`, whatever the policy (make_pool's, and the
// replay's timeshare policies, which read its plan statistics).
std::unique_ptr<pool::TemporalPool> make_temporal_pool(const Options& options,
                                                       device::Backend& backend);
// The TemporalPool's options that `options` select on `backend` (make_temporal_pool's).
pool::TemporalPoolOptions temporal_pool_options(const Options& options,
                                                const device::Backend& backend);
// The predictor options (kind, history, LSTM size, retraining, seed) that `options` select.
predict::PredictorOptions predictor_options(const Options& options, bool deterministic);
// Builds the predictor `options` select; null under the torch policy. With a plan board (and
// option `plan`), the predictor's answers also feed a layout planner that publishes there
// (inside the asynchronous feed, so planning runs on the predictor's thread).
std::unique_ptr<predict::LifespanPredictor> make_predictor_for(
    const Options& options, bool deterministic,
    std::shared_ptr<pool::PlanBoard> board = nullptr);
// The layers make_predictor_for puts around a predictor (null stays null): a PlanningPredictor
// publishing on `board` when there is one and option `plan` is on (allocator/layout_planner.h),
// then, with `async`, an AsyncPredictor feeding it on its own thread (async_feed_options). The
// allocator asks for `async` unless predict_sync (or a deterministic predictor).
std::unique_ptr<predict::LifespanPredictor> make_predictor_stack(
    std::unique_ptr<predict::LifespanPredictor> predictor, const Options& options,
    std::shared_ptr<pool::PlanBoard> board, bool async);
// How make_predictor_stack's AsyncPredictor feeds: the answer board is on only when one of the
// pool's options uses lifespans (free_forecast).
predict::AsyncFeedOptions async_feed_options(const Options& options);

}  // namespace timeshare
