#include "timeshare/predict/history_ring.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace timeshare::predict {

HistoryRing::HistoryRing(std::size_t max_bytes, int features)
    : features_(features),
      capacity_(std::max<std::size_t>(max_bytes / bytes_per_entry(features), 1)),
      x_(capacity_ * std::size_t(features), 0.0f),
      label_(capacity_, std::numeric_limits<float>::quiet_NaN()) {}

std::size_t HistoryRing::bytes_reserved() const noexcept {
  return x_.size() * sizeof(float) + label_.size() * sizeof(float);
}

void HistoryRing::append(std::uint64_t seq, const float* x) {
  if (seq != end_) {  // a gap: what we hold is no longer a contiguous sequence
    size_ = 0;
    end_ = seq;
  }
  const std::size_t slot = end_ % capacity_;
  std::memcpy(&x_[slot * features_], x, sizeof(float) * features_);
  label_[slot] = std::numeric_limits<float>::quiet_NaN();
  ++end_;
  size_ = std::min(size_ + 1, capacity_);
}

bool HistoryRing::set_label(std::uint64_t seq, float log2_life) {
  if (seq < begin_seq() || seq >= end_) return false;
  label_[seq % capacity_] = log2_life;
  ++labels_set_;
  return true;
}

void HistoryRing::copy_from(std::uint64_t from_seq, HistorySlice* out) const {
  const std::uint64_t first = std::max(from_seq, begin_seq());
  const std::size_t n = first < end_ ? std::size_t(end_ - first) : 0;
  out->first_seq = first;
  out->count = n;
  out->features = features_;
  out->x.resize(n * features_);
  out->label.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t slot = (first + i) % capacity_;
    std::memcpy(&out->x[i * features_], &x_[slot * features_], sizeof(float) * features_);
    out->label[i] = label_[slot];
  }
}

}  // namespace timeshare::predict
