// The CUDA backend's own code, run against the driver test double (tests/cuda_double/): what
// the conformance suite cannot see from the Backend interface alone. The caller's current
// context is restored by every call (several GPUs), mapped memory is accessible to the owning
// device and to every peer that can access it (peer access untracked; tracked, see
// test_cuda_pool_faults.cpp), each driver failure is reported with the right
// Status and text (out of memory only when it is), a failed or partial unmap loses nothing,
// primary contexts are released, and the Allocator (TemporalPool and CachingPool with
// expandable segments) runs over the backend without breaking a driver rule. Built only with the
// CUDA backend (TIMESHARE_WITH_CUDA); the double counts every broken rule as a violation.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cuda_fixture.h"
#include "fake_cuda_control.h"
#include "timeshare/allocator/allocator.h"
#include "timeshare/common/units.h"
#include "timeshare/device/cuda/cuda_backend.h"

using namespace timeshare;
using namespace timeshare::device;
using namespace timeshare::test;

namespace {

// Makes device `device`'s primary context current on this thread (-1: none), as PyTorch's
// device guard would.
void set_current_device(int device) {
  CUcontext ctx = nullptr;
  if (device >= 0) {
    REQUIRE(cuDevicePrimaryCtxRetain(&ctx, device) == CUDA_SUCCESS);
    REQUIRE(cuDevicePrimaryCtxRelease(device) == CUDA_SUCCESS);
  }
  REQUIRE(cuCtxSetCurrent(ctx) == CUDA_SUCCESS);
}

// Every Backend call, each leaving the backend as it found it.
std::vector<std::pair<const char*, std::function<void(Backend&)>>> every_call() {
  return {
      {"reserve+release", [](Backend& b) {
         void* p = nullptr;
         REQUIRE(b.reserve(kMiB, &p) == Status::kOk);
         REQUIRE(b.release(p, kMiB) == Status::kOk);
       }},
      {"mem_info", [](Backend& b) { CHECK(b.mem_info().total_bytes > 0); }},
      {"va_reserve+map+unmap+va_release", [](Backend& b) {
         void* base = nullptr;
         REQUIRE(b.va_reserve(4 * kMiB, &base) == Status::kOk);
         REQUIRE(b.map(base, 2 * kMiB) == Status::kOk);
         REQUIRE(b.unmap(base, 2 * kMiB) == Status::kOk);
         REQUIRE(b.va_release(base, 4 * kMiB) == Status::kOk);
       }},
      {"streams and events", [](Backend& b) {
         Stream s = 0;
         Event e = 0;
         REQUIRE(b.create_stream(&s) == Status::kOk);
         REQUIRE(b.create_event(&e) == Status::kOk);
         REQUIRE(b.record(e, s) == Status::kOk);
         REQUIRE(b.stream_wait(kDefaultStream, e) == Status::kOk);
         CHECK(b.query(e));
         REQUIRE(b.synchronize_event(e) == Status::kOk);
         REQUIRE(b.synchronize_stream(s) == Status::kOk);
         REQUIRE(b.synchronize_device() == Status::kOk);
         REQUIRE(b.destroy_event(e) == Status::kOk);
         REQUIRE(b.destroy_stream(s) == Status::kOk);
       }},
      {"pinned memory and copies", [](Backend& b) {
         void* h = nullptr;
         void* d = nullptr;
         REQUIRE(b.host_alloc_pinned(4096, &h) == Status::kOk);
         REQUIRE(b.reserve(4096, &d) == Status::kOk);
         REQUIRE(b.copy_async(d, h, 4096, CopyKind::kHostToDevice, kDefaultStream) == Status::kOk);
         REQUIRE(b.synchronize_stream(kDefaultStream) == Status::kOk);
         REQUIRE(b.release(d, 4096) == Status::kOk);
         REQUIRE(b.host_free_pinned(h) == Status::kOk);
       }},
  };
}

}  // namespace

TEST_CASE("cuda: every call restores the caller's current context", "[cuda]") {
  FakeDriver fake(2);
  auto b1 = cuda(1);
  for (const int caller : {0, -1}) {
    for (auto& [what, call] : every_call()) {
      INFO("caller on device " << caller << ", " << what);
      set_current_device(caller);
      call(*b1);
      CHECK(fakecuda_current_device() == caller);
    }
  }
  set_current_device(-1);
  check_violations();
}

