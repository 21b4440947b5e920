// stress: a seeded multi-threaded stress of the whole timeshare::Allocator on the sim backend with
// real host memory behind every block (backing = true).
//
//   stress [--ops N] [--threads T] [--seed S] [--policy P] [--phases K] [--max-live BYTES]
//          [--capacity BYTES]
//     P: torch | timeshare | torch-expandable | all (default all: the three in turn)
//
// Every thread runs N/T operations on its own streams and the shared default stream: mallocs of
// random sizes from 1 byte to hundreds of MiB (total live bytes bounded by --max-live), frees of
// its own blocks, frees of blocks other threads handed over (after record_stream on the freeing
// thread's stream), record_stream on other threads' streams with simulated kernels queued there,
// and, interleaved, empty_cache, stats, counters and predictor stats. Checks, after every step:
//   - a new block overlaps no live block (a shadow map of every live block, locked);
//   - every block still holds, at free, the pattern written over it at allocation (head, tail and
//     14 interior stamps, a function of the block's serial and the byte's offset);
//   - stats are consistent (reserved >= allocated, counts >= 0) whenever read;
//   - at every phase boundary (all threads stopped) the allocator's live blocks equal the shadow;
//   - at the end everything is freed, allocated bytes return to 0 and, after a device
//     synchronisation and empty_cache, reserved bytes do too.
// Prints ops/s per policy; exits 1 on the first failure with what was wrong.
//
// tests/cpp/test_stress.cpp includes this file with TIMESHARE_STRESS_LIBRARY defined (no main).
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "timeshare/allocator/allocator.h"
#include "timeshare/common/options.h"
#include "timeshare/common/units.h"
#include "timeshare/device/sim/sim_backend.h"

