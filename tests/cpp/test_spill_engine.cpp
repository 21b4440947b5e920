// The spill engine on the sim backend with real backing memory: bit-exact round trips, stream
// ordering, SSD tier, faults (data always stays somewhere), prefetch order, make_room.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/spill/make_room.h"
#include "timeshare/spill/spill_engine.h"

using namespace timeshare;
using namespace timeshare::spill;
using device::Status;

namespace {

device::SimOptions backed() {
  device::SimOptions o;
  o.capacity_bytes = 256 * kMiB;
  o.backing = true;
  o.pinned_capacity_bytes = 256 * kMiB;
  return o;
}

struct DeviceBuffer {
  device::SimBackend& b;
  void* ptr = nullptr;
  std::size_t bytes;
  // Throws rather than REQUIRE: buffers are also made on worker threads, and Catch2's
  // assertions are not thread-safe (ThreadSanitizer reports their counters).
  DeviceBuffer(device::SimBackend& backend, std::size_t n) : b(backend), bytes(n) {
    if (b.reserve(n, &ptr) != Status::kOk) throw std::runtime_error("sim reserve failed");
  }
  ~DeviceBuffer() { b.release(ptr, bytes); }
  void fill(std::uint32_t seed) {
    std::mt19937 rng(seed);
    auto* p = static_cast<std::uint8_t*>(ptr);
    for (std::size_t i = 0; i < bytes; ++i) p[i] = static_cast<std::uint8_t>(rng());
  }
  std::vector<std::uint8_t> bytes_now() const {
    auto* p = static_cast<const std::uint8_t*>(ptr);
    return {p, p + bytes};
  }
};

bool same(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) { return a == b; }

std::filesystem::path fresh_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() /
           ("ts-spill-test-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(d);
  return d;
}

}  // namespace

TEST_CASE("spill engine: bit-exact round trip through pinned memory", "[spill]") {
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 16 * kMiB});
  REQUIRE(eng.init().empty());
  CHECK(b.counters().pinned_bytes == 16 * kMiB);
  DeviceBuffer src(b, 3 * kMiB + 17);
  src.fill(1);
  const auto expect = src.bytes_now();
  const Handle h = eng.spill(src.ptr, src.bytes, device::kDefaultStream, 0);
  REQUIRE(h != kNoHandle);
  CHECK_FALSE(eng.spill_complete(h));  // the copy takes virtual time
  eng.wait_spill(h);
  CHECK(eng.spill_complete(h));
  src.fill(2);  // the device memory is reused by someone else
  DeviceBuffer dst(b, src.bytes);
  REQUIRE(eng.restore(h, dst.ptr, device::kDefaultStream, /*host_wait=*/true) == Status::kOk);
  CHECK(same(dst.bytes_now(), expect));
  eng.release(h);
  const SpillStats s = eng.stats();
  CHECK(s.spills == 1);
  CHECK(s.restores == 1);
  CHECK(s.spilled_bytes_pinned == src.bytes);
  CHECK(s.restored_bytes_pinned == src.bytes);
  CHECK(s.late_restores == 1);  // a demand restore
  CHECK(s.entries == 0);
  CHECK(b.counters().pinned_bytes == 16 * kMiB);  // still one pinned allocation
}

TEST_CASE("spill engine: copies are ordered by events, not device syncs", "[spill]") {
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 8 * kMiB});
  REQUIRE(eng.init().empty());
  DeviceBuffer src(b, kMiB);
  src.fill(3);
  const auto expect = src.bytes_now();
  constexpr std::uint64_t kKernelNs = 1'000'000;
  b.enqueue_work(device::kDefaultStream, kKernelNs);  // the kernel producing src
  const Handle h = eng.spill(src.ptr, src.bytes, device::kDefaultStream, 0);
  b.advance(kKernelNs / 2);
  CHECK_FALSE(eng.spill_complete(h));  // waits for the kernel first
  b.advance(kKernelNs);
  CHECK(eng.spill_complete(h));
  src.fill(4);
  DeviceBuffer dst(b, kMiB);
  const std::uint64_t before = b.stream_tail_ns(device::kDefaultStream);
  REQUIRE(eng.restore(h, dst.ptr, device::kDefaultStream, /*host_wait=*/false) == Status::kOk);
  // The compute stream now waits for the restore's copy (about 40 us for 1 MiB at 25 B/ns).
  CHECK(b.stream_tail_ns(device::kDefaultStream) > before);
  b.synchronize_stream(device::kDefaultStream);
  CHECK(same(dst.bytes_now(), expect));
  eng.release(h);
}

