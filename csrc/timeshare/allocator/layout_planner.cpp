#include "timeshare/allocator/layout_planner.h"

#include <algorithm>
#include <unordered_map>
#include <utility>
#include <vector>

#include "timeshare/common/units.h"
#include "timeshare/pool/temporal/temporal_options.h"

namespace timeshare {

LayoutPlanner::LayoutPlanner(std::shared_ptr<pool::PlanBoard> board)
    : board_(std::move(board)), ring_(predict::kMaxPeriodAllocs) {}

void LayoutPlanner::on_alloc(const predict::AllocEvent& e, std::uint64_t predicted_lifespan) {
  Rec& r = ring_[count_ & (ring_.size() - 1)];
  r.alloc_id = e.alloc_id;
  r.bytes = round_up(e.bytes == 0 ? 1 : e.bytes, pool::kPlanAlignBytes);
  r.stream = e.stream;
  r.tick = e.now_events;
  r.life = predicted_lifespan;
  ++count_;
  detector_.push(e.bytes);
  if (!board_) return;
  // The iteration, not a repeated layer's period (period_detector.h).
  const std::uint64_t p = std::max(detector_.period(), detector_.alignment_period());
  // One cycle back must be in the ring too (its ticks give the cycle's length).
  if (p < kMinPlanAllocs || p > kMaxPlanAllocs || count_ < p + 1) return;
  if (count_ - last_plan_at_ < p) return;
  last_plan_at_ = count_;
  std::shared_ptr<pool::LayoutPlan> plan = build(p);
  if (!plan) return;
  // A repeated layer's period (before the iteration's is found) leaves most saved activations
  // living longer than its cycle, unplanned: such a plan would only scatter them.
  if (static_cast<double>(plan->planned) < kMinPlannedShare * static_cast<double>(plan->period)) {
    prev_period_ = 0;
    return;
  }
  // A period seen once may be a provisional one (period_detector.h): publish only a plan whose
  // period the previous build had too.
  const bool stable = plan->period == prev_period_;
  prev_period_ = plan->period;
  if (!stable || !changed(*plan)) return;
  last_ = plan;
  board_->publish(std::move(plan));
}

bool LayoutPlanner::changed(const pool::LayoutPlan& plan) const {
  if (!last_ || last_->period != plan.period || last_->stream != plan.stream) return true;
  // Compare slot by slot at the same phase of the cycle.
  const std::uint64_t p = plan.period;
  const std::uint64_t rot = (plan.start_alloc_id - last_->start_alloc_id) % p;
  std::uint64_t differ = 0;
  for (std::uint64_t j = 0; j < p; ++j) {
    const pool::PlanSlot& a = plan.slots[j];
    const pool::PlanSlot& b = last_->slots[(j + rot) % p];
    // Sizes only: another packing of the same sizes would move live blocks' slots for
    // nothing (the pool checks every slot is free before it takes it).
    if (a.bytes != b.bytes || (a.offset == pool::kNoPlanOffset) != (b.offset == pool::kNoPlanOffset)) {
      ++differ;
    }
  }
  return static_cast<double>(differ) > kReplanChangedShare * static_cast<double>(p);
}

namespace {

// One allocation of the cycle, placed on the cycle's clock.
struct CycleItem {
  std::uint64_t begin = 0;  // ticks from the cycle's start, in [0, cycle)
  std::uint64_t end = 0;    // begin + life (may pass `cycle`: wraps)
  std::uint64_t bytes = 0;
  std::uint32_t slot = 0;
};

// Two lifetimes on the cycle overlap when [a.begin, a.end) meets [b.begin, b.end) shifted by
// -cycle, 0 or +cycle (both are shorter than a cycle).
bool overlap_on_cycle(const CycleItem& a, const CycleItem& b, std::uint64_t cycle) {
  const auto c = static_cast<std::int64_t>(cycle);
  const auto a0 = static_cast<std::int64_t>(a.begin);
  const auto a1 = static_cast<std::int64_t>(a.end);
  for (std::int64_t k = -1; k <= 1; ++k) {
    const std::int64_t b0 = static_cast<std::int64_t>(b.begin) + k * c;
    const std::int64_t b1 = static_cast<std::int64_t>(b.end) + k * c;
    if (a0 < b1 && b0 < a1) return true;
  }
  return false;
}

// Greedy packing of `order` (indices into items): each at the lowest gap that fits among the
// placed items whose lifetimes overlap its own (best_gap: the smallest such gap). Returns the
// top; offsets in `out`.
std::uint64_t pack_greedy(const std::vector<CycleItem>& items, std::uint64_t cycle,
                          const std::vector<std::uint32_t>& order, bool best_gap,
                          std::vector<std::uint64_t>* out) {
  struct Busy {
    std::uint64_t offset = 0;
    std::uint64_t bytes = 0;
  };
  std::vector<Busy> busy;
  out->assign(items.size(), 0);
  std::vector<std::uint32_t> placed;
  placed.reserve(order.size());
  std::uint64_t top = 0;
  for (std::uint32_t i : order) {
    const CycleItem& it = items[i];
    busy.clear();
    for (std::uint32_t o : placed) {
      if (overlap_on_cycle(it, items[o], cycle)) busy.push_back({(*out)[o], items[o].bytes});
    }
    std::sort(busy.begin(), busy.end(),
              [](const Busy& x, const Busy& y) { return x.offset < y.offset; });
    std::uint64_t at = 0;
    std::uint64_t chosen = UINT64_MAX;
    std::uint64_t chosen_gap = UINT64_MAX;
    for (const Busy& b : busy) {
      if (b.offset >= at + it.bytes) {  // the gap [at, b.offset) fits
        const std::uint64_t gap = b.offset - at;
        if (gap < chosen_gap) {
          chosen = at;
          chosen_gap = gap;
        }
        if (!best_gap) break;
      }
      at = std::max(at, b.offset + b.bytes);
    }
    if (chosen == UINT64_MAX) chosen = at;  // above everything that overlaps
    (*out)[i] = chosen;
    placed.push_back(i);
    top = std::max(top, chosen + it.bytes);
  }
  return top;
}

// The packing with the smallest top among the orders tried (measured on the shipped traces,
// each wins on some): largest first, and largest area (bytes x lifetime) first; lowest gap and
// tightest gap. Offsets in `best`.
std::uint64_t pack_best(const std::vector<CycleItem>& items, std::uint64_t cycle,
                        std::vector<std::uint64_t>* best) {
  std::vector<std::uint32_t> by_size(items.size());
  for (std::uint32_t i = 0; i < by_size.size(); ++i) by_size[i] = i;
  std::vector<std::uint32_t> by_area = by_size;
  std::sort(by_size.begin(), by_size.end(), [&](std::uint32_t x, std::uint32_t y) {
    const CycleItem& a = items[x];
    const CycleItem& b = items[y];
    if (a.bytes != b.bytes) return a.bytes > b.bytes;
    if (a.end - a.begin != b.end - b.begin) return a.end - a.begin > b.end - b.begin;
    return a.slot < b.slot;
  });
  std::sort(by_area.begin(), by_area.end(), [&](std::uint32_t x, std::uint32_t y) {
    const CycleItem& a = items[x];
    const CycleItem& b = items[y];
    const double aa = double(a.bytes) * double(a.end - a.begin);
    const double bb = double(b.bytes) * double(b.end - b.begin);
    if (aa != bb) return aa > bb;
    return a.slot < b.slot;
  });
  std::vector<std::uint64_t> offsets;
  std::uint64_t top = UINT64_MAX;
  for (const auto* order : {&by_size, &by_area}) {
    for (bool best_gap : {false, true}) {
      const std::uint64_t t = pack_greedy(items, cycle, *order, best_gap, &offsets);
      if (t < top) {
        top = t;
        best->swap(offsets);
      }
    }
  }
  return items.empty() ? 0 : top;
}

}  // namespace

std::uint64_t LayoutPlanner::dominant_stream(std::uint64_t first) const {
  std::unordered_map<std::uint64_t, std::uint64_t> per_stream;
  for (std::uint64_t s = first; s < count_; ++s) ++per_stream[rec(s).stream];
  std::uint64_t stream = 0;
  std::uint64_t best = 0;
  for (const auto& [s, n] : per_stream) {
    if (n > best || (n == best && s < stream)) {
      stream = s;
      best = n;
    }
  }
  return stream;
}

std::shared_ptr<pool::LayoutPlan> LayoutPlanner::build(std::uint64_t p) const {
  if (p == 0 || count_ < p + 1 || p > ring_.size() / 2) return nullptr;
  const std::uint64_t first = count_ - p;  // sequence number of slot 0
  const std::uint64_t t0 = rec(first).tick;
  // The cycle's length in ticks: from one cycle back to the last allocation.
  const std::uint64_t cycle = rec(count_ - 1).tick - rec(first - 1).tick;
  if (cycle == 0) return nullptr;
  auto plan = std::make_shared<pool::LayoutPlan>();
  plan->period = p;
  plan->start_alloc_id = rec(first).alloc_id;
  plan->stream = dominant_stream(first);
  plan->slots.resize(p);
  // Planned: the allocations on the plan's stream that die within the cycle.
  std::vector<CycleItem> items;
  items.reserve(p);
  for (std::uint64_t j = 0; j < p; ++j) {
    const Rec& r = rec(first + j);
    plan->slots[j].bytes = r.bytes;
    if (r.life == 0 || r.life >= cycle || r.life >= pool::kPermanentLifespanEvents ||
        r.stream != plan->stream) {
      continue;
    }
    const std::uint64_t begin = (r.tick - t0) % cycle;
    items.push_back({begin, begin + r.life, r.bytes, static_cast<std::uint32_t>(j)});
  }
  std::vector<std::uint64_t> offsets;
  const std::uint64_t top = pack_best(items, cycle, &offsets);
  for (std::size_t i = 0; i < items.size(); ++i) plan->slots[items[i].slot].offset = offsets[i];
  plan->planned = items.size();
  plan->footprint_bytes = top;
  return plan;
}

}  // namespace timeshare