namespace timeshare::stress {

inline constexpr std::size_t kHeadStampBytes = 64;
inline constexpr std::size_t kInteriorStamps = 14;
inline constexpr std::size_t kInteriorStampBytes = 8;
inline constexpr std::size_t kMaxLiveBlocksPerThread = 96;
inline constexpr std::size_t kStreamsPerThread = 2;
inline constexpr std::size_t kMaxFailures = 8;
inline constexpr std::uint64_t kMaxKernelNs = 50'000;
inline constexpr std::uint64_t kMaxAdvanceNs = 20'000;

struct StressConfig {
  std::uint64_t ops = 1'000'000;  // total over all threads
  int threads = 4;
  std::uint64_t seed = 1;
  std::string policy = "timeshare";  // torch | timeshare | torch-expandable
  int phases = 4;                    // full cross-checks against live_blocks() between phases
  std::size_t capacity_bytes = 4 * kGiB;
  std::size_t max_live_bytes = 1536 * kMiB;
  std::size_t max_block_bytes = 300 * kMiB;
  // Per-operation odds (out of 1'000'000) of the interleaved calls.
  std::uint32_t empty_cache_ppm = 50;
  std::uint32_t stats_ppm = 1'000;
};

struct StressResult {
  std::uint64_t ops = 0;
  std::uint64_t mallocs = 0;
  std::uint64_t frees = 0;
  std::uint64_t cross_thread_frees = 0;
  std::uint64_t record_streams = 0;
  std::uint64_t empty_caches = 0;
  std::uint64_t stats_calls = 0;
  std::uint64_t ooms = 0;
  std::uint64_t bytes_allocated = 0;
  std::size_t peak_live_bytes = 0;
  std::int64_t peak_reserved_bytes = 0;
  double seconds = 0.0;
  std::vector<std::string> failures;
  bool ok() const { return failures.empty(); }
};

// Conf string of a policy name; empty for an unknown name.
inline std::string conf_of(const std::string& policy) {
  if (policy == "torch") return "policy:torch";
  if (policy == "timeshare") return "policy:timeshare,predictor:hybrid";
  if (policy == "torch-expandable") return "policy:torch,expandable_segments:true";
  return "";
}

// ---- patterns -----------------------------------------------------------------------------------

inline std::uint8_t pattern_byte(std::uint64_t serial, std::size_t offset) {
  std::uint64_t x = serial * 0x9E3779B97F4A7C15ull + offset * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  return static_cast<std::uint8_t>(x >> 24);
}

// Calls f(offset, bytes) for every stamped range of a block of `size` bytes.
template <class F>
void for_each_stamp(std::size_t size, F&& f) {
  const std::size_t head = std::min(size, kHeadStampBytes);
  f(std::size_t{0}, head);
  f(size - head, head);
  if (size <= 2 * kHeadStampBytes) return;
  for (std::size_t i = 1; i <= kInteriorStamps; ++i) {
    const std::size_t off = size / (kInteriorStamps + 1) * i;
    f(off, std::min(kInteriorStampBytes, size - off));
  }
}

inline void write_pattern(void* p, std::size_t size, std::uint64_t serial) {
  auto* b = static_cast<std::uint8_t*>(p);
  for_each_stamp(size, [&](std::size_t off, std::size_t n) {
    for (std::size_t i = off; i < off + n; ++i) b[i] = pattern_byte(serial, i);
  });
}

// Offset of the first byte that differs from the pattern, or SIZE_MAX when intact.
inline std::size_t check_pattern(const void* p, std::size_t size, std::uint64_t serial) {
  const auto* b = static_cast<const std::uint8_t*>(p);
  std::size_t bad = SIZE_MAX;
  for_each_stamp(size, [&](std::size_t off, std::size_t n) {
    for (std::size_t i = off; i < off + n && bad == SIZE_MAX; ++i) {
      if (b[i] != pattern_byte(serial, i)) bad = i;
    }
  });
  return bad;
}

// ---- shadow map of live blocks ------------------------------------------------------------------

class Shadow {
 public:
  // Adds [addr, addr+bytes); "" or one line naming the block it overlaps.
  std::string insert(std::uintptr_t addr, std::size_t bytes, std::uint64_t serial) {
    std::lock_guard lock(mu_);
    auto next = blocks_.upper_bound(addr);
    if (next != blocks_.end() && next->first < addr + bytes) return overlap(addr, bytes, *next);
    if (next != blocks_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second.bytes > addr) return overlap(addr, bytes, *prev);
    }
    blocks_.emplace(addr, Entry{bytes, serial});
    return "";
  }
  // Removes the block at `addr`; false when no live block starts there with that size.
  bool erase(std::uintptr_t addr, std::size_t bytes) {
    std::lock_guard lock(mu_);
    auto it = blocks_.find(addr);
    if (it == blocks_.end() || it->second.bytes != bytes) return false;
    blocks_.erase(it);
    return true;
  }
  std::vector<std::pair<std::uintptr_t, std::size_t>> blocks() const {
    std::lock_guard lock(mu_);
    std::vector<std::pair<std::uintptr_t, std::size_t>> out;
    out.reserve(blocks_.size());
    for (const auto& [a, e] : blocks_) out.emplace_back(a, e.bytes);
    return out;
  }

 private:
  struct Entry {
    std::size_t bytes;
    std::uint64_t serial;
  };
  static std::string overlap(std::uintptr_t addr, std::size_t bytes,
                             const std::pair<const std::uintptr_t, Entry>& other) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "block %#zx+%zu overlaps live block %#zx+%zu (serial %llu)",
                  static_cast<std::size_t>(addr), bytes, static_cast<std::size_t>(other.first),
                  other.second.bytes, static_cast<unsigned long long>(other.second.serial));
    return buf;
  }
  mutable std::mutex mu_;
  std::map<std::uintptr_t, Entry> blocks_;
};

// ---- the run ------------------------------------------------------------------------------------

struct LiveBlock {
  void* ptr;
  std::size_t bytes;
  std::uint64_t serial;
  device::Stream stream;
};