TEST_CASE("spill engine: arena reuse after release, waiting for the restore copy", "[spill]") {
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 2 * kMiB});
  REQUIRE(eng.init().empty());
  DeviceBuffer src(b, 2 * kMiB);
  DeviceBuffer dst(b, 2 * kMiB);
  for (std::uint32_t round = 0; round < 4; ++round) {
    src.fill(round);
    const auto expect = src.bytes_now();
    const Handle h = eng.spill(src.ptr, src.bytes, device::kDefaultStream, round);
    REQUIRE(h != kNoHandle);  // the whole arena again: the previous range was freed
    REQUIRE(eng.restore(h, dst.ptr, device::kDefaultStream, false) == Status::kOk);
    eng.release(h);  // the range is reused only after the restore copy completes
    b.synchronize_device();
    CHECK(same(dst.bytes_now(), expect));
  }
  CHECK(eng.arena().peak_used_bytes() == 2 * kMiB);
}

TEST_CASE("spill engine: pinned arena full keeps the data on the device", "[spill][faults]") {
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 2 * kMiB});
  REQUIRE(eng.init().empty());
  DeviceBuffer a(b, 1536 * kKiB);
  DeviceBuffer c(b, kMiB);
  a.fill(5);
  c.fill(6);
  const auto expect_c = c.bytes_now();
  const Handle ha = eng.spill(a.ptr, a.bytes, device::kDefaultStream, 0);
  REQUIRE(ha != kNoHandle);
  CHECK(eng.spill(c.ptr, c.bytes, device::kDefaultStream, 1) == kNoHandle);
  CHECK(eng.stats().pinned_full == 1);
  b.synchronize_device();
  CHECK(same(c.bytes_now(), expect_c));  // untouched
  eng.release(ha);
}

TEST_CASE("spill engine: no pinned memory at all keeps everything resident", "[spill][faults]") {
  device::SimBackend b(backed());
  b.fail_pinned_at(1);
  SpillEngine eng(b, {.pinned_bytes = 2 * kMiB});
  CHECK_FALSE(eng.init().empty());
  DeviceBuffer a(b, kMiB);
  CHECK(eng.spill(a.ptr, a.bytes, device::kDefaultStream, 0) == kNoHandle);
}

TEST_CASE("spill engine: copy failures leave the data where it is", "[spill][faults]") {
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 4 * kMiB});
  REQUIRE(eng.init().empty());
  DeviceBuffer src(b, kMiB);
  src.fill(7);
  const auto expect = src.bytes_now();
  b.fail_copy_at(1);
  CHECK(eng.spill(src.ptr, src.bytes, device::kDefaultStream, 0) == kNoHandle);
  CHECK(eng.stats().copy_failures == 1);
  CHECK(eng.arena().used_bytes() == 0);  // the range went back
  const Handle h = eng.spill(src.ptr, src.bytes, device::kDefaultStream, 0);
  REQUIRE(h != kNoHandle);
  eng.wait_spill(h);
  src.fill(8);
  DeviceBuffer dst(b, kMiB);
  b.fail_copy_at(1);
  CHECK(eng.restore(h, dst.ptr, device::kDefaultStream, true) == Status::kError);
  CHECK(eng.stats().copy_failures == 2);
  CHECK(eng.tier_of(h) == Tier::kPinned);  // still there
  std::vector<std::uint8_t> host(kMiB);
  REQUIRE(eng.copy_to_host(h, host.data()));
  CHECK(same(host, expect));
  REQUIRE(eng.restore(h, dst.ptr, device::kDefaultStream, true) == Status::kOk);
  CHECK(same(dst.bytes_now(), expect));
  eng.release(h);
}

