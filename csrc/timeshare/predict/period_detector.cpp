#include "timeshare/predict/period_detector.h"

#include <algorithm>

#include "timeshare/predict/hashing.h"

namespace timeshare::predict {

namespace {
constexpr std::size_t kGramTableEntries = std::size_t{1} << 16;
}

PeriodDetector::PeriodDetector(bool prefer_longer)
    : sizes_(kMaxPeriodAllocs, 0), grams_(kGramTableEntries), prefer_longer_(prefer_longer) {}

std::uint64_t PeriodDetector::gram_hash(const std::array<std::uint64_t, kNgram>& gram,
                                        std::uint64_t size_key) noexcept {
  std::uint64_t h = 0x51ed270b27e5a6c1ull;
  h = hash_combine(h, size_key);
  for (int k = 0; k < kNgram - 1; ++k) h = hash_combine(h, gram[k]);
  return h;
}

void PeriodDetector::prefetch_next(std::uint64_t size_key) const noexcept {
  next_size_ = size_key;
  next_hash_ = gram_hash(gram_, size_key);
  next_valid_ = true;
  __builtin_prefetch(&grams_[next_hash_ & (kGramTableEntries - 1)]);
}

std::uint64_t PeriodDetector::size_ago(std::uint64_t back) const noexcept {
  if (back == 0 || back > count_ || back > kMaxPeriodAllocs) return 0;
  return sizes_[(count_ - back) & (kMaxPeriodAllocs - 1)];
}

void PeriodDetector::push(std::uint64_t size_key) {
  const std::uint64_t i = count_;
  // The n-gram slot first: its (likely) cache miss overlaps the candidate scoring below.
  const std::uint64_t h =
      next_valid_ && next_size_ == size_key ? next_hash_ : gram_hash(gram_, size_key);
  next_valid_ = false;
  GramSlot& slot = grams_[h & (kGramTableEntries - 1)];
  __builtin_prefetch(&slot);
  sizes_[i & (kMaxPeriodAllocs - 1)] = size_key;
  for (int k = kNgram - 1; k > 0; --k) gram_[k] = gram_[k - 1];
  gram_[0] = size_key;
  ++count_;

  // Score every candidate on this allocation.
  for (Candidate& c : cand_) {
    if (c.period == 0 || c.period > i) continue;
    bool match = false;
    double weight = 0.0;
    for (int d : {0, -1, 1, -2, 2}) {
      const std::int64_t back = std::int64_t(c.period) + d;
      if (back >= 1 && std::uint64_t(back) <= i &&
          sizes_[(i - std::uint64_t(back)) & (kMaxPeriodAllocs - 1)] == size_key) {
        match = true;
        weight = d == 0 ? 1.0 : kShiftedMatchWeight;
        break;
      }
    }
    c.decayed_matches = c.decayed_matches * (1.0 - kScoreAlpha) + weight;
    c.decayed_checks = c.decayed_checks * (1.0 - kScoreAlpha) + 1.0;
    if (!c.confirmed) {
      ++c.checked;
      c.matches += match;
      if (c.checked >= c.period) {
        if (double(c.matches) >= kConfirmShare * double(c.checked)) {
          c.confirmed = true;
        } else {
          c = Candidate{};  // failed its first cycle
        }
      }
    }
  }

  std::uint64_t gram = 0;
  std::uint64_t distance = 0;
  if (count_ >= kNgram) {
    gram = h | 1;
    if (slot.key == gram) {
      distance = i - slot.at;
      if (distance >= 2 && distance < kMaxPeriodAllocs) consider(distance);
    }
    slot.key = gram;
    slot.at = i;
  }
  const std::uint64_t before = period_;
  choose();
  if (period_ == 0) return;
  const bool same_period = before != 0 && period_ + kShiftTolerance >= before &&
                           period_ <= before + kShiftTolerance;
  if (period_ != before && !same_period) {  // a new period: start a cycle, look for an anchor
    position_ = 0;
    ++cycle_;
    anchor_gram_ = 0;
    anchor_seen_at_ = i;
    return;
  }
  ++position_;
  if (anchor_gram_ == 0 && gram != 0 && distance == period_) {
    anchor_gram_ = gram;
  }
  if (anchor_gram_ != 0 && gram == anchor_gram_) {
    position_ = 0;
    ++cycle_;
    anchor_seen_at_ = i;
    return;
  }
  const std::uint64_t slack = anchor_gram_ ? std::uint64_t(double(period_) * kAnchorSlackShare) : 0;
  if (position_ >= period_ + slack) {
    position_ = 0;
    ++cycle_;
  }
  if (anchor_gram_ != 0 && i - anchor_seen_at_ > 2 * period_ + slack) {
    anchor_gram_ = 0;  // the anchor stopped recurring (shape change): choose another
    anchor_seen_at_ = i;
  }
}

void PeriodDetector::consider(std::uint64_t p) {
  Candidate* slot = nullptr;
  for (Candidate& c : cand_) {
    if (c.period == p) return;
    if (c.period == 0 && !slot) slot = &c;
  }
  if (!slot) {
    // Replace only a confirmed candidate that has decayed below the active score; trials run
    // their full first cycle undisturbed. (Each score computed once.)
    double slot_score = 0.0;
    for (Candidate& c : cand_) {
      if (c.period == period_ || !c.confirmed) continue;
      const double cs = c.score();
      if (cs >= kActiveScore) continue;
      if (!slot || cs < slot_score) {
        slot = &c;
        slot_score = cs;
      }
    }
    if (!slot) return;
  }
  *slot = Candidate{};
  slot->period = p;
}

void PeriodDetector::choose() {
  // Each score (a division) is computed once, and the multiple test (an integer division)
  // only for near ties; the choice is the same as comparing c.score() values directly.
  const Candidate* best = nullptr;
  double bs = 0.0;
  for (const Candidate& c : cand_) {
    if (!c.confirmed) continue;
    const double cs = c.score();
    if (cs < kActiveScore) continue;
    if (!best) {
      best = &c;
      bs = cs;
      continue;
    }
    const bool near = cs > bs - kScoreTieTolerance && cs < bs + kScoreTieTolerance;
    if (near && near_multiple(std::min(c.period, best->period), std::max(c.period, best->period))) {
      if ((c.period < best->period) != prefer_longer_) {
        best = &c;
        bs = cs;
      }
    } else if (cs > bs) {
      best = &c;
      bs = cs;
    }
  }
  const std::uint64_t p = best ? best->period : 0;
  if (p != period_) {
    period_ = p;
    if (p != 0 && first_confirmed_at_ == UINT64_MAX) first_confirmed_at_ = count_ - 1;
  }
  // Alignment may run ahead of confirmation: the longest trial candidate that has matched well
  // so far (its running share, not the decayed score, which starts low by design).
  std::uint64_t align = p;
  for (const Candidate& c : cand_) {
    if (c.confirmed || c.period <= align || c.checked < kProvisionalChecks) continue;
    if (double(c.matches) >= kConfirmShare * double(c.checked)) align = c.period;
  }
  align_period_ = align;
}

}  // namespace timeshare::predict
