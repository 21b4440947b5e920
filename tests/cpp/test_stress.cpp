// A short run of the stress tool (csrc/tools/stress.cpp) on every policy, and checks that its
// checkers do catch what they look for. The long run is scripts/stress.sh (>= 10M operations).
#define TIMESHARE_STRESS_LIBRARY
#include "tools/stress.cpp"

#include <catch2/catch.hpp>

using namespace timeshare;
using namespace timeshare::stress;

namespace {
// Ops per policy: about 1-2 s each in Release on one core, within the sanitizer budgets too.
constexpr std::uint64_t kCiOps = 40'000;
}  // namespace

TEST_CASE("stress: the shadow map refuses overlapping blocks", "[stress]") {
  Shadow shadow;
  CHECK(shadow.insert(1000, 100, 1).empty());
  CHECK(shadow.insert(1100, 50, 2).empty());  // adjacent is fine
  CHECK_FALSE(shadow.insert(1099, 1, 3).empty());   // last byte of the first
  CHECK_FALSE(shadow.insert(900, 101, 4).empty());  // first byte of the first
  CHECK_FALSE(shadow.insert(1120, 1, 5).empty());   // inside the second
  CHECK_FALSE(shadow.erase(1000, 99));              // wrong size
  CHECK(shadow.erase(1000, 100));
  CHECK(shadow.insert(1099, 1, 6).empty());
}

TEST_CASE("stress: the pattern check finds a changed byte anywhere it stamps", "[stress]") {
  for (std::size_t size : {std::size_t{1}, std::size_t{7}, std::size_t{64}, std::size_t{129},
                           std::size_t{4096}, std::size_t{1} << 20}) {
    std::vector<std::uint8_t> buf(size);
    write_pattern(buf.data(), size, 42);
    CHECK(check_pattern(buf.data(), size, 42) == SIZE_MAX);
    CHECK(check_pattern(buf.data(), size, 43) != SIZE_MAX);  // another block's pattern
    buf[size - 1] ^= 1;
    CHECK(check_pattern(buf.data(), size, 42) == size - 1);
    buf[size - 1] ^= 1;
    buf[0] ^= 0x80;
    CHECK(check_pattern(buf.data(), size, 42) == 0);
  }
}

TEST_CASE("stress: unknown policy is an error, not a run", "[stress]") {
  StressConfig c;
  c.policy = "bogus";
  const StressResult r = run_stress(c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.failures[0].find("unknown policy") != std::string::npos);
}

TEST_CASE("stress: short multi-threaded run of every policy", "[stress]") {
  const std::string policy = GENERATE(as<std::string>{}, "torch", "timeshare", "torch-expandable");
  StressConfig c;
  c.policy = policy;
  c.ops = kCiOps;
  c.threads = 4;
  c.seed = 5;
  c.phases = 3;
  c.capacity_bytes = 2 * kGiB;
  c.max_live_bytes = 768 * kMiB;
  c.max_block_bytes = 160 * kMiB;
  c.empty_cache_ppm = 500;
  c.stats_ppm = 5'000;
  const StressResult r = run_stress(c);
  INFO(policy << ": " << (r.failures.empty() ? std::string() : r.failures[0]));
  REQUIRE(r.ok());
  CHECK(r.ops == kCiOps / 4 / 3 * 4 * 3);
  CHECK(r.mallocs == r.frees);
  CHECK(r.mallocs > kCiOps / 4);
  CHECK(r.cross_thread_frees > 0);
  CHECK(r.record_streams > 0);
  CHECK(r.empty_caches > 0);
  CHECK(r.stats_calls > 0);
}