TEST_CASE("cuda: a free of a cuda:1 block on a thread of device 0 leaves it on device 0",
          "[cuda][allocator]") {
  FakeDriver fake(2);
  const Options options = options_of("policy:torch");
  Allocator a(options, cuda(1));
  set_current_device(0);
  void* p = a.malloc(3 * kMiB, kDefaultStream);
  REQUIRE(p);
  CHECK(fakecuda_current_device() == 0);
  std::thread([&] {
    set_current_device(0);
    CHECK(a.free(p));
    a.empty_cache();
    CHECK(fakecuda_current_device() == 0);
  }).join();
  CHECK(fakecuda_used_bytes(1) == 0);
  set_current_device(-1);
  check_violations();
}

TEST_CASE("cuda: map grants access to the owning device and every peer that can access it",
          "[cuda]") {
  // Peer access not tracked (the default, and PyTorch's pluggable route): see
  // test_cuda_pool_faults.cpp for the tracked case.
  FakeDriver fake(3);
  fakecuda_set_peer_access(2, 0, 0);  // device 2 cannot reach device 0's memory
  auto b0 = cuda(0);
  auto b1 = cuda(1);
  auto b2 = cuda(2);
  void* base = nullptr;
  REQUIRE(b0->va_reserve(4 * kMiB, &base) == Status::kOk);
  REQUIRE(b0->map(base, 4 * kMiB) == Status::kOk);
  CHECK(fakecuda_access_mask(base) == 0b011u);
  CHECK(fakecuda_access_mask(static_cast<char*>(base) + 2 * kMiB) == 0b011u);
  // A peer copies out of device 0's memory from its own context.
  std::vector<unsigned char> in(4096, 0x5e);
  std::vector<unsigned char> out(4096, 0);
  REQUIRE(b0->copy_async(base, in.data(), in.size(), CopyKind::kHostToDevice, kDefaultStream) ==
          Status::kOk);
  REQUIRE(b0->synchronize_device() == Status::kOk);
  REQUIRE(b1->copy_async(out.data(), base, out.size(), CopyKind::kDeviceToHost, kDefaultStream) ==
          Status::kOk);
  REQUIRE(b1->synchronize_device() == Status::kOk);
  CHECK(out == in);
  // The device without peer access is refused (and the double counts it).
  CHECK(b2->copy_async(out.data(), base, out.size(), CopyKind::kDeviceToHost, kDefaultStream) !=
        Status::kOk);
  CHECK_FALSE(b2->last_error().empty());
  check_violations(1);
  REQUIRE(b0->unmap(base, 4 * kMiB) == Status::kOk);
  REQUIRE(b0->va_release(base, 4 * kMiB) == Status::kOk);
}

