#include "timeshare/replay/oracle_planner.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <numeric>

#include "timeshare/common/units.h"

namespace timeshare::trace {

namespace {

constexpr std::uint64_t kNone = ~std::uint64_t{0};

struct Range {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

// Disjoint, non-adjacent address intervals [begin, end), merged on insert.
class IntervalSet {
 public:
  void insert(std::uint64_t begin, std::uint64_t end) {
    auto it = map_.upper_bound(begin);
    if (it != map_.begin() && std::prev(it)->second >= begin) --it;
    while (it != map_.end() && it->first <= end) {
      begin = std::min(begin, it->first);
      end = std::max(end, it->second);
      it = map_.erase(it);
    }
    map_.emplace_hint(it, begin, end);
  }
  // The first interval ending after `offset` (none: {kNone, kNone}).
  Range next_after(std::uint64_t offset) const {
    auto it = map_.upper_bound(offset);
    if (it != map_.begin() && std::prev(it)->second > offset) --it;
    if (it == map_.end()) return {kNone, kNone};
    return {it->first, it->second};
  }
  bool empty() const noexcept { return map_.empty(); }

 private:
  std::map<std::uint64_t, std::uint64_t> map_;
};

struct Interval {
  std::uint64_t begin = 0;  // allocation ordinal
  std::uint64_t end = 0;    // allocations made before the free (exclusive)
  std::uint64_t bytes = 0;  // rounded
};

// The time index over allocation ordinals described in the header.
class TimeIndex {
 public:
  TimeIndex(std::uint64_t allocs, const std::vector<Interval>& intervals)
      : allocs_(allocs), intervals_(intervals) {
    buckets_ = std::max<std::uint64_t>(1, (allocs + kOracleBucketAllocs - 1) / kOracleBucketAllocs);
    leaves_ = 1;
    while (leaves_ < buckets_) leaves_ *= 2;
    cover_.resize(2 * leaves_);
    sub_.resize(2 * leaves_);
    stamp_.assign(2 * leaves_, 0);
    partial_.resize(buckets_);
  }

  // Lowest offset where `bytes` fit beside every placed block whose lifetime meets `iv`.
  // A sweep over the union of the gathered sets: a heap holds, per set, its first interval
  // ending after the candidate offset (entries may be stale: refreshed when popped). The
  // candidate jumps past each interval it meets; it fits when the nearest start is far enough.
  std::uint64_t lowest_fit(const Interval& iv, std::uint64_t* jumps) {
    collect(iv);
    const std::size_t k = sets_.size();
    heap_.clear();
    auto next = [&](std::size_t src, std::uint64_t offset) -> Range {
      if (src < k) return sets_[src]->next_after(offset);
      auto it = std::upper_bound(scanned_.begin(), scanned_.end(), offset,
                                 [](std::uint64_t o, const Range& r) { return o < r.begin; });
      if (it != scanned_.begin() && std::prev(it)->end > offset) --it;
      return it == scanned_.end() ? Range{kNone, kNone} : *it;
    };
    auto push = [&](std::size_t src, std::uint64_t offset) {
      const Range r = next(src, offset);
      if (r.begin != kNone) {
        heap_.push_back({r.begin, r.end, src});
        std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
      }
    };
    std::uint64_t offset = 0;
    for (std::size_t src = 0; src < k; ++src) push(src, offset);
    if (!scanned_.empty()) push(k, offset);
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
      const HeapEntry top = heap_.back();
      heap_.pop_back();
      if (top.begin >= offset + iv.bytes) break;  // the nearest interval leaves room
      if (top.end > offset) {
        offset = top.end;
        ++*jumps;
      }
      push(top.source, offset);
    }
    return offset;
  }

  void place(std::uint32_t id, std::uint64_t offset) {
    const Interval& iv = intervals_[id];
    const std::uint64_t begin = offset;
    const std::uint64_t end = offset + iv.bytes;
    const Decomposition& d = decompose(iv);
    ++generation_;
    for (std::uint64_t node : d.canonical) {
      cover_[node].insert(begin, end);
      for (std::uint64_t x = node; x >= 1 && stamp_[x] != generation_; x /= 2) {
        stamp_[x] = generation_;
        sub_[x].insert(begin, end);
      }
    }
    for (std::uint64_t bucket : d.partial) {
      partial_[bucket].push_back(id);
      for (std::uint64_t x = leaves_ + bucket; x >= 1 && stamp_[x] != generation_; x /= 2) {
        stamp_[x] = generation_;
        sub_[x].insert(begin, end);
      }
    }
  }

  void set_offsets(const std::vector<std::uint64_t>* offsets) { offsets_ = offsets; }

 private:
  struct Decomposition {
    std::vector<std::uint64_t> canonical;  // tree nodes covering whole buckets
    std::vector<std::uint64_t> partial;    // buckets met only in part (at most two)
  };

  bool covers_bucket(const Interval& iv, std::uint64_t bucket) const noexcept {
    const std::uint64_t lo = bucket * kOracleBucketAllocs;
    const std::uint64_t hi = std::min(lo + kOracleBucketAllocs, allocs_);
    return iv.begin <= lo && iv.end >= hi;
  }

  // Fills d_ (reused scratch: no allocation per block).
  const Decomposition& decompose(const Interval& iv) {
    Decomposition& d = d_;
    d.canonical.clear();
    d.partial.clear();
    const std::uint64_t first = iv.begin / kOracleBucketAllocs;
    const std::uint64_t last = (iv.end - 1) / kOracleBucketAllocs;
    std::uint64_t lo = first;
    std::uint64_t hi = last + 1;
    if (!covers_bucket(iv, first)) {
      d.partial.push_back(first);
      lo = first + 1;
    }
    if (last != first && !covers_bucket(iv, last)) {
      d.partial.push_back(last);
      hi = last;
    }
    for (std::uint64_t l = lo + leaves_, r = hi + leaves_; l < r; l /= 2, r /= 2) {
      if (l & 1) d.canonical.push_back(l++);
      if (r & 1) d.canonical.push_back(--r);
    }
    return d;
  }

