// The native route from C++: a LibTorch program's view. timeshare is installed as PyTorch's
// CUDAAllocator on the sim backend (no GPU), and every check goes through c10's own entry points
// (c10::cuda::CUDACachingAllocator::*), which dispatch to the current allocator, as cuDNN,
// CUDA graphs and torch's bindings do. Built only where a CUDA build of torch is given to CMake
// (TIMESHARE_NATIVE_TORCH); one process, one swap: every case shares the installed allocator.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "timeshare/api/c_api.h"
#include "timeshare/torch/native_allocator.h"

namespace cca = c10::cuda::CUDACachingAllocator;
namespace cda = c10::CachingDeviceAllocator;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;

// Installs timeshare once per process (an allocator swap is irreversible).
cca::CUDAAllocator* installed() {
  static cca::CUDAAllocator* a = [] {
    char error[512] = {0};
    REQUIRE(timeshare_configure("backend:sim,sim_capacity:1GiB", error, sizeof error) == 0);
    REQUIRE(timeshare_native_install(error, sizeof error) == 0);
    cca::init(1);
    return cca::get();
  }();
  return a;
}

struct Marker : c10::GatheredContext {
  explicit Marker(int v) : value(v) {}
  int value;
};
std::atomic<int> g_contexts{0};
std::shared_ptr<c10::GatheredContext> make_marker() {
  return std::make_shared<Marker>(++g_contexts);
}

}  // namespace

TEST_CASE("the installed CUDAAllocator is timeshare's", "[native]") {
  cca::CUDAAllocator* a = installed();
  CHECK(a->name() == "timeshare");
  CHECK(timeshare_native_is_current() == 1);
  CHECK(a->initialized());
}

TEST_CASE("statistics through getDeviceStats follow raw_alloc and raw_delete", "[native]") {
  installed();
  const auto before = cca::getDeviceStats(0);
  void* p = cca::raw_alloc(6 * kMiB);
  REQUIRE(p != nullptr);
  const auto during = cca::getDeviceStats(0);
  CHECK(during.allocated_bytes[0].current == before.allocated_bytes[0].current + 6 * kMiB);
  CHECK(during.reserved_bytes[0].current >= during.allocated_bytes[0].current);
  cca::raw_delete(p);
  CHECK(cca::getDeviceStats(0).allocated_bytes[0].current == before.allocated_bytes[0].current);
  cca::resetPeakStats(0);
  const auto reset = cca::getDeviceStats(0);
  CHECK(reset.allocated_bytes[0].peak == reset.allocated_bytes[0].current);
}

TEST_CASE("out of memory throws c10::OutOfMemoryError and calls the observers", "[native]") {
  installed();
  // An observer cannot be detached: it outlives this case, so it holds its own record.
  static std::vector<std::int64_t> devices;
  static std::size_t total = 0;
  cca::attachOutOfMemoryObserver(
      [](std::int64_t device, std::size_t, std::size_t device_total, std::size_t) {
        devices.push_back(device);
        total = device_total;
      });
  CHECK_THROWS_AS(cca::raw_alloc(std::size_t{64} << 30), c10::OutOfMemoryError);
  REQUIRE(devices.size() == 1);
  CHECK(devices[0] == 0);
  CHECK(total == std::size_t{1} << 30);
  CHECK(cca::getDeviceStats(0).num_ooms >= 1);
}

TEST_CASE("cacheInfo is the largest mapped run no block holds", "[native]") {
  installed();
  cca::emptyCache();
  void* p = cca::raw_alloc(5 * kMiB);
  std::size_t largest = 0;
  cca::cacheInfo(0, &largest);
  std::size_t from_snapshot = 0;
  for (const auto& seg : cca::snapshot().segments) {
    for (const auto& b : seg.blocks) {
      if (!b.allocated) from_snapshot = std::max(from_snapshot, b.size);
    }
  }
  CHECK(largest > 0);
  CHECK(largest == from_snapshot);
  cca::raw_delete(p);
  cca::emptyCache();
  cca::cacheInfo(0, &largest);
  CHECK(largest == 0);
}

