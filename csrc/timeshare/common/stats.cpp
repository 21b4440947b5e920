#include "timeshare/common/stats.h"

#include <algorithm>

namespace timeshare {

namespace {

constexpr const char* kTypeNames[kNumStatTypes] = {"all", "small_pool", "large_pool"};

template <typename F>
void for_each_array(DeviceStats& s, F&& f) {
  for (StatArray* a : {&s.allocation, &s.segment, &s.active, &s.inactive_split,
                       &s.allocated_bytes, &s.reserved_bytes, &s.active_bytes,
                       &s.inactive_split_bytes, &s.requested_bytes}) {
    for (Stat& st : *a) f(st);
  }
  f(s.oversize_allocations);
  f(s.oversize_segments);
}

void emit(std::vector<std::pair<std::string, std::int64_t>>& out, const char* name,
          const StatArray& a) {
  for (int t = 0; t < kNumStatTypes; ++t) {
    const std::string prefix = std::string(name) + "." + kTypeNames[t] + ".";
    out.emplace_back(prefix + "current", a[t].current);
    out.emplace_back(prefix + "peak", a[t].peak);
    out.emplace_back(prefix + "allocated", a[t].allocated);
    out.emplace_back(prefix + "freed", a[t].freed);
  }
}

}  // namespace

void DeviceStats::reset_peak() noexcept {
  for_each_array(*this, [](Stat& st) { st.reset_peak(); });
}

void DeviceStats::reset_accumulated() noexcept {
  for_each_array(*this, [](Stat& st) { st.reset_accumulated(); });
  num_alloc_retries = num_ooms = num_sync_all_streams = 0;
  num_device_alloc = num_device_free = 0;
}

std::vector<std::pair<std::string, std::int64_t>> to_torch_keys(const DeviceStats& s) {
  std::vector<std::pair<std::string, std::int64_t>> out;
  emit(out, "allocation", s.allocation);
  emit(out, "segment", s.segment);
  emit(out, "active", s.active);
  emit(out, "inactive_split", s.inactive_split);
  emit(out, "allocated_bytes", s.allocated_bytes);
  emit(out, "reserved_bytes", s.reserved_bytes);
  emit(out, "active_bytes", s.active_bytes);
  emit(out, "inactive_split_bytes", s.inactive_split_bytes);
  emit(out, "requested_bytes", s.requested_bytes);
  out.emplace_back("num_alloc_retries", s.num_alloc_retries);
  out.emplace_back("num_ooms", s.num_ooms);
  out.emplace_back("num_sync_all_streams", s.num_sync_all_streams);
  out.emplace_back("num_device_alloc", s.num_device_alloc);
  out.emplace_back("num_device_free", s.num_device_free);
  for (const auto& [name, st] : {std::pair{"oversize_allocations", &s.oversize_allocations},
                                  std::pair{"oversize_segments", &s.oversize_segments}}) {
    const std::string prefix = std::string(name) + ".";
    out.emplace_back(prefix + "current", st->current);
    out.emplace_back(prefix + "peak", st->peak);
    out.emplace_back(prefix + "allocated", st->allocated);
    out.emplace_back(prefix + "freed", st->freed);
  }
  out.emplace_back("max_split_size", s.max_split_size);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace timeshare
