// SpillEngine's SSD tiering: eviction of the furthest-needed entries from the pinned arena to
// files, and read-ahead of the soonest-needed ones back into the arena. Jobs run on the I/O
// thread; they hold the engine's mutex only to read and update an entry, never during I/O.
#include <algorithm>

#include "timeshare/common/log.h"
#include "timeshare/spill/spill_engine.h"

namespace timeshare::spill {

std::vector<Handle> SpillEngine::by_rank_locked(bool soonest_first) const {
  std::vector<std::pair<std::uint64_t, Handle>> ranked;
  ranked.reserve(entries_.size());
  for (const auto& [h, e] : entries_) ranked.emplace_back(need_.rank(e.key), h);
  std::sort(ranked.begin(), ranked.end());
  if (!soonest_first) std::reverse(ranked.begin(), ranked.end());
  std::vector<Handle> out;
  out.reserve(ranked.size());
  for (const auto& [rank, h] : ranked) out.push_back(h);
  return out;
}

void SpillEngine::schedule_evictions_locked() {
  if (!ssd_ || !ssd_->ready() || !io_) return;
  const auto high = static_cast<std::size_t>(config_.ssd_high_water *
                                             static_cast<double>(arena_.capacity_bytes()));
  for (Handle h : by_rank_locked(/*soonest_first=*/false)) {
    if (arena_.used_bytes() <= high + evicting_bytes_) break;
    Entry& e = entries_.at(h);
    if (!e.pinned || e.staging || e.io_busy || e.restoring || e.evict_failed) continue;
    if (e.on_ssd) {  // read back earlier and still on disk: dropping the pinned copy is enough
      arena_.free(e.pinned);
      e.pinned = nullptr;
      continue;
    }
    e.io_busy = true;
    evicting_bytes_ += e.bytes;
    io_->submit([this, h] { evict_job(h); });
  }
}

void SpillEngine::evict_job(Handle h) {
  const void* src = nullptr;
  std::size_t bytes = 0;
  device::Event ev = device::kNoEvent;
  {
    std::lock_guard lock(mu_);
    const Entry& e = entries_.at(h);  // io_busy keeps the entry alive
    src = e.pinned;
    bytes = e.bytes;
    ev = e.d2h_event;
  }
  backend_.synchronize_event(ev);  // the pinned range holds the data only once the copy is done
  std::string why;
  const IoResult r = ssd_->write(h, src, bytes, &why);
  std::lock_guard lock(mu_);
  Entry& e = entries_.at(h);
  e.io_busy = false;
  evicting_bytes_ -= bytes;
  if (r == IoResult::kOk) {
    e.on_ssd = true;
    arena_.free(e.pinned);
    e.pinned = nullptr;
    stats_.spilled_bytes_ssd += bytes;
    update_peaks_locked();
  } else {
    e.evict_failed = true;
    if (r == IoResult::kFull) {
      ++stats_.ssd_full;
      warn_once_locked(kWarnSsdFull, "spill: " + why + "; spilled data stays in pinned memory");
    } else {
      ++stats_.ssd_write_failures;
      warn_once_locked(kWarnSsdWrite, "spill: " + why + "; spilled data stays in pinned memory");
    }
  }
  io_cv_.notify_all();
}

void SpillEngine::schedule_readahead_locked() {
  if (!ssd_ || !io_) return;
  const auto high = static_cast<std::size_t>(config_.ssd_high_water *
                                             static_cast<double>(arena_.capacity_bytes()));
  const std::size_t limit = kReadaheadFactor * config_.prefetch_bytes;
  std::size_t window = 0;
  for (Handle h : by_rank_locked(/*soonest_first=*/true)) {
    Entry& e = entries_.at(h);
    window += e.bytes;
    if (window > limit) break;
    if (e.pinned || e.io_busy || e.restoring) continue;
    if (arena_.used_bytes() + e.bytes > high) break;
    void* p = arena_.allocate(e.bytes);
    if (!p) break;
    e.io_busy = true;
    reading_bytes_ += e.bytes;
    io_->submit([this, h, p] { readahead_job(h, p); });
  }
}

void SpillEngine::readahead_job(Handle h, void* dst) {
  std::size_t bytes = 0;
  {
    std::lock_guard lock(mu_);
    bytes = entries_.at(h).bytes;
  }
  std::string why;
  const bool ok = ssd_->read(h, dst, bytes, &why);
  std::lock_guard lock(mu_);
  Entry& e = entries_.at(h);
  e.io_busy = false;
  reading_bytes_ -= bytes;
  if (ok) {
    e.pinned = dst;
    stats_.restored_bytes_ssd += bytes;
    update_peaks_locked();
  } else {
    arena_.free(dst);
    ++stats_.ssd_read_failures;
    warn_once_locked(kWarnSsdRead, "spill: " + why + "; the activation stays on SSD");
  }
  io_cv_.notify_all();
}

}  // namespace timeshare::spill