TEST_CASE("memory history records allocations, frees and mappings with their contexts",
          "[native]") {
  installed();
  cca::emptyCache();  // so that the allocations below map memory (segment_map entries)
  // A tracker cannot be detached: it outlives this case, so it holds its own list.
  auto tracked = std::make_shared<std::vector<cda::TraceEntry::Action>>();
  cca::attachAllocatorTraceTracker([tracked](const cda::TraceEntry& e) {
    tracked->push_back(e.action_);
  });
  cca::recordHistory(true, &make_marker, 1000, cda::RecordContext::ALL, true, {});
  CHECK(cca::isHistoryEnabled());
  void* kept = cca::raw_alloc(3 * kMiB);
  void* gone = cca::raw_alloc(40 * kMiB);
  cca::raw_delete(gone);
  const cca::SnapshotInfo snap = cca::snapshot();
  REQUIRE(!snap.device_traces.empty());
  std::vector<cda::TraceEntry::Action> actions;
  for (const auto& e : snap.device_traces[0]) actions.push_back(e.action_);
  auto count = [&](cda::TraceEntry::Action a) { return std::count(actions.begin(), actions.end(), a); };
  CHECK(count(cda::TraceEntry::ALLOC) == 2);
  CHECK(count(cda::TraceEntry::FREE_REQUESTED) == 1);
  CHECK(count(cda::TraceEntry::FREE_COMPLETED) == 1);
  CHECK(count(cda::TraceEntry::SEGMENT_MAP) >= 1);
  for (const auto& e : snap.device_traces[0]) {
    if (e.action_ == cda::TraceEntry::ALLOC) CHECK(e.context_ != nullptr);
  }
  CHECK(tracked->size() == actions.size());
  // The live block carries the context of its allocation.
  bool found = false;
  for (const auto& seg : snap.segments) {
    for (const auto& b : seg.blocks) {
      if (b.allocated && b.requested_size == 3 * kMiB) found = b.context_when_allocated != nullptr;
    }
  }
  CHECK(found);
  CHECK(cca::getContextForPointer(kept) != nullptr);
  cca::recordHistory(false, nullptr, 0, cda::RecordContext::NEVER, true, {});
  cca::raw_delete(kept);
}

TEST_CASE("a private pool keeps its freed memory until releasePool", "[native]") {
  installed();
  const c10::MempoolId_t pool{0, 42};
  cca::beginAllocateToPool(0, pool, [](cudaStream_t) { return true; });
  CHECK(cca::getPoolUseCount(0, pool) == 1);
  std::vector<void*> inside;
  for (int i = 0; i < 3; ++i) inside.push_back(cca::raw_alloc(8 * kMiB));
  cca::endAllocateToPool(0, pool);
  CHECK(cca::checkPoolLiveAllocations(0, pool, {inside.begin(), inside.end()}));
  for (void* p : inside) cca::raw_delete(p);
  std::vector<void*> outside;
  for (int i = 0; i < 6; ++i) outside.push_back(cca::raw_alloc(8 * kMiB));
  for (void* p : outside) CHECK(std::find(inside.begin(), inside.end(), p) == inside.end());
  const auto with_pool = cca::getDeviceStats(0).reserved_bytes[0].current;
  CHECK(cca::getDeviceStats(0).reserved_bytes_by_private_pools.count(pool) == 1);
  cca::releasePool(0, pool);
  CHECK(cca::getPoolUseCount(0, pool) == 0);
  CHECK(cca::getDeviceStats(0).reserved_bytes[0].current < with_pool);
  for (void* p : outside) cca::raw_delete(p);
  CHECK_THROWS_AS(cca::endAllocateToPool(0, pool), c10::Error);
}

TEST_CASE("what timeshare does not support is one clear error", "[native]") {
  installed();
  CHECK_THROWS_WITH(cca::getCheckpointState(0, {0, 9}),
                    Catch::Contains("timeshare does not support checkpointing"));
}

TEST_CASE("CUDA IPC reaches timeshare: on the sim, one clear error each way", "[native][ipc]") {
  installed();
  // The sim holds no memory another process could map (the CUDA backend's sharing is tested
  // over the driver double: tests/cpp/test_ipc.cpp).
  void* p = cca::raw_alloc(2 * kMiB);
  REQUIRE(p != nullptr);
  CHECK_THROWS_WITH(cca::shareIpcHandle(p),
                    Catch::Contains("timeshare cannot share this CUDA tensor with another process: "
                                    "the sim backend cannot export this memory"));
  cca::raw_delete(p);
  CHECK_THROWS_WITH(cca::shareIpcHandle(p), Catch::Contains("not a block timeshare allocated"));
  // A handle of PyTorch's own allocator (a cudaIpcMemHandle_t) is not timeshare's.
  CHECK_THROWS_WITH(cca::getIpcDevPtr(std::string(64, '\x01')),
                    Catch::Contains("not a timeshare CUDA IPC handle"));
}