TEST_CASE("spill engine: SSD tier round trip, furthest-needed entries go to disk", "[spill][ssd]") {
  const auto dir = fresh_dir("ssd");
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 4 * kMiB, .ssd = true, .spill_dir = dir.string(),
                      .prefetch_bytes = kMiB});
  REQUIRE(eng.init().empty());
  constexpr int kEntries = 10;
  std::vector<std::unique_ptr<DeviceBuffer>> bufs;
  std::vector<std::vector<std::uint8_t>> expect;
  std::vector<Handle> hs;
  for (int i = 0; i < kEntries; ++i) {
    bufs.push_back(std::make_unique<DeviceBuffer>(b, kMiB));
    bufs.back()->fill(100 + i);
    expect.push_back(bufs.back()->bytes_now());
    const Handle h = eng.spill(bufs.back()->ptr, kMiB, device::kDefaultStream, i);
    REQUIRE(h != kNoHandle);  // SSD makes room, never refuses
    hs.push_back(h);
  }
  eng.drain_io();
  // Backward order is last-in-first-out: the earliest packs are needed last, so they went to SSD.
  CHECK(eng.tier_of(hs.front()) == Tier::kSsd);
  CHECK(eng.tier_of(hs.back()) == Tier::kPinned);
  SpillStats s = eng.stats();
  CHECK(s.spilled_bytes_ssd >= (kEntries - 4) * kMiB);
  CHECK(s.current_ssd_bytes > 0);
  CHECK(s.current_pinned_bytes <= 4 * kMiB);
  for (Handle h : hs) eng.wait_spill(h);  // the caller frees device memory only after this
  for (auto& buf : bufs) buf->fill(0);
  for (int i = kEntries - 1; i >= 0; --i) {
    DeviceBuffer dst(b, kMiB);
    REQUIRE(eng.restore(hs[i], dst.ptr, device::kDefaultStream, true) == Status::kOk);
    CHECK(same(dst.bytes_now(), expect[i]));
    eng.release(hs[i]);
  }
  eng.drain_io();
  s = eng.stats();
  CHECK(s.restored_bytes_ssd >= (kEntries - 4) * kMiB);
  CHECK(s.current_ssd_bytes == 0);
  CHECK(std::filesystem::is_empty(dir));  // every file removed
  std::filesystem::remove_all(dir);
}

TEST_CASE("spill engine: SSD write failures keep the data in pinned memory", "[spill][ssd][faults]") {
  // A spill_dir below a regular file can never be created (even as root).
  const auto base = fresh_dir("unwritable");
  std::filesystem::create_directories(base);
  { std::ofstream(base / "file") << "x"; }
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 2 * kMiB, .ssd = true,
                      .spill_dir = (base / "file" / "spill").string()});
  REQUIRE(eng.init().empty());  // the engine works; only the SSD tier does not
  DeviceBuffer a(b, kMiB);
  DeviceBuffer c(b, kMiB);
  DeviceBuffer d(b, kMiB);
  a.fill(11);
  c.fill(12);
  d.fill(13);
  const auto ea = a.bytes_now();
  const auto ec = c.bytes_now();
  const auto ed = d.bytes_now();
  const Handle ha = eng.spill(a.ptr, kMiB, device::kDefaultStream, 0);
  const Handle hc = eng.spill(c.ptr, kMiB, device::kDefaultStream, 1);
  REQUIRE(ha != kNoHandle);
  REQUIRE(hc != kNoHandle);
  CHECK(eng.spill(d.ptr, kMiB, device::kDefaultStream, 2) == kNoHandle);  // stays on device
  eng.drain_io();
  CHECK(eng.stats().current_ssd_bytes == 0);
  CHECK(eng.tier_of(ha) == Tier::kPinned);
  DeviceBuffer dst(b, kMiB);
  REQUIRE(eng.restore(ha, dst.ptr, device::kDefaultStream, true) == Status::kOk);
  CHECK(same(dst.bytes_now(), ea));
  REQUIRE(eng.restore(hc, dst.ptr, device::kDefaultStream, true) == Status::kOk);
  CHECK(same(dst.bytes_now(), ec));
  CHECK(same(d.bytes_now(), ed));
  eng.release(ha);
  eng.release(hc);
  std::filesystem::remove_all(base);
}