class StressRun {
 public:
  StressRun(const StressConfig& config, Allocator& allocator, device::SimBackend& sim)
      : config_(config), allocator_(allocator), sim_(sim) {}

  StressResult run() {
    const int n_threads = std::max(1, config_.threads);
    for (int t = 0; t < n_threads * static_cast<int>(kStreamsPerThread); ++t) {
      device::Stream s = 0;
      if (sim_.create_stream(&s) != device::Status::kOk) fail("create_stream failed");
      streams_.push_back(s);
    }
    const int phases = std::max(1, config_.phases);
    std::barrier sync(n_threads, [this]() noexcept { cross_check(); });
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    std::vector<std::vector<LiveBlock>> lives(n_threads);
    for (int t = 0; t < n_threads; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(config_.seed * 1'000'003 + static_cast<std::uint64_t>(t));
        const std::uint64_t per_phase = config_.ops / n_threads / phases;
        for (int ph = 0; ph < phases; ++ph) {
          for (std::uint64_t i = 0; i < per_phase && !stop_.load(std::memory_order_relaxed); ++i) {
            step(t, rng, lives[t]);
          }
          sync.arrive_and_wait();
        }
      });
    }
    for (auto& th : threads) th.join();
    result_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // Tear down: free every block left (own and handed over), then everything must be back.
    for (auto& live : lives) {
      for (const auto& b : live) release(b, /*cross_thread=*/false);
    }
    for (const auto& b : mailbox_) release(b, /*cross_thread=*/true);
    mailbox_.clear();
    final_checks();
    result_.ops = ops_.load();
    result_.mallocs = mallocs_.load();
    result_.frees = frees_.load();
    result_.cross_thread_frees = cross_frees_.load();
    result_.record_streams = record_streams_.load();
    result_.empty_caches = empty_caches_.load();
    result_.stats_calls = stats_calls_.load();
    result_.ooms = ooms_.load();
    result_.bytes_allocated = bytes_allocated_.load();
    result_.peak_live_bytes = peak_live_bytes_.load();
    return std::move(result_);
  }

 private:
  void fail(const std::string& what) {
    std::lock_guard lock(fail_mu_);
    if (result_.failures.size() < kMaxFailures) result_.failures.push_back(what);
    stop_.store(true);
  }

  std::size_t random_size(std::mt19937_64& rng) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const double band = u(rng);
    double lo = 1.0, hi = 4096.0;  // log-uniform inside a band
    if (band >= 0.45 && band < 0.75) lo = 4096.0, hi = static_cast<double>(kMiB);
    else if (band >= 0.75 && band < 0.92) lo = static_cast<double>(kMiB), hi = 20.0 * kMiB;
    else if (band >= 0.92 && band < 0.99) lo = 20.0 * kMiB, hi = 100.0 * kMiB;
    else if (band >= 0.99) lo = 100.0 * kMiB, hi = static_cast<double>(config_.max_block_bytes);
    const double x = std::exp(std::log(lo) + u(rng) * (std::log(hi) - std::log(lo)));
    return std::max<std::size_t>(1, static_cast<std::size_t>(x));
  }

  device::Stream pick_stream(int t, std::mt19937_64& rng) {
    const std::uint64_t r = rng() % (kStreamsPerThread + 1);
    return r == kStreamsPerThread ? device::kDefaultStream : streams_[t * kStreamsPerThread + r];
  }

  void step(int t, std::mt19937_64& rng, std::vector<LiveBlock>& live) {
    ops_.fetch_add(1, std::memory_order_relaxed);
    const std::uint32_t roll = static_cast<std::uint32_t>(rng() % 1'000'000);
    if (roll < config_.empty_cache_ppm) {
      allocator_.empty_cache();
      empty_caches_.fetch_add(1, std::memory_order_relaxed);
    } else if (roll < config_.empty_cache_ppm + config_.stats_ppm) {
      check_stats();
    }
    if (rng() % 10 == 0) sim_.advance(rng() % kMaxAdvanceNs);
    if (rng() % 16 == 0) take_from_mailbox(t, rng);
    const bool want_free = !live.empty() &&
                           (live.size() >= kMaxLiveBlocksPerThread || rng() % 100 < 45);
    if (want_free) {
      const std::size_t i = rng() % live.size();
      const LiveBlock b = live[i];
      live[i] = live.back();
      live.pop_back();
      if (rng() % 20 == 0) {  // hand it to whichever thread takes it next
        std::lock_guard lock(mailbox_mu_);
        mailbox_.push_back(b);
        return;
      }
      if (rng() % 8 == 0) use_on_other_stream(b, rng);
      release(b, /*cross_thread=*/false);
      return;
    }
    std::size_t bytes = random_size(rng);
    if (!reserve_live(bytes)) {
      bytes = std::min<std::size_t>(bytes, 64 * kKiB);  // stay under the bound: small only
      if (!reserve_live(bytes)) return;
    }
    const device::Stream s = pick_stream(t, rng);
    void* p = allocator_.malloc(bytes, s);
    if (!p) {
      live_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
      ooms_.fetch_add(1, std::memory_order_relaxed);
      if (allocator_.last_oom_message().empty()) fail("malloc returned nullptr with no message");
      return;
    }
    const std::uint64_t serial = next_serial_.fetch_add(1, std::memory_order_relaxed);
    const std::string overlap = shadow_.insert(reinterpret_cast<std::uintptr_t>(p), bytes, serial);
    if (!overlap.empty()) {
      fail(allocator_.pool_name() + std::string(": ") + overlap);
      return;
    }
    write_pattern(p, bytes, serial);
    if (rng() % 4 == 0) sim_.enqueue_work(s, rng() % kMaxKernelNs);
    // A pointer inside a live block is never a block of its own.
    if (rng() % 64 == 0 && allocator_.free(static_cast<char*>(p) + 1)) {
      fail("free of an interior pointer was accepted");
    }
    mallocs_.fetch_add(1, std::memory_order_relaxed);
    bytes_allocated_.fetch_add(bytes, std::memory_order_relaxed);
    const std::size_t now_live = live_bytes_.load(std::memory_order_relaxed);
    std::size_t peak = peak_live_bytes_.load(std::memory_order_relaxed);
    while (now_live > peak && !peak_live_bytes_.compare_exchange_weak(peak, now_live)) {
    }
    live.push_back({p, bytes, serial, s});
  }

  // Counts `bytes` as live if that keeps the total under the bound (atomically, for all threads).
  bool reserve_live(std::size_t bytes) {
    std::size_t cur = live_bytes_.load(std::memory_order_relaxed);
    do {
      if (cur + bytes > config_.max_live_bytes) return false;
    } while (!live_bytes_.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
    return true;
  }

  void use_on_other_stream(const LiveBlock& b, std::mt19937_64& rng) {
    const device::Stream other = streams_[rng() % streams_.size()];
    if (!allocator_.record_stream(b.ptr, other)) fail("record_stream refused a live block");
    sim_.enqueue_work(other, rng() % kMaxKernelNs);
    record_streams_.fetch_add(1, std::memory_order_relaxed);
  }

  void take_from_mailbox(int t, std::mt19937_64& rng) {
    LiveBlock b{};
    {
      std::lock_guard lock(mailbox_mu_);
      if (mailbox_.empty()) return;
      b = mailbox_.front();
      mailbox_.pop_front();
    }
    // Freed by another thread, as a tensor whose last use was on this thread's stream.
    const device::Stream mine = streams_[t * kStreamsPerThread + rng() % kStreamsPerThread];
    if (mine != b.stream) {
      if (!allocator_.record_stream(b.ptr, mine)) fail("record_stream refused a live block");
      sim_.enqueue_work(mine, rng() % kMaxKernelNs);
      record_streams_.fetch_add(1, std::memory_order_relaxed);
    }
    release(b, /*cross_thread=*/true);
  }

  void release(const LiveBlock& b, bool cross_thread) {
    const std::size_t bad = check_pattern(b.ptr, b.bytes, b.serial);
    if (bad != SIZE_MAX) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "%s: block %p+%zu (serial %llu) corrupted at offset %zu",
                    allocator_.pool_name(), b.ptr, b.bytes,
                    static_cast<unsigned long long>(b.serial), bad);
      fail(buf);
    }
    // Out of the shadow first: once freed, the range may be handed to another thread at once.
    if (!shadow_.erase(reinterpret_cast<std::uintptr_t>(b.ptr), b.bytes)) {
      fail("a block being freed was not in the shadow map");
    }
    if (!allocator_.free(b.ptr)) fail("free of a live block was refused");
    live_bytes_.fetch_sub(b.bytes, std::memory_order_relaxed);
    frees_.fetch_add(1, std::memory_order_relaxed);
    if (cross_thread) cross_frees_.fetch_add(1, std::memory_order_relaxed);
  }

  void check_stats() {
    stats_calls_.fetch_add(1, std::memory_order_relaxed);
    const DeviceStats s = allocator_.stats();
    const auto& alloc = s.allocated_bytes[kAggregate];
    const auto& reserved = s.reserved_bytes[kAggregate];
    if (alloc.current < 0 || s.allocation[kAggregate].current < 0) fail("negative allocated stats");
    if (reserved.current < alloc.current) fail("stats: reserved bytes below allocated bytes");
    if (alloc.peak < alloc.current || reserved.peak < reserved.current) fail("stats: peak < current");
    (void)allocator_.counters();
    (void)allocator_.predictor_stats();
    std::lock_guard lock(fail_mu_);
    result_.peak_reserved_bytes = std::max(result_.peak_reserved_bytes, reserved.current);
  }

  // Runs with every thread stopped at the barrier.
  void cross_check() {
    auto mine = shadow_.blocks();
    auto theirs = allocator_.live_blocks();
    std::sort(theirs.begin(), theirs.end());
    if (mine != theirs) {
      fail("live_blocks() (" + std::to_string(theirs.size()) + " blocks) differs from the shadow (" +
           std::to_string(mine.size()) + " blocks)");
    }
    const DeviceStats s = allocator_.stats();
    if (s.allocation[kAggregate].current != static_cast<std::int64_t>(mine.size())) {
      fail("stats: allocation count " + std::to_string(s.allocation[kAggregate].current) +
           " != live blocks " + std::to_string(mine.size()));
    }
  }

  void final_checks() {
    if (!allocator_.live_blocks().empty()) fail("blocks still live after freeing everything");
    if (allocator_.stats().allocated_bytes[kAggregate].current != 0) {
      fail("allocated bytes not 0 after freeing everything");
    }
    sim_.synchronize_device();
    allocator_.empty_cache();
    const DeviceStats s = allocator_.stats();
    if (s.reserved_bytes[kAggregate].current != 0) {
      fail(std::string(allocator_.pool_name()) + ": " +
           std::to_string(s.reserved_bytes[kAggregate].current) +
           " bytes still reserved after synchronize + empty_cache with nothing live");
    }
    result_.peak_reserved_bytes = std::max(result_.peak_reserved_bytes, s.reserved_bytes[kAggregate].peak);
  }

  const StressConfig config_;
  Allocator& allocator_;
  device::SimBackend& sim_;
  Shadow shadow_;
  std::vector<device::Stream> streams_;
  std::mutex mailbox_mu_;
  std::deque<LiveBlock> mailbox_;
  std::mutex fail_mu_;
  StressResult result_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> next_serial_{1};
  std::atomic<std::size_t> live_bytes_{0};
  std::atomic<std::size_t> peak_live_bytes_{0};
  std::atomic<std::uint64_t> ops_{0}, mallocs_{0}, frees_{0}, cross_frees_{0}, record_streams_{0},
      empty_caches_{0}, stats_calls_{0}, ooms_{0}, bytes_allocated_{0};
};

