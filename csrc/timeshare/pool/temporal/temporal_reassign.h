// TemporalReassignQueue — the seed's re-assignment queue: space promised by predicted death.
//
// Every block the pool places (of at least `min_bytes`) is watched with its predicted death
// tick (now + predicted lifespan), in a min-heap: the queue is ordered by when the space is
// expected to come back. When the clock passes a watched block's predicted death:
//   * if the block really is gone, its slot (address, size, region) is promised to the next
//     upcoming allocation that fits it: a request of the same region whose size is between
//     half the slot and the slot claims exactly that slot, before best fit is asked, so a
//     periodic program reuses the slot its previous iteration used instead of splitting some
//     other free range or growing the arena;
//   * if the block is still live (a wrong prediction), nothing is promised and requests take
//     the next-best placement (the normal best fit); the prediction costs nothing else.
// A promise expires after `horizon_events` ticks, and at most `max_promises` are kept.
// The pool checks that a claimed slot is still free and mapped before using it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <queue>
#include <vector>

namespace timeshare::pool {

struct TemporalPromise {
  std::uintptr_t addr = 0;
  std::size_t bytes = 0;
  std::uint32_t arena = 0;
  std::uint32_t region = 0;
  std::uint64_t alloc_id = 0;      // tells a block from a later one at the same address
  std::uint64_t since_events = 0;  // when the promise was made
};

class TemporalReassignQueue {
 public:
  TemporalReassignQueue(std::size_t min_bytes, std::uint64_t horizon_events,
                        std::size_t max_promises)
      : min_bytes_(min_bytes), horizon_events_(horizon_events), max_promises_(max_promises) {}

  // Watches a block placed now that is predicted to die at `death_events`.
  void watch(std::uint64_t death_events, const TemporalPromise& p) {
    if (p.bytes < min_bytes_) return;
    watched_.push({death_events, p});
  }

  // Turns every watched block whose predicted death has come into a promise when
  // `is_gone(promise)` says it was freed; drops it otherwise (wrong prediction).
  template <class IsGone>
  void advance(std::uint64_t now_events, IsGone&& is_gone) {
    while (!watched_.empty() && watched_.top().death_events <= now_events) {
      TemporalPromise p = watched_.top().promise;
      watched_.pop();
      ++due_;
      if (!is_gone(p)) {
        ++still_live_;
        continue;
      }
      p.since_events = now_events;
      promised_.push_back(p);
      if (promised_.size() > max_promises_) promised_.pop_front();
    }
    while (!promised_.empty() && now_events - promised_.front().since_events > horizon_events_) {
      promised_.pop_front();
    }
  }

  // The earliest promise of `arena`/`region` that a request of `bytes` fits (half the slot
  // or more); removed from the queue when found.
  bool claim(std::uint32_t arena, std::uint32_t region, std::size_t bytes, TemporalPromise* out) {
    for (auto it = promised_.begin(); it != promised_.end(); ++it) {
      if (it->arena != arena || it->region != region) continue;
      if (bytes > it->bytes || bytes * 2 < it->bytes) continue;
      *out = *it;
      promised_.erase(it);
      return true;
    }
    return false;
  }

  bool empty() const noexcept { return promised_.empty(); }
  std::uint64_t due() const noexcept { return due_; }              // watched blocks that came due
  std::uint64_t still_live() const noexcept { return still_live_; }  // of those, mispredicted

 private:
  struct Watched {
    std::uint64_t death_events;
    TemporalPromise promise;
    bool operator>(const Watched& o) const noexcept { return death_events > o.death_events; }
  };

  std::size_t min_bytes_;
  std::uint64_t horizon_events_;
  std::size_t max_promises_;
  std::priority_queue<Watched, std::vector<Watched>, std::greater<>> watched_;
  std::deque<TemporalPromise> promised_;
  std::uint64_t due_ = 0;
  std::uint64_t still_live_ = 0;
};

}  // namespace timeshare::pool
