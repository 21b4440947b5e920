#include "timeshare/predict/aligned_history.h"

#include <cmath>
#include <cstdlib>

namespace timeshare::predict {

namespace {
constexpr std::uint64_t kRingMask = kMaxPeriodAllocs - 1;
}

AlignedHistory::AlignedHistory() : ring_(kMaxPeriodAllocs) {}

const AlignedHistory::Record* AlignedHistory::at(std::uint64_t seq,
                                                 std::uint64_t back) const noexcept {
  if (back == 0 || back > seq || back >= kMaxPeriodAllocs) return nullptr;
  const Record& r = ring_[(seq - back) & kRingMask];
  return r.seq == seq - back ? &r : nullptr;
}

AlignedAnswer AlignedHistory::on_alloc(std::uint64_t seq, std::uint64_t size_key,
                                       std::uint64_t now_tick, std::uint64_t period) noexcept {
  AlignedAnswer a;
  if (period != period_) {
    period_ = period;
    shift_ = 0;
  }
  if (period != 0) {
    // The kept shift first, then the smallest ones (0, -1, +1, -2, ...): a larger shift can
    // only win where no smaller one matches.
    const Record* twin = nullptr;
    std::uint64_t back = 0;
    for (int d = -1; d <= 2 * kMaxAlignShift && !twin; ++d) {
      const int s = d < 0 ? shift_ : ((d & 1) ? -(d + 1) / 2 : d / 2);
      if (d >= 0 && s == shift_) continue;
      const std::int64_t b = std::int64_t(period) + s;
      if (b <= 0) continue;
      const Record* r = at(seq, std::uint64_t(b));
      if (r && r->size_key == size_key) {
        twin = r;
        back = std::uint64_t(b);
        shift_ = s;
      }
    }
    if (twin) {
      a.found = true;
      if (!std::isnan(twin->life_log2)) {
        a.log2_life = twin->life_log2;
      } else {
        const float age_log2 = float(std::log2(double(std::max<std::uint64_t>(
            now_tick > twin->alloc_tick ? now_tick - twin->alloc_tick : 1, 1))));
        a.from_live = true;
        a.log2_life = age_log2 + kLiveTwinFactorLog2;
        for (int k = 2; k <= kAlignLookbackPeriods; ++k) {
          const Record* r = at(seq, back * std::uint64_t(k));
          if (!r || r->size_key != size_key) break;
          if (std::isnan(r->life_log2)) continue;
          if (r->life_log2 >= age_log2) {
            a.log2_life = r->life_log2;
            a.from_live = false;
          }
          break;
        }
      }
    }
  }
  Record& rec = ring_[seq & kRingMask];
  rec.seq = seq;
  rec.size_key = size_key;
  rec.alloc_tick = now_tick;
  rec.life_log2 = std::numeric_limits<float>::quiet_NaN();
  return a;
}

void AlignedHistory::learn(std::uint64_t seq, float log2_life) noexcept {
  Record& r = ring_[seq & kRingMask];
  if (r.seq == seq) r.life_log2 = log2_life;
}

}  // namespace timeshare::predict
