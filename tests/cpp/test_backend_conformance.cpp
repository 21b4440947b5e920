// One conformance suite for every device backend: the same checks run against the sim backend
// and, where the CUDA backend is built, against the CUDA backend over the driver test double
// (tests/cuda_double/, loaded in place of libcuda.so.1). What is checked is the Backend contract
// that pool/, spill/ and allocator/ rely on: reserve/release with out of memory reported as
// such, virtual ranges with granular map/unmap and nothing left half-mapped by a failure, streams
// whose work completes in order, events that complete exactly when prior work has, stream_wait
// ordering across streams, copies in every direction that are asynchronous and bit-exact, pinned
// host memory, injected out-of-memory at physical allocation, and a last_error that says why.
//
// Each backend is wrapped in a fixture that knows how to keep a stream busy (sim: a simulated
// kernel on the virtual clock; CUDA: a test kernel on the double in lazy mode, which runs only
// when the host waits) and how to inject out-of-memory. The CUDA fixture also checks at the end
// that the double counted no violation of the driver's rules other than those a test provokes.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "timeshare/common/units.h"
#include "timeshare/device/sim/sim_backend.h"
#ifdef TIMESHARE_WITH_CUDA
#include "cuda_fixture.h"  // loads the driver double before any test runs
#include "fake_cuda_control.h"
#include "timeshare/device/cuda/cuda_backend.h"
#endif

using namespace timeshare;
using namespace timeshare::device;

namespace {

constexpr std::uint64_t kHoldNs = 1'000'000;  // a simulated kernel that keeps a stream busy

struct Capacity {
  std::size_t device_bytes = 64 * kMiB;
  std::size_t pinned_bytes = 16 * kMiB;
};

class SimFixture {
 public:
  explicit SimFixture(Capacity c = {})
      : b_(SimOptions{.capacity_bytes = c.device_bytes, .backing = true,
                      .pinned_capacity_bytes = c.pinned_bytes}) {}
  Backend& backend() { return b_; }
  void hold(Stream s) { b_.enqueue_work(s, kHoldNs); }
  void fail_next_map_out_of_memory() { b_.fail_reserve_at(1); }
  void fail_next_reserve_out_of_memory() { b_.fail_reserve_at(1); }
  void allow_driver_violations(unsigned long long) {}
  void check_clean() {}

 private:
  SimBackend b_;
};

#ifdef TIMESHARE_WITH_CUDA

class CudaFixture {
 public:
  explicit CudaFixture(Capacity c = {}) {
    fakecuda_reset();
    fakecuda_set_capacity(0, c.device_bytes);
    fakecuda_set_pinned_capacity(c.pinned_bytes);
    fakecuda_set_lazy(1);  // work runs only when the host waits: a held stream stays busy
    std::string error;
    b_ = make_cuda_backend(0, &error);
    INFO(error);
    REQUIRE(b_);
  }
  Backend& backend() { return *b_; }
  void hold(Stream s) {
    REQUIRE(fakecuda_launch(0, reinterpret_cast<CUstream>(s), nullptr, 0, 0, CUDA_SUCCESS) ==
            CUDA_SUCCESS);
  }
  void fail_next_map_out_of_memory() {
    fakecuda_fail_next("cuMemCreate", CUDA_ERROR_OUT_OF_MEMORY);
  }
  void fail_next_reserve_out_of_memory() {
    fakecuda_fail_next("cuMemAlloc_v2", CUDA_ERROR_OUT_OF_MEMORY);
  }
  void allow_driver_violations(unsigned long long n) { allowed_ += n; }
  void check_clean() {
    for (unsigned long long i = 0; i < fakecuda_violations(); ++i) {
      UNSCOPED_INFO(fakecuda_violation(i));
    }
    CHECK(fakecuda_violations() == allowed_);
  }