TEST_CASE("cuda: driver failures map to the right status, never out of memory by default",
          "[cuda][faults]") {
  FakeDriver fake(1);
  auto b = cuda(0);
  void* base = nullptr;
  REQUIRE(b->va_reserve(8 * kMiB, &base) == Status::kOk);
  auto* p = static_cast<char*>(base);
  SECTION("cuMemCreate out of memory is out of memory") {
    fakecuda_fail_after("cuMemCreate", 1, CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(b->map(p, 4 * kMiB) == Status::kOutOfMemory);
    CHECK(b->last_error().find("cuMemCreate") != std::string::npos);
    CHECK(b->last_error().find("out of memory") != std::string::npos);
  }
  SECTION("a failed cuMemMap is a device error") {
    fakecuda_fail_after("cuMemMap", 1, CUDA_ERROR_UNKNOWN);
    CHECK(b->map(p, 4 * kMiB) == Status::kError);
    CHECK(b->last_error().find("cuMemMap") != std::string::npos);
  }
  SECTION("a failed cuMemSetAccess is a device error") {
    fakecuda_fail_next("cuMemSetAccess", CUDA_ERROR_INVALID_DEVICE);
    CHECK(b->map(p, 4 * kMiB) == Status::kError);
    CHECK(b->last_error().find("cuMemSetAccess") != std::string::npos);
  }
  SECTION("cuMemAlloc out of memory is out of memory, other failures are not") {
    void* q = nullptr;
    fakecuda_fail_next("cuMemAlloc_v2", CUDA_ERROR_OUT_OF_MEMORY);
    CHECK(b->reserve(kMiB, &q) == Status::kOutOfMemory);
    fakecuda_fail_next("cuMemAlloc_v2", CUDA_ERROR_UNKNOWN);
    CHECK(b->reserve(kMiB, &q) == Status::kError);
    fakecuda_fail_next("cuMemHostAlloc", CUDA_ERROR_UNKNOWN);
    CHECK(b->host_alloc_pinned(kMiB, &q) == Status::kError);
    fakecuda_fail_next("cuMemAddressReserve", CUDA_ERROR_UNKNOWN);
    CHECK(b->va_reserve(2 * kMiB, &q) == Status::kError);
  }
  // Whatever failed, nothing is left mapped or held, and the range maps again.
  CHECK(fakecuda_mapped_bytes(0) == 0);
  CHECK(fakecuda_live_handles() == 0);
  REQUIRE(b->map(p, 8 * kMiB) == Status::kOk);
  REQUIRE(b->unmap(p, 8 * kMiB) == Status::kOk);
  REQUIRE(b->va_release(base, 8 * kMiB) == Status::kOk);
  check_violations();
}

TEST_CASE("cuda: a failed cuMemAddressFree keeps the range; a failed cuMemGetInfo reports nothing",
          "[cuda][faults]") {
  FakeDriver fake(1);
  auto b = cuda(0);
  void* base = nullptr;
  REQUIRE(b->va_reserve(4 * kMiB, &base) == Status::kOk);
  fakecuda_fail_next("cuMemAddressFree", CUDA_ERROR_UNKNOWN);
  CHECK(b->va_release(base, 4 * kMiB) == Status::kError);
  CHECK(b->last_error().find("cuMemAddressFree") != std::string::npos);
  CHECK(fakecuda_reservations() == 1);
  REQUIRE(b->va_release(base, 4 * kMiB) == Status::kOk);  // still known: the retry frees it
  CHECK(fakecuda_reservations() == 0);
  fakecuda_fail_next("cuMemGetInfo_v2", CUDA_ERROR_UNKNOWN);
  const MemInfo m = b->mem_info();
  CHECK(m.total_bytes == 0);
  CHECK(m.free_bytes == 0);
  CHECK(b->last_error().find("cuMemGetInfo") != std::string::npos);
  check_violations();
}

TEST_CASE("cuda: a sticky error is reported by later calls, and an event is then never complete",
          "[cuda][faults]") {
  FakeDriver fake(1);
  auto b = cuda(0);
  Stream s = 0;
  Event e = 0;
  REQUIRE(b->create_stream(&s) == Status::kOk);
  REQUIRE(b->create_event(&e) == Status::kOk);
  REQUIRE(fakecuda_launch(0, reinterpret_cast<CUstream>(s), nullptr, 0, 0,
                          CUDA_ERROR_ILLEGAL_ADDRESS) == CUDA_SUCCESS);
  fakecuda_set_lazy(1);
  REQUIRE(b->record(e, s) == Status::kOk);
  CHECK(b->synchronize_stream(s) == Status::kError);
  CHECK(b->last_error().find("illegal memory access") != std::string::npos);
  CHECK_FALSE(b->query(e));  // the error, not "complete"
  CHECK(b->last_error().find("cuEventQuery") != std::string::npos);
  void* q = nullptr;
  CHECK(b->reserve(kMiB, &q) == Status::kError);
  void* base = nullptr;
  CHECK(b->va_reserve(2 * kMiB, &base) == Status::kError);
  check_violations();
}

TEST_CASE("cuda: a call whose context cannot be entered fails, and a query is not complete",
          "[cuda][faults]") {
  FakeDriver fake(2);
  auto b = cuda(0);
  Event e = 0;
  REQUIRE(b->create_event(&e) == Status::kOk);
  set_current_device(1);
  fakecuda_fail_next("cuCtxSetCurrent", CUDA_ERROR_INVALID_CONTEXT);
  CHECK_FALSE(b->query(e));
  CHECK(b->last_error().find("context") != std::string::npos);
  CHECK(fakecuda_current_device() == 1);
  // Every other call reports it as a device error and leaves the caller where it was.
  void* p = nullptr;
  Stream s = 0;
  Event ev = 0;
  const std::vector<std::function<Status()>> calls = {
      [&] { return b->reserve(kMiB, &p); },
      [&] { return b->release(nullptr, kMiB); },
      [&] { return b->va_reserve(2 * kMiB, &p); },
      [&] { return b->va_release(nullptr, 2 * kMiB); },
      [&] { return b->map(nullptr, 2 * kMiB); },
      [&] { return b->unmap(nullptr, 2 * kMiB); },
      [&] { return b->create_stream(&s); },
      [&] { return b->destroy_stream(s); },
      [&] { return b->create_event(&ev); },
      [&] { return b->destroy_event(e); },
      [&] { return b->record(e, kDefaultStream); },
      [&] { return b->stream_wait(kDefaultStream, e); },
      [&] { return b->synchronize_event(e); },
      [&] { return b->synchronize_stream(kDefaultStream); },
      [&] { return b->synchronize_device(); },
      [&] { return b->copy_async(&p, &s, 1, CopyKind::kHostToDevice, kDefaultStream); },
      [&] { return b->host_alloc_pinned(64, &p); },
      [&] { return b->host_free_pinned(nullptr); },
  };
  for (std::size_t i = 0; i < calls.size(); ++i) {
    INFO("call " << i);
    fakecuda_fail_next("cuCtxSetCurrent", CUDA_ERROR_INVALID_CONTEXT);
    CHECK(calls[i]() == Status::kError);
    CHECK(b->last_error().find("context") != std::string::npos);
    CHECK(fakecuda_current_device() == 1);
  }
  fakecuda_fail_next("cuCtxSetCurrent", CUDA_ERROR_INVALID_CONTEXT);
  CHECK(b->mem_info().total_bytes == 0);
  set_current_device(-1);
  REQUIRE(b->destroy_event(e) == Status::kOk);
  check_violations();
}

TEST_CASE("cuda: an unmap that cannot complete unmaps nothing", "[cuda]") {
  FakeDriver fake(1);
  auto b = cuda(0);
  void* base = nullptr;
  REQUIRE(b->va_reserve(8 * kMiB, &base) == Status::kOk);
  auto* p = static_cast<char*>(base);
  REQUIRE(b->map(p, 2 * kMiB) == Status::kOk);
  SECTION("a range running past the mapped granules") {
    CHECK(b->unmap(p, 4 * kMiB) == Status::kInvalid);
    CHECK(fakecuda_mapped_bytes(0) == 2 * kMiB);  // the first granule is still mapped
  }
  SECTION("a driver failure in cuMemUnmap keeps the granule, so a retry unmaps it") {
    fakecuda_fail_next("cuMemUnmap", CUDA_ERROR_UNKNOWN);
    CHECK(b->unmap(p, 2 * kMiB) == Status::kError);
    CHECK(b->last_error().find("cuMemUnmap") != std::string::npos);
    CHECK(fakecuda_mapped_bytes(0) == 2 * kMiB);
  }
  // Still mapped and usable: data goes in and comes back.
  std::vector<unsigned char> in(2 * kMiB, 0xa7);
  std::vector<unsigned char> out(2 * kMiB, 0);
  REQUIRE(b->copy_async(p, in.data(), in.size(), CopyKind::kHostToDevice, kDefaultStream) ==
          Status::kOk);
  REQUIRE(b->copy_async(out.data(), p, out.size(), CopyKind::kDeviceToHost, kDefaultStream) ==
          Status::kOk);
  REQUIRE(b->synchronize_device() == Status::kOk);
  CHECK(out == in);
  REQUIRE(b->unmap(p, 2 * kMiB) == Status::kOk);
  CHECK(fakecuda_live_handles() == 0);
  REQUIRE(b->va_release(base, 8 * kMiB) == Status::kOk);
  check_violations();
}

TEST_CASE("cuda: map_alias reaches the same memory at a second address", "[cuda]") {
  FakeDriver fake(2);
  auto b = cuda(0);
  auto peer = cuda(1);
  void* base = nullptr;
  REQUIRE(b->va_reserve(16 * kMiB, &base) == Status::kOk);
  auto* p = static_cast<char*>(base);
  char* q = p + 8 * kMiB;
  REQUIRE(b->map(p, 4 * kMiB) == Status::kOk);
  std::vector<unsigned char> in(4 * kMiB, 0x3d);
  std::vector<unsigned char> out(4 * kMiB, 0);
  REQUIRE(b->copy_async(p, in.data(), in.size(), CopyKind::kHostToDevice, kDefaultStream) ==
          Status::kOk);
  REQUIRE(b->synchronize_device() == Status::kOk);
  SECTION("a failed cuMemMap maps nothing at the new address and keeps the old") {
    fakecuda_fail_after("cuMemMap", 1, CUDA_ERROR_UNKNOWN);
    CHECK(b->map_alias(q, p, 4 * kMiB) == Status::kError);
    CHECK(b->last_error().find("cuMemMap") != std::string::npos);
    CHECK(fakecuda_mapped_bytes(0) == 4 * kMiB);
    CHECK(fakecuda_live_handles() == 2);
  }
  SECTION("the alias holds the data, for the owner and its peers, after the old address goes") {
    REQUIRE(b->map_alias(q, p, 4 * kMiB) == Status::kOk);
    CHECK(fakecuda_access_mask(q) == 0b11u);
    CHECK(fakecuda_used_bytes(0) == 4 * kMiB);
    REQUIRE(b->unmap(p, 4 * kMiB) == Status::kOk);
    CHECK(fakecuda_live_handles() == 2);  // still mapped at q
    REQUIRE(peer->copy_async(out.data(), q, out.size(), CopyKind::kDeviceToHost, kDefaultStream) ==
            Status::kOk);
    REQUIRE(peer->synchronize_device() == Status::kOk);
    CHECK(out == in);
    REQUIRE(b->unmap(q, 4 * kMiB) == Status::kOk);
    CHECK(fakecuda_live_handles() == 0);
    CHECK(fakecuda_used_bytes(0) == 0);
  }
  if (fakecuda_mapped_bytes(0) > 0) REQUIRE(b->unmap(p, 4 * kMiB) == Status::kOk);
  REQUIRE(b->va_release(base, 16 * kMiB) == Status::kOk);
  CHECK(fakecuda_live_handles() == 0);
  check_violations();
}

TEST_CASE("cuda: a backend releases the primary context it retained", "[cuda]") {
  FakeDriver fake(2);
  {
    auto b = cuda(1);
    CHECK(fakecuda_primary_ctx_refs(1) == 1);
  }
  CHECK(fakecuda_primary_ctx_refs(1) == 0);
  check_violations();
}

TEST_CASE("cuda: devices, availability and virtual memory support", "[cuda]") {
  FakeDriver fake(2);
  std::string why;
  CHECK(cuda_available(&why));
  CHECK(cuda_device_count() == 2);
  std::string error;
  CHECK_FALSE(make_cuda_backend(2, &error));
  CHECK(error.find("does not exist") != std::string::npos);
  CHECK_FALSE(make_cuda_backend(-1, &error));
  fakecuda_fail_next("cuDevicePrimaryCtxRetain", CUDA_ERROR_UNKNOWN);
  CHECK_FALSE(make_cuda_backend(0, &error));
  CHECK(error.find("primary context") != std::string::npos);
  fakecuda_set_vmm_supported(1, 0);
  auto b = cuda(1);
  CHECK_FALSE(b->supports_virtual_memory());
  void* base = nullptr;
  CHECK(b->va_reserve(2 * kMiB, &base) == Status::kInvalid);
  CHECK(b->device_index() == 1);
  CHECK(std::string(b->name()) == "cuda");
  fakecuda_set_device_count(0);
  CHECK_FALSE(cuda_available(&why));
  CHECK(why.find("no devices") != std::string::npos);
  CHECK_FALSE(make_cuda_backend(0, &error));
  check_violations();
}

TEST_CASE("cuda: the allocator over the CUDA backend keeps data and gives memory back",
          "[cuda][allocator]") {
  const std::string conf = GENERATE(as<std::string>{}, "policy:timeshare",
                                    "policy:torch,expandable_segments:true", "policy:torch");
  INFO(conf);
  FakeDriver fake(1);
  fakecuda_set_capacity(0, 512 * kMiB);
  const Options options = options_of(conf);
  {
    Allocator a(options, cuda(0));
    Backend& b = a.backend();
    Stream side = 0;
    REQUIRE(b.create_stream(&side) == Status::kOk);
    static constexpr std::size_t kSizes[] = {512, 4000, 70'000, 1 << 20, 3 << 20, 11 << 20};
    for (int round = 0; round < 3; ++round) {
      std::vector<std::pair<void*, std::size_t>> live;
      for (int i = 0; i < 24; ++i) {
        const std::size_t n = kSizes[(i + round) % 6];
        const Stream s = i % 3 == 0 ? side : kDefaultStream;
        void* p = a.malloc(n, s);
        REQUIRE(p);
        std::vector<unsigned char> tag(n, static_cast<unsigned char>(i + 1));
        REQUIRE(b.copy_async(p, tag.data(), n, CopyKind::kHostToDevice, s) == Status::kOk);
        REQUIRE(b.synchronize_stream(s) == Status::kOk);
        if (s == side) REQUIRE(a.record_stream(p, kDefaultStream));
        live.emplace_back(p, n);
      }
      for (std::size_t i = 0; i < live.size(); ++i) {
        auto [p, n] = live[i];
        std::vector<unsigned char> got(n, 0);
        REQUIRE(b.copy_async(got.data(), p, n, CopyKind::kDeviceToHost, kDefaultStream) ==
                Status::kOk);
        REQUIRE(b.synchronize_stream(kDefaultStream) == Status::kOk);
        CHECK(got == std::vector<unsigned char>(n, static_cast<unsigned char>(i + 1)));
        CHECK(a.free(p));
      }
      CHECK(a.stats().allocated_bytes.front().current == 0);
    }
    REQUIRE(b.synchronize_device() == Status::kOk);
    a.empty_cache();
    CHECK(a.stats().reserved_bytes.front().current == 0);
    CHECK(fakecuda_used_bytes(0) == 0);
    REQUIRE(b.destroy_stream(side) == Status::kOk);
  }
  CHECK(fakecuda_used_bytes(0) == 0);
  CHECK(fakecuda_live_handles() == 0);
  CHECK(fakecuda_reservations() == 0);
  check_violations();
}

// ---- the double itself: it must refuse what the real driver refuses ---------------------------

namespace {

// `r` is the driver's error `want`, and the double counted exactly one more violation.
void check_refused(CUresult r, CUresult want, unsigned long long* violations) {
  CHECK(r == want);
  CHECK(fakecuda_violations() == *violations + 1);
  *violations = fakecuda_violations();
}

}  // namespace

TEST_CASE("double: virtual memory rules fail loudly", "[cuda][double]") {
  FakeDriver fake(2);
  unsigned long long v = 0;
  CUdeviceptr base = 0;
  CUmemGenericAllocationHandle h = 0;
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = 0;
  // No current context on this thread.
  check_refused(cuMemAddressReserve(&base, 8 * kMiB, 0, 0, 0), CUDA_ERROR_INVALID_CONTEXT, &v);
  set_current_device(0);
  check_refused(cuMemAddressReserve(&base, 3 * kMiB, 0, 0, 0), CUDA_ERROR_INVALID_VALUE, &v);
  REQUIRE(cuMemAddressReserve(&base, 8 * kMiB, 0, 0, 0) == CUDA_SUCCESS);
  check_refused(cuMemCreate(&h, kMiB, &prop, 0), CUDA_ERROR_INVALID_VALUE, &v);
  REQUIRE(cuMemCreate(&h, 4 * kMiB, &prop, 0) == CUDA_SUCCESS);
  CHECK(fakecuda_used_bytes(0) == 4 * kMiB);
  check_refused(cuMemMap(base, 3 * kMiB, 0, h, 0), CUDA_ERROR_INVALID_VALUE, &v);       // size
  check_refused(cuMemMap(base + 6 * kMiB, 4 * kMiB, 0, h, 0), CUDA_ERROR_INVALID_VALUE, &v);  // out
  REQUIRE(cuMemMap(base, 4 * kMiB, 0, h, 0) == CUDA_SUCCESS);
  // Over an existing mapping:
  check_refused(cuMemMap(base + 2 * kMiB, 2 * kMiB, 0, h, 0), CUDA_ERROR_INVALID_VALUE, &v);
  // Access before cuMemSetAccess: a copy touching the mapping is refused.
  std::vector<unsigned char> host(4096, 1);
  const auto host_ptr = reinterpret_cast<CUdeviceptr>(host.data());
  check_refused(cuMemcpyAsync(base, host_ptr, host.size(), nullptr), CUDA_ERROR_INVALID_VALUE, &v);
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = 0;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  // Access to a range that is not all mapped:
  check_refused(cuMemSetAccess(base, 6 * kMiB, &access, 1), CUDA_ERROR_INVALID_VALUE, &v);
  REQUIRE(cuMemSetAccess(base, 4 * kMiB, &access, 1) == CUDA_SUCCESS);
  REQUIRE(cuMemcpyAsync(base, reinterpret_cast<CUdeviceptr>(host.data()), host.size(), nullptr) ==
          CUDA_SUCCESS);
  // A copy that runs past the mapping is refused too.
  check_refused(cuMemcpyAsync(base + 4 * kMiB - 16, reinterpret_cast<CUdeviceptr>(host.data()),
                              host.size(), nullptr),
                CUDA_ERROR_INVALID_VALUE, &v);
  // Device 1 was not granted access.
  set_current_device(1);
  check_refused(cuMemcpyAsync(host_ptr, base, host.size(), nullptr), CUDA_ERROR_INVALID_VALUE, &v);
  set_current_device(0);
  REQUIRE(cuCtxSynchronize() == CUDA_SUCCESS);
  // Releasing a mapped handle is legal: the memory lives until its last unmap.
  REQUIRE(cuMemRelease(h) == CUDA_SUCCESS);
  CHECK(fakecuda_live_handles() == 1);
  check_refused(cuMemRelease(h), CUDA_ERROR_INVALID_VALUE, &v);  // released twice
  check_refused(cuMemUnmap(base, 2 * kMiB), CUDA_ERROR_INVALID_VALUE, &v);  // half a mapping
  check_refused(cuMemAddressFree(base, 8 * kMiB), CUDA_ERROR_INVALID_VALUE, &v);  // still mapped
  REQUIRE(cuMemUnmap(base, 4 * kMiB) == CUDA_SUCCESS);
  CHECK(fakecuda_live_handles() == 0);
  CHECK(fakecuda_used_bytes(0) == 0);
  check_refused(cuMemAddressFree(base, 4 * kMiB), CUDA_ERROR_INVALID_VALUE, &v);  // not the range
  REQUIRE(cuMemAddressFree(base, 8 * kMiB) == CUDA_SUCCESS);
  set_current_device(-1);
}

TEST_CASE("double: streams run in order, only when the host waits, and frees under queued work "
          "are caught", "[cuda][double]") {
  FakeDriver fake(2);
  fakecuda_set_lazy(1);
  unsigned long long v = 0;
  set_current_device(0);
  CUstream s = nullptr;
  CUevent e = nullptr;
  REQUIRE(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS);
  REQUIRE(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS);
  CUdeviceptr d = 0;
  REQUIRE(cuMemAlloc(&d, 4096) == CUDA_SUCCESS);
  std::vector<unsigned char> out(4096, 0);
  REQUIRE(fakecuda_launch(0, s, reinterpret_cast<void*>(d), 4096, 0x11, CUDA_SUCCESS) ==
          CUDA_SUCCESS);
  REQUIRE(cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(out.data()), d, 4096, s) == CUDA_SUCCESS);
  REQUIRE(cuEventRecord(e, s) == CUDA_SUCCESS);
  CHECK(cuEventQuery(e) == CUDA_ERROR_NOT_READY);
  CHECK(out[0] == 0);
  CHECK(fakecuda_pending_ops() == 3);
  // cuMemFree waits for the queued work (as cudaFree does): legal, and the work ran.
  REQUIRE(cuMemFree(d) == CUDA_SUCCESS);
  CHECK(fakecuda_violations() == v);
  CHECK(out[4095] == 0x11);
  // cuMemUnmap does not wait: unmapping under queued work is counted (the work runs first).
  CUdeviceptr base = 0;
  CUmemGenericAllocationHandle h = 0;
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  CUmemAccessDesc access{};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  REQUIRE(cuMemAddressReserve(&base, 2 * kMiB, 0, 0, 0) == CUDA_SUCCESS);
  REQUIRE(cuMemCreate(&h, 2 * kMiB, &prop, 0) == CUDA_SUCCESS);
  REQUIRE(cuMemMap(base, 2 * kMiB, 0, h, 0) == CUDA_SUCCESS);
  REQUIRE(cuMemSetAccess(base, 2 * kMiB, &access, 1) == CUDA_SUCCESS);
  REQUIRE(cuMemRelease(h) == CUDA_SUCCESS);
  REQUIRE(fakecuda_launch(0, s, reinterpret_cast<void*>(base), 2 * kMiB, 0x22, CUDA_SUCCESS) ==
          CUDA_SUCCESS);
  REQUIRE(cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(out.data()), base, 4096, s) == CUDA_SUCCESS);
  REQUIRE(cuMemUnmap(base, 2 * kMiB) == CUDA_SUCCESS);
  CHECK(fakecuda_violations() == ++v);
  CHECK(out[0] == 0x22);
  REQUIRE(cuMemAddressFree(base, 2 * kMiB) == CUDA_SUCCESS);
  CHECK(cuEventQuery(e) == CUDA_SUCCESS);
  // An event of device 0 cannot be recorded on a stream of device 1.
  set_current_device(1);
  CUstream s1 = nullptr;
  REQUIRE(cuStreamCreate(&s1, 0) == CUDA_SUCCESS);
  check_refused(cuEventRecord(e, s1), CUDA_ERROR_INVALID_HANDLE, &v);
  // ...but a stream of device 1 may wait on it.
  REQUIRE(cuStreamWaitEvent(s1, e, 0) == CUDA_SUCCESS);
  REQUIRE(cuStreamDestroy(s1) == CUDA_SUCCESS);
  check_refused(cuStreamDestroy(s1), CUDA_ERROR_INVALID_HANDLE, &v);
  set_current_device(0);
  // A faulting kernel leaves a sticky error that later calls report; cuGetErrorString names it.
  REQUIRE(fakecuda_launch(0, nullptr, nullptr, 0, 0, CUDA_ERROR_LAUNCH_FAILED) == CUDA_SUCCESS);
  CHECK(cuCtxSynchronize() == CUDA_ERROR_LAUNCH_FAILED);
  CHECK(cuMemAlloc(&d, 4096) == CUDA_ERROR_LAUNCH_FAILED);
  const char* text = nullptr;
  REQUIRE(cuGetErrorString(CUDA_ERROR_LAUNCH_FAILED, &text) == CUDA_SUCCESS);
  CHECK(std::string(text) == "unspecified launch failure");
  CHECK(fakecuda_calls("cuMemAlloc_v2") == 2);
  set_current_device(-1);
}