TEST_CASE("spill engine: an injected SSD write error keeps that entry pinned", "[spill][ssd][faults]") {
  const auto dir = fresh_dir("inject");
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 4 * kMiB, .ssd = true, .spill_dir = dir.string(),
                      .ssd_high_water = 0.5});
  REQUIRE(eng.init().empty());
  eng.ssd()->fail_write_at(1);
  std::vector<std::unique_ptr<DeviceBuffer>> bufs;
  std::vector<Handle> hs;
  std::vector<std::vector<std::uint8_t>> expect;
  for (int i = 0; i < 3; ++i) {
    bufs.push_back(std::make_unique<DeviceBuffer>(b, kMiB));
    bufs.back()->fill(20 + i);
    expect.push_back(bufs.back()->bytes_now());
    hs.push_back(eng.spill(bufs.back()->ptr, kMiB, device::kDefaultStream, i));
    REQUIRE(hs.back() != kNoHandle);
  }
  eng.drain_io();
  CHECK(eng.stats().ssd_write_failures == 1);
  CHECK(eng.tier_of(hs[0]) == Tier::kPinned);  // its write failed
  for (int i = 2; i >= 0; --i) {
    DeviceBuffer dst(b, kMiB);
    REQUIRE(eng.restore(hs[i], dst.ptr, device::kDefaultStream, true) == Status::kOk);
    CHECK(same(dst.bytes_now(), expect[i]));
    eng.release(hs[i]);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("spill engine: prefetch follows the previous iteration's restore order", "[spill][prefetch]") {
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 16 * kMiB});
  REQUIRE(eng.init().empty());
  DeviceBuffer src(b, kMiB);
  DeviceBuffer dst(b, kMiB);
  src.fill(30);
  const std::vector<std::uint64_t> order = {2, 0, 3, 1};  // not last-in-first-out
  auto spill_all = [&] {
    std::vector<Handle> hs;
    for (std::uint64_t k = 0; k < 4; ++k) hs.push_back(eng.spill(src.ptr, kMiB, 0, k));
    return hs;
  };
  std::vector<Handle> hs = spill_all();
  CHECK(eng.prefetch_candidates(64 * kMiB) == std::vector<Handle>{hs[3], hs[2], hs[1], hs[0]});
  for (std::uint64_t k : order) {
    REQUIRE(eng.restore(hs[k], dst.ptr, 0, true) == Status::kOk);
    eng.release(hs[k]);
  }
  eng.end_iteration();
  hs = spill_all();
  CHECK(eng.prefetch_candidates(64 * kMiB) == std::vector<Handle>{hs[2], hs[0], hs[3], hs[1]});
  CHECK(eng.prefetch_candidates(2 * kMiB) == std::vector<Handle>{hs[2], hs[0]});
  CHECK(eng.prefetch_candidates(kKiB) == std::vector<Handle>{hs[2]});  // always the next one
  CHECK(eng.prefetch_candidates(0).empty());
  // A prefetch that completed before the need is a hit; the candidates move on.
  DeviceBuffer pre(b, kMiB);
  REQUIRE(eng.start_restore(hs[2], pre.ptr, 0, /*prefetch=*/true) == Status::kOk);
  CHECK(eng.prefetch_candidates(2 * kMiB) == std::vector<Handle>{hs[0]});
  b.advance(1'000'000);
  REQUIRE(eng.finish_restore(hs[2], 0, true) == Status::kOk);
  CHECK(eng.stats().prefetch_hits == 1);
  CHECK(same(pre.bytes_now(), src.bytes_now()));
  for (Handle h : hs) eng.release(h);
}

TEST_CASE("spill engine: concurrent spills and restores stay bit-exact", "[spill][threads]") {
  const auto dir = fresh_dir("threads");
  device::SimBackend b(backed());
  SpillEngine eng(b, {.pinned_bytes = 3 * kMiB, .ssd = true, .spill_dir = dir.string(),
                      .prefetch_bytes = kMiB});
  REQUIRE(eng.init().empty());
  constexpr int kThreads = 4;
  constexpr int kRounds = 6;
  std::vector<std::thread> ts;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      DeviceBuffer src(b, 512 * kKiB);
      DeviceBuffer dst(b, 512 * kKiB);
      for (int r = 0; r < kRounds; ++r) {
        src.fill(static_cast<std::uint32_t>(t * 100 + r));
        const auto expect = src.bytes_now();
        const Handle h = eng.spill(src.ptr, src.bytes, 0, static_cast<std::uint64_t>(t * 100 + r));
        if (h == kNoHandle) continue;  // allowed: the data stayed on the device
        eng.wait_spill(h);
        src.fill(0);
        if (eng.restore(h, dst.ptr, 0, true) != Status::kOk || dst.bytes_now() != expect) {
          ++mismatches;
        }
        eng.release(h);
      }
    });
  }
  for (auto& th : ts) th.join();
  CHECK(mismatches == 0);
  eng.drain_io();
  CHECK(eng.stats().entries == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("spill make_room: callbacks run outside any lock, never recursively", "[spill]") {
  int calls = 0;
  const std::uint64_t token = register_make_room([&](int device, std::size_t bytes) -> std::size_t {
    ++calls;
    CHECK(make_room(device, bytes) == 0);  // reached again from inside: no recursion
    return bytes / 2;
  });
  const std::uint64_t token2 = register_make_room([&](int, std::size_t bytes) { return bytes; });
  CHECK(make_room(0, 100) == 100);  // 50 + the remaining 50
  CHECK(calls == 1);
  CHECK(unregister_make_room(token));
  CHECK(unregister_make_room(token2));
  CHECK_FALSE(unregister_make_room(token));
  CHECK(make_room(0, 100) == 0);
}
