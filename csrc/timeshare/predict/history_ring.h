// HistoryRing: the rolling window of (features, true lifespan) the LSTM trains on, bounded in
// bytes. Entries are indexed by allocation sequence number (0, 1, 2, ... in allocation order) so
// the trainer sees the allocation sequence in order; the label (log2 lifespan) is filled in when
// the block is freed, and stays NaN for blocks still live (masked out of the loss). The oldest
// entries are overwritten. Not thread-safe: its owner serialises access.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace timeshare::predict {

struct HistorySlice {
  std::uint64_t first_seq = 0;
  std::size_t count = 0;
  int features = 0;
  std::vector<float> x;        // count * features
  std::vector<float> label;    // count; NaN = not yet freed
};

class HistoryRing {
 public:
  HistoryRing(std::size_t max_bytes, int features);

  static std::size_t bytes_per_entry(int features) noexcept {
    return std::size_t(features + 1) * sizeof(float);
  }
  std::size_t capacity_entries() const noexcept { return capacity_; }
  // Bytes held by the ring's storage (never more than the bound passed in).
  std::size_t bytes_reserved() const noexcept;

  // Appends the next allocation (seq must equal end_seq(); a gap restarts the ring).
  void append(std::uint64_t seq, const float* x);
  // Sets the label of `seq` if it is still held; returns whether it was.
  bool set_label(std::uint64_t seq, float log2_life);

  std::uint64_t begin_seq() const noexcept { return end_ - size_; }
  std::uint64_t end_seq() const noexcept { return end_; }
  std::size_t size() const noexcept { return size_; }
  std::uint64_t labels_set() const noexcept { return labels_set_; }

  // Copies entries [max(from_seq, begin_seq()), end_seq()).
  void copy_from(std::uint64_t from_seq, HistorySlice* out) const;

 private:
  int features_;
  std::size_t capacity_;
  std::vector<float> x_;
  std::vector<float> label_;
  std::uint64_t end_ = 0;
  std::size_t size_ = 0;
  std::uint64_t labels_set_ = 0;
};

}  // namespace timeshare::predict