TEST_CASE("cuda: the pools never unmap or free memory that queued work still uses",
          "[cuda][allocator]") {
  const std::string conf = GENERATE(as<std::string>{}, "policy:timeshare",
                                    "policy:torch,expandable_segments:true", "policy:torch");
  INFO(conf);
  FakeDriver fake(1);
  fakecuda_set_lazy(1);  // queued work stays queued until the host waits
  const Options options = options_of(conf);
  {
    Allocator a(options, cuda(0));
    Backend& b = a.backend();
    Stream side = 0;
    REQUIRE(b.create_stream(&side) == Status::kOk);
    for (int round = 0; round < 4; ++round) {
      std::vector<void*> blocks;
      for (int i = 0; i < 8; ++i) {
        const std::size_t n = (std::size_t{1} << (18 + (i + round) % 5)) + 512;
        void* p = a.malloc(n, kDefaultStream);
        REQUIRE(p);
        // A kernel on the block's stream and one on a side stream (record_stream) still queued
        // when the block is freed.
        REQUIRE(fakecuda_launch(0, nullptr, p, n, i, CUDA_SUCCESS) == CUDA_SUCCESS);
        REQUIRE(fakecuda_launch(0, reinterpret_cast<CUstream>(side), p, n / 2, i, CUDA_SUCCESS) ==
                CUDA_SUCCESS);
        REQUIRE(a.record_stream(p, side));
        blocks.push_back(p);
      }
      for (void* p : blocks) CHECK(a.free(p));
      a.empty_cache();  // must not unmap what the queued kernels still touch
    }
    REQUIRE(b.synchronize_device() == Status::kOk);
    REQUIRE(b.synchronize_stream(side) == Status::kOk);
    a.empty_cache();
    REQUIRE(b.destroy_stream(side) == Status::kOk);
  }
  CHECK(fakecuda_used_bytes(0) == 0);
  CHECK(fakecuda_live_handles() == 0);
  check_violations();
}

