// The Allocator front: thread safety, data integrity, unknown pointers, OOM messages, registry.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "timeshare/allocator/allocator.h"
#include "timeshare/allocator/registry.h"
#include "timeshare/device/sim/sim_backend.h"

using namespace timeshare;

namespace {

std::unique_ptr<Allocator> make(const std::string& conf, std::size_t capacity = 2 * kGiB) {
  auto r = parse_options(conf);
  REQUIRE(r.options);
  device::SimOptions so;
  so.capacity_bytes = capacity;
  so.backing = true;
  return std::make_unique<Allocator>(*r.options, std::make_unique<device::SimBackend>(so));
}

}  // namespace

TEST_CASE("allocator: threads share one allocator without corrupting blocks", "[allocator]") {
  const std::string conf = GENERATE(as<std::string>{}, "policy:torch", "policy:timeshare",
                                    "policy:torch,expandable_segments:true");
  INFO(conf);
  auto a = make(conf);
  constexpr int kThreads = 4;
  constexpr int kSteps = 3000;
  std::atomic<int> corrupt{0};
  std::atomic<int> failed_mallocs{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1234 + t);
      std::vector<std::pair<unsigned char*, std::size_t>> live;
      const device::Stream stream = static_cast<device::Stream>(t % 2);
      for (int i = 0; i < kSteps; ++i) {
        if (!live.empty() && (rng() % 100 < 55 || live.size() > 64)) {
          const std::size_t k = rng() % live.size();
          auto [p, n] = live[k];
          const auto tag = static_cast<unsigned char>(reinterpret_cast<std::uintptr_t>(p) >> 9);
          for (std::size_t j = 0; j < n; j += 97) corrupt += p[j] != tag;
          a->free(p);
          live[k] = live.back();
          live.pop_back();
        } else {
          static constexpr std::size_t kSizes[] = {8, 512, 4000, 70'000, 1 << 20, 3 << 20, 11 << 20};
          const std::size_t n = kSizes[rng() % 7];
          auto* p = static_cast<unsigned char*>(a->malloc(n, stream));
          if (!p) {
            ++failed_mallocs;
            continue;
          }
          std::memset(p, static_cast<unsigned char>(reinterpret_cast<std::uintptr_t>(p) >> 9), n);
          live.emplace_back(p, n);
        }
      }
      for (auto [p, n] : live) a->free(p);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(corrupt == 0);
  CHECK(failed_mallocs == 0);
  const DeviceStats s = a->stats();
  CHECK(s.allocated_bytes[kAggregate].current == 0);
  CHECK(s.allocation[kAggregate].current == 0);
  CHECK(a->counters().clock_events == static_cast<std::uint64_t>(s.allocation[kAggregate].allocated +
                                                                 s.allocation[kAggregate].freed));
  CHECK(a->live_blocks().empty());
}

TEST_CASE("allocator: unknown and double frees are refused, counted, harmless", "[allocator]") {
  auto a = make("policy:timeshare");
  int on_stack = 0;
  CHECK_FALSE(a->free(&on_stack));
  void* p = a->malloc(1000, 0);
  REQUIRE(p);
  CHECK(a->free(p));
  CHECK_FALSE(a->free(p));
  CHECK(a->counters().unknown_frees == 2);
  CHECK(a->free(nullptr));
  CHECK(a->malloc(0, 0) == nullptr);
}

TEST_CASE("allocator: out of memory gives an actionable message", "[allocator]") {
  auto a = make("policy:torch,budget:64MiB", 1 * kGiB);
  void* keep = a->malloc(40 * kMiB, 0);
  REQUIRE(keep);
  CHECK(a->malloc(40 * kMiB, 0) == nullptr);
  const std::string msg = a->last_oom_message();
  CHECK(msg.find("CUDA out of memory") != std::string::npos);
  CHECK(msg.find("Tried to allocate 40.00 MiB") != std::string::npos);
  CHECK(msg.find("budget") != std::string::npos);
  CHECK(a->stats().num_ooms >= 1);
  a->free(keep);
  CHECK(a->malloc(40 * kMiB, 0) != nullptr);
}

TEST_CASE("allocator: record_stream only for own blocks", "[allocator]") {
  auto a = make("policy:torch");
  void* p = a->malloc(4096, 0);
  CHECK(a->record_stream(p, 7));
  CHECK_FALSE(a->record_stream(reinterpret_cast<void*>(0x1000), 7));
  a->free(p);
}

TEST_CASE("registry: options are fixed once an allocator serves memory", "[allocator][registry]") {
  REQUIRE(registry::reset().empty());
  auto sim = parse_options("backend:sim,sim_capacity:1GiB,policy:torch");
  REQUIRE(sim.options);
  REQUIRE(registry::configure(*sim.options).empty());
  Allocator* a = registry::get(0);
  REQUIRE(a);
  void* p = a->malloc(1 << 20, 0);
  auto other = parse_options("backend:sim,policy:timeshare");
  CHECK_FALSE(registry::configure(*other.options).empty());
  CHECK(registry::configure(*sim.options).empty());  // identical: accepted
  CHECK_FALSE(registry::reset().empty());            // live block: refused
  a->free(p);
  CHECK(registry::reset().empty());
  CHECK(registry::existing(0) == nullptr);
  std::string error;
  CHECK(registry::get(-1, &error) == nullptr);
  CHECK_FALSE(error.empty());
}