  // Gathers the sets (and scanned boundary blocks) meeting `iv` in time.
  void collect(const Interval& iv) {
    sets_.clear();
    scanned_.clear();
    const Decomposition& d = decompose(iv);
    ++generation_;
    auto add_ancestor_covers = [&](std::uint64_t from) {
      for (std::uint64_t x = from; x >= 1 && stamp_[x] != generation_; x /= 2) {
        stamp_[x] = generation_;
        if (!cover_[x].empty()) sets_.push_back(&cover_[x]);
      }
    };
    for (std::uint64_t node : d.canonical) {
      if (!sub_[node].empty()) sets_.push_back(&sub_[node]);
    }
    // A canonical node's own cover is inside its sub set: walk up from its parent.
    for (std::uint64_t node : d.canonical) add_ancestor_covers(node / 2);
    for (std::uint64_t bucket : d.partial) {
      add_ancestor_covers(leaves_ + bucket);
      for (std::uint32_t other : partial_[bucket]) {
        const Interval& o = intervals_[other];
        if (o.begin < iv.end && iv.begin < o.end) {
          const std::uint64_t off = (*offsets_)[other];
          scanned_.push_back({off, off + o.bytes});
        }
      }
    }
    // Sort and merge the scanned blocks so they can be searched like a set.
    std::sort(scanned_.begin(), scanned_.end(),
              [](const Range& a, const Range& b) { return a.begin < b.begin; });
    std::size_t out = 0;
    for (const Range& r : scanned_) {
      if (out > 0 && r.begin <= scanned_[out - 1].end) {
        scanned_[out - 1].end = std::max(scanned_[out - 1].end, r.end);
      } else {
        scanned_[out++] = r;
      }
    }
    scanned_.resize(out);
  }

  const std::uint64_t allocs_;
  const std::vector<Interval>& intervals_;
  const std::vector<std::uint64_t>* offsets_ = nullptr;
  std::uint64_t buckets_ = 1;
  std::uint64_t leaves_ = 1;
  std::vector<IntervalSet> cover_;
  std::vector<IntervalSet> sub_;
  std::vector<std::uint64_t> stamp_;  // visit marks, by generation
  std::uint64_t generation_ = 0;
  std::vector<std::vector<std::uint32_t>> partial_;
  std::vector<const IntervalSet*> sets_;
  Decomposition d_;
  std::vector<Range> scanned_;  // boundary-bucket blocks meeting the query, merged
  struct HeapEntry {
    std::uint64_t begin;
    std::uint64_t end;
    std::size_t source;
    bool operator>(const HeapEntry& o) const noexcept { return begin > o.begin; }
  };
  std::vector<HeapEntry> heap_;
};

std::vector<Interval> lifetimes(const Event* events, std::size_t n, std::uint64_t* allocs_out) {
  std::vector<Interval> intervals;
  std::uint64_t allocs = 0;
  for (std::size_t i = 0; i < n; ++i) allocs += events[i].op == Op::kAlloc;
  intervals.resize(allocs);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    if (e.op == Op::kAlloc) {
      intervals[e.id] = {seen, allocs, round_up(std::max<std::uint64_t>(e.bytes, 1),
                                                kOracleAlignmentBytes)};
      ++seen;
    } else {
      intervals[e.id].end = seen;
    }
  }
  *allocs_out = allocs;
  return intervals;
}

}  // namespace

OraclePlan plan_oracle(const Event* events, std::size_t n) {
  const auto start = std::chrono::steady_clock::now();
  OraclePlan plan;
  std::uint64_t allocs = 0;
  const std::vector<Interval> intervals = lifetimes(events, n, &allocs);
  plan.offset_bytes.assign(allocs, 0);
  plan.size_bytes.resize(allocs);
  for (std::uint64_t i = 0; i < allocs; ++i) plan.size_bytes[i] = intervals[i].bytes;
  if (allocs > 0) {
    std::vector<std::uint32_t> order(allocs);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
      return intervals[a].bytes > intervals[b].bytes;
    });
    TimeIndex index(allocs, intervals);
    index.set_offsets(&plan.offset_bytes);
    for (std::uint32_t id : order) {
      const std::uint64_t offset = index.lowest_fit(intervals[id], &plan.gap_jumps);
      plan.offset_bytes[id] = offset;
      index.place(id, offset);
      plan.arena_bytes = std::max(plan.arena_bytes, offset + intervals[id].bytes);
    }
  }
  plan.plan_ns = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                         std::chrono::steady_clock::now() - start)
                                         .count());
  return plan;
}

bool oracle_plan_is_valid(const Event* events, std::size_t n, const OraclePlan& plan) {
  // Sweep events in order keeping live blocks by offset; each new block must not overlap its
  // neighbours in address.
  std::map<std::uint64_t, std::uint64_t> live;  // offset -> end
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    const std::uint64_t off = plan.offset_bytes[e.id];
    if (e.op == Op::kFree) {
      live.erase(off);
      continue;
    }
    const std::uint64_t end = off + plan.size_bytes[e.id];
    auto it = live.lower_bound(off);
    if (it != live.end() && it->first < end) return false;
    if (it != live.begin() && std::prev(it)->second > off) return false;
    live.emplace(off, end);
  }
  return true;
}

}  // namespace timeshare::trace
