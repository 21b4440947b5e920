// TemporalPool: its figures — DeviceStats in torch's meanings (count_block, sync_reserved),
// the diagnostics (region_usage, live_blocks) and the out-of-memory description (describe).
#include <set>
#include <sstream>

#include "timeshare/common/units.h"
#include "timeshare/pool/temporal/temporal_pool.h"

namespace timeshare::pool {

namespace {
constexpr std::size_t kSmallBlockBytes = kMiB;  // torch's kSmallSize: small/large pool split
}  // namespace

void TemporalPool::count_block(const Block& b, bool add) noexcept {
  const int pool = b.bytes <= kSmallBlockBytes ? kSmallPool : kLargePool;
  const auto bytes = static_cast<std::int64_t>(b.bytes);
  const auto requested = static_cast<std::int64_t>(b.requested_bytes);
  for (int t : {static_cast<int>(kAggregate), pool}) {
    if (add) {
      stats_.allocation[t].increase(1);
      stats_.allocated_bytes[t].increase(bytes);
      stats_.requested_bytes[t].increase(requested);
    } else {
      stats_.allocation[t].decrease(1);
      stats_.allocated_bytes[t].decrease(bytes);
      stats_.requested_bytes[t].decrease(requested);
    }
  }
}

void TemporalPool::sync_reserved() noexcept {
  const auto mapped = static_cast<std::int64_t>(granules_.mapped_granules());
  const std::uint64_t calls = granules_.map_calls() + granules_.unmap_calls();
  if (mapped == synced_mapped_ && calls == synced_calls_ &&
      stats_.active_bytes.front().current == synced_active_bytes_) {
    return;
  }
  synced_mapped_ = mapped;
  synced_calls_ = calls;
  synced_active_bytes_ = stats_.active_bytes.front().current;
  const auto bytes = mapped * static_cast<std::int64_t>(granules_.granule_bytes());
  for (int t : {static_cast<int>(kAggregate), static_cast<int>(kLargePool)}) {
    const std::int64_t db = bytes - stats_.reserved_bytes[t].current;
    if (db > 0) stats_.reserved_bytes[t].increase(db);
    if (db < 0) stats_.reserved_bytes[t].decrease(-db);
    const std::int64_t ds = mapped - stats_.segment[t].current;
    if (ds > 0) stats_.segment[t].increase(ds);
    if (ds < 0) stats_.segment[t].decrease(-ds);
  }
  const std::int64_t inactive = bytes - stats_.active_bytes.front().current;
  const std::int64_t di = inactive - stats_.inactive_split_bytes.front().current;
  if (di > 0) stats_.inactive_split_bytes.front().increase(di);
  if (di < 0) stats_.inactive_split_bytes.front().decrease(-di);
  stats_.num_device_alloc = static_cast<std::int64_t>(granules_.map_calls() + arenas_.size());
  stats_.num_device_free = static_cast<std::int64_t>(granules_.unmap_calls());
}

std::vector<TemporalPool::RegionUsage> TemporalPool::region_usage() const {
  std::vector<RegionUsage> out(arena_regions(options_));
  std::vector<std::set<std::uintptr_t>> touched(out.size());
  const std::size_t g = granules_.granule_bytes();
  live_.for_each([&](std::uintptr_t addr, const Block& b) {
    out[b.region].blocks += 1;
    out[b.region].bytes += b.bytes;
    for (std::uintptr_t a = addr / g; a <= (addr + b.bytes - 1) / g; ++a) touched[b.region].insert(a);
  });
  for (std::size_t r = 0; r < out.size(); ++r) out[r].granules = touched[r].size();
  return out;
}

const DeviceStats& TemporalPool::stats() const noexcept {
  return stats_;
}

void TemporalPool::reset_peak_stats() noexcept {
  stats_.reset_peak();
}

void TemporalPool::reset_accumulated_stats() noexcept {
  stats_.reset_accumulated();
}

std::vector<TemporalPool::LiveBlockInfo> TemporalPool::live_blocks() const {
  std::vector<LiveBlockInfo> out;
  out.reserve(live_.size());
  live_.for_each([&](std::uintptr_t addr, const Block& b) {
    out.push_back({addr, b.bytes, b.region, b.alloc_id});
  });
  return out;
}

std::string TemporalPool::describe() const {
  std::ostringstream os;
  const std::size_t g = granules_.granule_bytes();
  os << "TemporalPool: " << format_bytes(static_cast<std::size_t>(stats_.allocated_bytes[0].current))
     << " allocated in " << live_.size() << " blocks, "
     << format_bytes(granules_.mapped_granules() * g) << " reserved ("
     << granules_.mapped_granules() << " granules of " << format_bytes(g) << ", "
     << granules_.cached_granules() << " cached and free), " << pending_.size()
     << " blocks waiting for stream events";
  if (limit_bytes_ != 0) os << ", limit " << format_bytes(limit_bytes_);
  os << ".\n";
  for (const auto& a : arenas_) {
    os << "  stream " << a->stream << ":";
    for (std::size_t r = 0; r < a->regions.size(); ++r) {
      const ArenaFreeRanges& fr = a->regions[r];
      const std::size_t used_va = region_va_bytes_ - fr.largest_bytes();
      if (fr.count() <= 1 && used_va == 0) continue;
      os << " region " << r << " (" << fr.count() << " free ranges)";
    }
    os << "\n";
  }
  os << "  Lower the batch size, raise the limit (set_limit_bytes / budget), or call "
        "empty_cache() after a phase change.";
  return os.str();
}

}  // namespace timeshare::pool