TEST_CASE("cuda: after a sticky error, waiting pools give up instead of spinning",
          "[cuda][allocator][faults]") {
  // A block used on a side stream is pending when the context dies: the teardown's wait (and
  // a retry's) can never see its event complete. It must stop, keeping the block unreused.
  const std::string conf = GENERATE(as<std::string>{}, "policy:timeshare", "policy:torch");
  INFO(conf);
  FakeDriver fake(1);
  fakecuda_set_lazy(1);
  const Options options = options_of(conf);
  std::atomic<bool> finished{false};
  std::thread body([&] {
    {
      Allocator a(options, cuda(0));
      Stream side = 0;
      void* p = a.malloc(4 * kMiB, kDefaultStream);
      if (p != nullptr && a.backend().create_stream(&side) == Status::kOk) {
        fakecuda_launch(0, reinterpret_cast<CUstream>(side), p, 4 * kMiB, 1, CUDA_SUCCESS);
        a.record_stream(p, side);
        a.free(p);
        fakecuda_set_sticky(0, CUDA_ERROR_ILLEGAL_ADDRESS);
        a.empty_cache();
        a.malloc(std::size_t{1} << 40, kDefaultStream);  // fails placement: the retry waits
      }
    }  // ~Allocator waits for the pending block too
    finished = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!finished && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!finished) {
    FAIL_CHECK("the pool spins on an event that can never complete");
    body.detach();
    std::_Exit(1);  // the spinning thread cannot be stopped
  }
  body.join();  // the teardown after empty_cache must return too
  SUCCEED();
}

TEST_CASE("cuda: unsafe_unmap (the sim detector's test) is ignored on the CUDA backend",
          "[cuda][allocator]") {
  FakeDriver fake(1);
  fakecuda_set_lazy(1);  // queued work stays queued until the host waits
  const Options options = options_of("policy:timeshare,unsafe_unmap:true");
  {
    Allocator a(options, cuda(0));
    std::vector<void*> blocks;
    for (int i = 0; i < 4; ++i) {
      void* p = a.malloc(6 * kMiB, kDefaultStream);
      REQUIRE(p);
      REQUIRE(fakecuda_launch(0, nullptr, p, 6 * kMiB, i, CUDA_SUCCESS) == CUDA_SUCCESS);
      blocks.push_back(p);
    }
    for (void* p : blocks) CHECK(a.free(p));  // the kernels are still queued
    a.empty_cache();                           // honoured, this would unmap under them
  }
  check_violations();
}