 private:
  std::unique_ptr<Backend> b_;
  unsigned long long allowed_ = 0;
};
using Backends = std::tuple<SimFixture, CudaFixture>;
#else
using Backends = std::tuple<SimFixture>;
#endif

std::vector<unsigned char> pattern(std::size_t bytes, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<unsigned char> v(bytes);
  for (auto& c : v) c = static_cast<unsigned char>(rng());
  return v;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("conformance: reserve and release against capacity", "[conformance]",
                        Backends) {
  TestType f(Capacity{.device_bytes = 10 * kMiB});
  Backend& b = f.backend();
  void* a = nullptr;
  void* c = nullptr;
  REQUIRE(b.reserve(6 * kMiB, &a) == Status::kOk);
  REQUIRE(a != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % 512 == 0);
  CHECK(b.reserve(6 * kMiB, &c) == Status::kOutOfMemory);
  CHECK(c == nullptr);
  CHECK_FALSE(b.last_error().empty());
  CHECK(b.mem_info().free_bytes == 4 * kMiB);
  CHECK(b.mem_info().total_bytes == 10 * kMiB);
  f.fail_next_reserve_out_of_memory();
  CHECK(b.reserve(kMiB, &c) == Status::kOutOfMemory);
  REQUIRE(b.release(a, 6 * kMiB) == Status::kOk);
  f.allow_driver_violations(1);  // the driver is told to free a pointer it does not know
  CHECK(b.release(a, 6 * kMiB) == Status::kInvalid);
  REQUIRE(b.reserve(10 * kMiB, &c) == Status::kOk);
  REQUIRE(b.release(c, 10 * kMiB) == Status::kOk);
  CHECK(b.mem_info().free_bytes == 10 * kMiB);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: virtual ranges map and unmap whole granules",
                        "[conformance]", Backends) {
  TestType f(Capacity{.device_bytes = 8 * kMiB});
  Backend& b = f.backend();
  REQUIRE(b.supports_virtual_memory());
  REQUIRE(b.granule_bytes() == 2 * kMiB);
  void* base = nullptr;
  REQUIRE(b.va_reserve(64 * kMiB, &base) == Status::kOk);
  REQUIRE(reinterpret_cast<std::uintptr_t>(base) % (2 * kMiB) == 0);
  auto* p = static_cast<char*>(base);
  void* other = nullptr;
  CHECK(b.va_reserve(3 * kMiB, &other) == Status::kInvalid);  // not granular
  REQUIRE(b.map(p, 4 * kMiB) == Status::kOk);
  CHECK(b.mem_info().free_bytes == 4 * kMiB);
  CHECK(b.map(p + 2 * kMiB, 2 * kMiB) == Status::kInvalid);      // already mapped
  CHECK(b.map(p + 1, 2 * kMiB) == Status::kInvalid);             // misaligned
  CHECK(b.map(p + 8 * kMiB, 3 * kMiB) == Status::kInvalid);      // not a multiple of granules
  CHECK(b.map(p + 64 * kMiB, 2 * kMiB) == Status::kInvalid);     // past the range
  CHECK(b.map(p + 4 * kMiB, 6 * kMiB) == Status::kOutOfMemory);  // over capacity
  CHECK_FALSE(b.last_error().empty());
  // The failed map left nothing behind: the rest of the capacity maps in one piece.
  CHECK(b.mem_info().free_bytes == 4 * kMiB);
  REQUIRE(b.map(p + 4 * kMiB, 4 * kMiB) == Status::kOk);
  CHECK(b.va_release(base, 64 * kMiB) == Status::kInvalid);  // still mapped
  CHECK(b.unmap(p + 8 * kMiB, 2 * kMiB) == Status::kInvalid);  // never mapped
  REQUIRE(b.unmap(p, 8 * kMiB) == Status::kOk);
  CHECK(b.mem_info().free_bytes == 8 * kMiB);
  CHECK(b.unmap(p, 2 * kMiB) == Status::kInvalid);  // already unmapped
  REQUIRE(b.va_release(base, 64 * kMiB) == Status::kOk);
  CHECK(b.va_release(base, 64 * kMiB) == Status::kInvalid);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: mapped memory holds data, and unmapping one granule keeps "
                        "the others", "[conformance]", Backends) {
  TestType f;
  Backend& b = f.backend();
  void* base = nullptr;
  REQUIRE(b.va_reserve(8 * kMiB, &base) == Status::kOk);
  auto* p = static_cast<char*>(base);
  REQUIRE(b.map(p, 6 * kMiB) == Status::kOk);
  const std::vector<unsigned char> in = pattern(6 * kMiB, 1);
  std::vector<unsigned char> out(6 * kMiB, 0);
  REQUIRE(b.copy_async(p, in.data(), in.size(), CopyKind::kHostToDevice, kDefaultStream) ==
          Status::kOk);
  REQUIRE(b.synchronize_stream(kDefaultStream) == Status::kOk);
  REQUIRE(b.unmap(p + 2 * kMiB, 2 * kMiB) == Status::kOk);  // the middle granule only
  REQUIRE(b.copy_async(out.data(), p, 2 * kMiB, CopyKind::kDeviceToHost, kDefaultStream) ==
          Status::kOk);
  REQUIRE(b.copy_async(out.data() + 4 * kMiB, p + 4 * kMiB, 2 * kMiB, CopyKind::kDeviceToHost,
                       kDefaultStream) == Status::kOk);
  REQUIRE(b.synchronize_device() == Status::kOk);
  CHECK(std::memcmp(out.data(), in.data(), 2 * kMiB) == 0);
  CHECK(std::memcmp(out.data() + 4 * kMiB, in.data() + 4 * kMiB, 2 * kMiB) == 0);
  REQUIRE(b.unmap(p, 2 * kMiB) == Status::kOk);
  REQUIRE(b.unmap(p + 4 * kMiB, 2 * kMiB) == Status::kOk);
  REQUIRE(b.va_release(base, 8 * kMiB) == Status::kOk);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: map_alias shares physical memory, counted once",
                        "[conformance]", Backends) {
  TestType f(Capacity{.device_bytes = 8 * kMiB});
  Backend& b = f.backend();
  void* base = nullptr;
  REQUIRE(b.va_reserve(16 * kMiB, &base) == Status::kOk);
  auto* p = static_cast<char*>(base);
  char* q = p + 8 * kMiB;
  REQUIRE(b.map(p, 4 * kMiB) == Status::kOk);
  REQUIRE(b.map_alias(q, p, 4 * kMiB) == Status::kOk);
  CHECK(b.mem_info().free_bytes == 4 * kMiB);  // one physical copy
  CHECK(b.map_alias(q, p, 2 * kMiB) == Status::kInvalid);                      // onto mapped
  CHECK(b.map_alias(p + 12 * kMiB, p + 4 * kMiB, 2 * kMiB) == Status::kInvalid);  // from unmapped
  CHECK(b.map_alias(p + 5 * kMiB, p, 2 * kMiB) == Status::kInvalid);           // misaligned
  REQUIRE(b.unmap(p, 4 * kMiB) == Status::kOk);
  CHECK(b.mem_info().free_bytes == 4 * kMiB);  // still mapped at q
  REQUIRE(b.unmap(q, 4 * kMiB) == Status::kOk);
  CHECK(b.mem_info().free_bytes == 8 * kMiB);  // gone with its last mapping
  REQUIRE(b.va_release(base, 16 * kMiB) == Status::kOk);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: out of memory at physical allocation", "[conformance]",
                        Backends) {
  TestType f;
  Backend& b = f.backend();
  void* base = nullptr;
  REQUIRE(b.va_reserve(16 * kMiB, &base) == Status::kOk);
  f.fail_next_map_out_of_memory();
  CHECK(b.map(base, 4 * kMiB) == Status::kOutOfMemory);
  CHECK_FALSE(b.last_error().empty());
  CHECK(b.mem_info().free_bytes == 64 * kMiB);
  REQUIRE(b.map(base, 4 * kMiB) == Status::kOk);  // nothing was left mapped
  REQUIRE(b.unmap(base, 4 * kMiB) == Status::kOk);
  REQUIRE(b.va_release(base, 16 * kMiB) == Status::kOk);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: events complete when the work before them has",
                        "[conformance]", Backends) {
  TestType f;
  Backend& b = f.backend();
  Stream s = 0;
  Event e = 0;
  REQUIRE(b.create_stream(&s) == Status::kOk);
  REQUIRE(b.create_event(&e) == Status::kOk);
  CHECK(s != kDefaultStream);
  CHECK(e != kNoEvent);
  CHECK(b.query(e));  // never recorded: complete
  SECTION("synchronize_event") {
    f.hold(s);
    REQUIRE(b.record(e, s) == Status::kOk);
    CHECK_FALSE(b.query(e));
    REQUIRE(b.synchronize_event(e) == Status::kOk);
    CHECK(b.query(e));
  }
  SECTION("synchronize_stream") {
    f.hold(s);
    REQUIRE(b.record(e, s) == Status::kOk);
    CHECK_FALSE(b.query(e));
    REQUIRE(b.synchronize_stream(s) == Status::kOk);
    CHECK(b.query(e));
  }
  SECTION("synchronize_device, and a re-recorded event follows its latest record") {
    REQUIRE(b.record(e, s) == Status::kOk);
    REQUIRE(b.synchronize_device() == Status::kOk);
    CHECK(b.query(e));
    f.hold(s);
    REQUIRE(b.record(e, s) == Status::kOk);
    CHECK_FALSE(b.query(e));
    REQUIRE(b.synchronize_device() == Status::kOk);
    CHECK(b.query(e));
  }
  REQUIRE(b.destroy_event(e) == Status::kOk);
  REQUIRE(b.destroy_stream(s) == Status::kOk);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: stream_wait orders work across streams", "[conformance]",
                        Backends) {
  TestType f;
  Backend& b = f.backend();
  Stream s1 = 0;
  Stream s2 = 0;
  Event e1 = 0;
  Event e2 = 0;
  REQUIRE(b.create_stream(&s1) == Status::kOk);
  REQUIRE(b.create_stream(&s2) == Status::kOk);
  REQUIRE(b.create_event(&e1) == Status::kOk);
  REQUIRE(b.create_event(&e2) == Status::kOk);
  void* dev = nullptr;
  void* host_in = nullptr;
  void* host_out = nullptr;
  constexpr std::size_t kBytes = 256 * kKiB;
  REQUIRE(b.reserve(kBytes, &dev) == Status::kOk);
  REQUIRE(b.host_alloc_pinned(kBytes, &host_in) == Status::kOk);
  REQUIRE(b.host_alloc_pinned(kBytes, &host_out) == Status::kOk);
  const std::vector<unsigned char> in = pattern(kBytes, 2);
  std::memcpy(host_in, in.data(), kBytes);
  std::memset(host_out, 0, kBytes);
  // s1: busy, then the upload; s2 waits for it, then downloads.
  f.hold(s1);
  REQUIRE(b.copy_async(dev, host_in, kBytes, CopyKind::kHostToDevice, s1) == Status::kOk);
  REQUIRE(b.record(e1, s1) == Status::kOk);
  REQUIRE(b.stream_wait(s2, e1) == Status::kOk);
  REQUIRE(b.copy_async(host_out, dev, kBytes, CopyKind::kDeviceToHost, s2) == Status::kOk);
  REQUIRE(b.record(e2, s2) == Status::kOk);
  CHECK_FALSE(b.query(e2));
  CHECK_FALSE(b.query(e1));
  REQUIRE(b.synchronize_stream(s2) == Status::kOk);
  CHECK(b.query(e1));  // s2's completion implies what it waited for
  CHECK(b.query(e2));
  CHECK(std::memcmp(host_out, in.data(), kBytes) == 0);
  REQUIRE(b.release(dev, kBytes) == Status::kOk);
  REQUIRE(b.host_free_pinned(host_in) == Status::kOk);
  REQUIRE(b.host_free_pinned(host_out) == Status::kOk);
  for (Event e : {e1, e2}) REQUIRE(b.destroy_event(e) == Status::kOk);
  for (Stream s : {s1, s2}) REQUIRE(b.destroy_stream(s) == Status::kOk);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: copies are asynchronous and bit-exact in every direction",
                        "[conformance]", Backends) {
  TestType f;
  Backend& b = f.backend();
  constexpr std::size_t kBytes = 3 * kMiB + 123;
  Stream s = 0;
  REQUIRE(b.create_stream(&s) == Status::kOk);
  void* a = nullptr;
  void* c = nullptr;
  void* h_in = nullptr;
  void* h_out = nullptr;
  REQUIRE(b.reserve(kBytes, &a) == Status::kOk);
  REQUIRE(b.reserve(kBytes, &c) == Status::kOk);
  REQUIRE(b.host_alloc_pinned(kBytes, &h_in) == Status::kOk);
  REQUIRE(b.host_alloc_pinned(kBytes, &h_out) == Status::kOk);
  const std::vector<unsigned char> in = pattern(kBytes, 3);
  std::memcpy(h_in, in.data(), kBytes);
  std::memset(h_out, 0, kBytes);
  f.hold(s);
  REQUIRE(b.copy_async(a, h_in, kBytes, CopyKind::kHostToDevice, s) == Status::kOk);
  REQUIRE(b.copy_async(c, a, kBytes, CopyKind::kDeviceToDevice, s) == Status::kOk);
  REQUIRE(b.copy_async(h_out, c, kBytes, CopyKind::kDeviceToHost, s) == Status::kOk);
  CHECK(static_cast<unsigned char*>(h_out)[0] == 0);  // not before the host waits
  REQUIRE(b.synchronize_stream(s) == Status::kOk);
  CHECK(std::memcmp(h_out, in.data(), kBytes) == 0);
  CHECK(b.copy_async(h_out, c, 0, CopyKind::kDeviceToHost, s) == Status::kOk);  // empty copy
  REQUIRE(b.release(a, kBytes) == Status::kOk);
  REQUIRE(b.release(c, kBytes) == Status::kOk);
  REQUIRE(b.host_free_pinned(h_in) == Status::kOk);
  REQUIRE(b.host_free_pinned(h_out) == Status::kOk);
  REQUIRE(b.destroy_stream(s) == Status::kOk);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: pinned host memory against its capacity", "[conformance]",
                        Backends) {
  TestType f(Capacity{.pinned_bytes = 4 * kMiB});
  Backend& b = f.backend();
  void* h = nullptr;
  void* g = nullptr;
  REQUIRE(b.host_alloc_pinned(3 * kMiB, &h) == Status::kOk);
  std::memset(h, 0x3c, 3 * kMiB);  // host memory: the host writes it directly
  CHECK(static_cast<unsigned char*>(h)[3 * kMiB - 1] == 0x3c);
  CHECK(b.host_alloc_pinned(2 * kMiB, &g) == Status::kOutOfMemory);
  CHECK(g == nullptr);
  CHECK_FALSE(b.last_error().empty());
  REQUIRE(b.host_free_pinned(h) == Status::kOk);
  f.allow_driver_violations(1);  // the driver is told to free a pointer it does not know
  CHECK(b.host_free_pinned(h) == Status::kInvalid);
  REQUIRE(b.host_alloc_pinned(4 * kMiB, &g) == Status::kOk);
  REQUIRE(b.host_free_pinned(g) == Status::kOk);
  f.check_clean();
}

TEMPLATE_LIST_TEST_CASE("conformance: identity and clock", "[conformance]", Backends) {
  TestType f;
  Backend& b = f.backend();
  CHECK(b.device_index() == 0);
  CHECK(std::string(b.name()).size() > 0);
  const std::uint64_t t0 = b.now_ns();
  CHECK(b.now_ns() >= t0);
  f.check_clean();
}
