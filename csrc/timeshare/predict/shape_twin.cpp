#include "timeshare/predict/shape_twin.h"

#include <algorithm>

#include "timeshare/predict/hashing.h"

namespace timeshare::predict {

namespace {
// A longer shape period counts as "the same iteration, repeated" only up to this many times the
// size period: beyond, a near multiple of a short (layer) size period is a coincidence
// (measured: syn_varlen's 99 against its layer period 10 fell within the tolerance).
constexpr std::uint64_t kMaxMultiple = 8;
}  // namespace

AlignedAnswer ShapeTwin::on_alloc(std::uint64_t seq, std::uint64_t now_tick,
                                  std::uint64_t size_period) noexcept {
  const std::uint64_t key = hash_combine(acc_, frees_) | 1;  // never 0 (the rings' "empty")
  const std::uint64_t own = detector_.alignment_period();
  const bool multiple = size_period != 0 && own <= kMaxMultiple * size_period &&
                        near_multiple(size_period, own);
  overrides_ = own > size_period && !multiple;
  const std::uint64_t period = overrides_ ? own : size_period;
  for (int k = kShapeContext - 1; k > 0; --k) recent_[k] = recent_[k - 1];
  recent_[0] = key;
  std::uint64_t context = kSeed;
  for (std::uint64_t r : recent_) context = hash_combine(context, r);
  const AlignedAnswer a = aligned_.on_alloc(seq, context | 1, now_tick, period);
  detector_.push(key);
  acc_ = kSeed;
  frees_ = 0;
  return a;
}

void ShapeTwin::on_free(std::uint64_t alloc_seq, std::uint64_t allocs_so_far) noexcept {
  const std::uint64_t back = allocs_so_far > alloc_seq ? allocs_so_far - alloc_seq : 0;
  acc_ = hash_combine(acc_, std::min<std::uint64_t>(back, kMaxPeriodAllocs));
  ++frees_;
}

}  // namespace timeshare::predict
