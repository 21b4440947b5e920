// The sim backend is the ground every other test stands on: check its model of memory,
// streams, events, copies and faults.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "timeshare/device/sim/sim_backend.h"

using namespace timeshare;
using namespace timeshare::device;

TEST_CASE("sim: reserve and release count against capacity", "[sim]") {
  SimBackend b({.capacity_bytes = 10 * kMiB});
  void* a = nullptr;
  void* c = nullptr;
  REQUIRE(b.reserve(6 * kMiB, &a) == Status::kOk);
  REQUIRE(reinterpret_cast<std::uintptr_t>(a) % 512 == 0);
  CHECK(b.reserve(6 * kMiB, &c) == Status::kOutOfMemory);
  CHECK(c == nullptr);
  CHECK(b.mem_info().free_bytes == 4 * kMiB);
  REQUIRE(b.release(a, 6 * kMiB) == Status::kOk);
  CHECK(b.release(a, 6 * kMiB) == Status::kInvalid);
  CHECK(b.reserve(10 * kMiB, &c) == Status::kOk);
  CHECK(b.counters().peak_reserved_bytes == 10 * kMiB);
}

TEST_CASE("sim: backed memory is real and writable", "[sim]") {
  SimBackend b({.capacity_bytes = 4 * kMiB, .backing = true});
  void* a = nullptr;
  REQUIRE(b.reserve(kMiB, &a) == Status::kOk);
  std::memset(a, 0x5a, kMiB);
  CHECK(static_cast<unsigned char*>(a)[kMiB - 1] == 0x5a);
  REQUIRE(b.release(a, kMiB) == Status::kOk);
}

TEST_CASE("sim: virtual ranges map and unmap granules", "[sim]") {
  SimBackend b({.capacity_bytes = 8 * kMiB, .backing = true});
  void* base = nullptr;
  REQUIRE(b.va_reserve(64 * kMiB, &base) == Status::kOk);
  REQUIRE(reinterpret_cast<std::uintptr_t>(base) % (2 * kMiB) == 0);
  auto* p = static_cast<char*>(base);
  REQUIRE(b.map(p, 4 * kMiB) == Status::kOk);
  std::memset(p, 1, 4 * kMiB);
  CHECK(b.map(p + 2 * kMiB, 2 * kMiB) == Status::kInvalid);         // already mapped
  CHECK(b.map(p + 4 * kMiB, 6 * kMiB) == Status::kOutOfMemory);     // over capacity
  CHECK(b.map(p + 1, 2 * kMiB) == Status::kInvalid);                // misaligned
  CHECK(b.counters().reserved_bytes == 4 * kMiB);
  CHECK(b.va_release(base, 64 * kMiB) == Status::kInvalid);         // still mapped
  REQUIRE(b.unmap(p, 4 * kMiB) == Status::kOk);
  CHECK(b.counters().reserved_bytes == 0);
  REQUIRE(b.va_release(base, 64 * kMiB) == Status::kOk);
}

TEST_CASE("sim: events complete in stream order on the virtual clock", "[sim]") {
  SimBackend b;
  Stream s = 0;
  Event e = 0;
  REQUIRE(b.create_stream(&s) == Status::kOk);
  REQUIRE(b.create_event(&e) == Status::kOk);
  CHECK(b.query(e));  // never recorded: complete
  b.enqueue_work(s, 1000);
  REQUIRE(b.record(e, s) == Status::kOk);
  CHECK_FALSE(b.query(e));
  b.advance(999);
  CHECK_FALSE(b.query(e));
  b.advance(1);
  CHECK(b.query(e));
  // A stream waiting on an event cannot finish before it.
  Event e2 = 0;
  REQUIRE(b.create_event(&e2) == Status::kOk);
  b.enqueue_work(s, 5000);
  REQUIRE(b.record(e2, s) == Status::kOk);
  REQUIRE(b.stream_wait(kDefaultStream, e2) == Status::kOk);
  CHECK(b.stream_tail_ns(kDefaultStream) == b.stream_tail_ns(s));
  REQUIRE(b.synchronize_event(e2) == Status::kOk);
  CHECK(b.query(e2));
  CHECK(b.now_ns() == 6000);
}

TEST_CASE("sim: copies move bytes only when complete, with the bandwidth model", "[sim]") {
  SimBackend b({.capacity_bytes = 64 * kMiB, .backing = true, .d2h_bytes_per_ns = 1.0,
                .copy_latency_ns = 100});
  void* dev = nullptr;
  void* host = nullptr;
  REQUIRE(b.reserve(4096, &dev) == Status::kOk);
  REQUIRE(b.host_alloc_pinned(4096, &host) == Status::kOk);
  std::memset(dev, 7, 4096);
  std::memset(host, 0, 4096);
  Stream s = 0;
  REQUIRE(b.create_stream(&s) == Status::kOk);
  REQUIRE(b.copy_async(host, dev, 4096, CopyKind::kDeviceToHost, s) == Status::kOk);
  CHECK(static_cast<unsigned char*>(host)[0] == 0);  // not yet
  CHECK(b.stream_tail_ns(s) == 100 + 4096);
  REQUIRE(b.synchronize_stream(s) == Status::kOk);
  CHECK(static_cast<unsigned char*>(host)[4095] == 7);
  REQUIRE(b.host_free_pinned(host) == Status::kOk);
}

TEST_CASE("sim: injected faults fail exactly the nth call", "[sim][faults]") {
  SimBackend b({.capacity_bytes = 64 * kMiB, .backing = true});
  void* p = nullptr;
  b.fail_reserve_at(2);
  REQUIRE(b.reserve(kMiB, &p) == Status::kOk);
  void* q = nullptr;
  CHECK(b.reserve(kMiB, &q) == Status::kOutOfMemory);
  CHECK(q == nullptr);
  CHECK_FALSE(b.last_error().empty());
  CHECK(b.reserve(kMiB, &q) == Status::kOk);
  char buf[16] = {};
  b.fail_copy_at(1);
  CHECK(b.copy_async(buf, p, 16, CopyKind::kDeviceToHost, 0) == Status::kError);
  CHECK(b.copy_async(buf, p, 16, CopyKind::kDeviceToHost, 0) == Status::kOk);
  b.fail_pinned_at(1);
  void* h = nullptr;
  CHECK(b.host_alloc_pinned(64, &h) == Status::kOutOfMemory);
  CHECK(b.host_alloc_pinned(64, &h) == Status::kOk);
  REQUIRE(b.host_free_pinned(h) == Status::kOk);
  REQUIRE(b.synchronize_device() == Status::kOk);
}