// One stress run of `config.policy` on a fresh backed sim device.
inline StressResult run_stress(const StressConfig& config) {
  StressResult bad;
  const std::string conf = conf_of(config.policy);
  if (conf.empty()) {
    bad.failures.push_back("unknown policy '" + config.policy +
                           "', expected torch, timeshare or torch-expandable");
    return bad;
  }
  ParseResult parsed = parse_options(conf + ",backend:sim,log:error");
  if (!parsed.options) {
    bad.failures.push_back(parsed.error);
    return bad;
  }
  device::SimOptions so;
  so.capacity_bytes = config.capacity_bytes;
  so.backing = true;
  auto backend = std::make_unique<device::SimBackend>(so, 0);
  device::SimBackend& sim = *backend;
  Allocator allocator(*parsed.options, std::move(backend));
  return StressRun(config, allocator, sim).run();
}

}  // namespace timeshare::stress

#ifndef TIMESHARE_STRESS_LIBRARY
namespace {

std::size_t parse_size_arg(const char* text) {
  const auto v = timeshare::parse_bytes(text);
  if (!v) {
    std::fprintf(stderr, "stress: bad size '%s'\n", text);
    std::exit(2);
  }
  return *v;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace timeshare::stress;
  StressConfig config;
  std::string policy = "all";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--ops" && has_value) config.ops = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--threads" && has_value) config.threads = std::atoi(argv[++i]);
    else if (a == "--seed" && has_value) config.seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--policy" && has_value) policy = argv[++i];
    else if (a == "--phases" && has_value) config.phases = std::atoi(argv[++i]);
    else if (a == "--max-live" && has_value) config.max_live_bytes = parse_size_arg(argv[++i]);
    else if (a == "--capacity" && has_value) config.capacity_bytes = parse_size_arg(argv[++i]);
    else {
      std::fprintf(stderr,
                   "usage: stress [--ops N] [--threads T] [--seed S] "
                   "[--policy torch|timeshare|torch-expandable|all] [--phases K] "
                   "[--max-live BYTES] [--capacity BYTES]\n");
      return 2;
    }
  }
  std::vector<std::string> policies = {policy};
  if (policy == "all") policies = {"torch", "timeshare", "torch-expandable"};
  int rc = 0;
  for (const auto& p : policies) {
    config.policy = p;
    const StressResult r = run_stress(config);
    std::printf("%-17s ops %llu in %.2f s: %.0f ops/s (mallocs %llu, frees %llu, cross-thread %llu, "
                "record_stream %llu, empty_cache %llu, stats %llu, ooms %llu, peak live %.1f MiB, "
                "peak reserved %.1f MiB, %.1f GiB allocated) %s\n",
                p.c_str(), static_cast<unsigned long long>(r.ops), r.seconds,
                r.seconds > 0 ? static_cast<double>(r.ops) / r.seconds : 0.0,
                static_cast<unsigned long long>(r.mallocs), static_cast<unsigned long long>(r.frees),
                static_cast<unsigned long long>(r.cross_thread_frees),
                static_cast<unsigned long long>(r.record_streams),
                static_cast<unsigned long long>(r.empty_caches),
                static_cast<unsigned long long>(r.stats_calls),
                static_cast<unsigned long long>(r.ooms),
                static_cast<double>(r.peak_live_bytes) / timeshare::kMiB,
                static_cast<double>(r.peak_reserved_bytes) / timeshare::kMiB,
                static_cast<double>(r.bytes_allocated) / timeshare::kGiB, r.ok() ? "OK" : "FAILED");
    for (const auto& f : r.failures) std::printf("  FAILURE: %s\n", f.c_str());
    if (!r.ok()) rc = 1;
  }
  return rc;
}
#endif  // TIMESHARE_STRESS_LIBRARY
