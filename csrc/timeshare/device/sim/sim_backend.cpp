#include "timeshare/device/sim/sim_backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

namespace timeshare::device {

namespace {

constexpr std::uintptr_t kFakeBase = std::uintptr_t{1} << 44;  // far from any host mapping
constexpr std::size_t kReserveAlignment = 512;
constexpr std::size_t kHostAlignment = 4096;

thread_local std::string t_last_error;

std::uint64_t copy_duration_ns(const SimOptions& o, std::size_t bytes, CopyKind kind) {
  const double rate = kind == CopyKind::kHostToDevice   ? o.h2d_bytes_per_ns
                      : kind == CopyKind::kDeviceToHost ? o.d2h_bytes_per_ns
                                                        : o.d2d_bytes_per_ns;
  return o.copy_latency_ns + static_cast<std::uint64_t>(static_cast<double>(bytes) / rate);
}

}  // namespace

SimBackend::SimBackend(SimOptions options, int device_index)
    : options_(options), device_index_(device_index), fake_next_(kFakeBase) {
  stream_tail_ns_[kDefaultStream] = 0;
}

SimBackend::~SimBackend() {
  std::lock_guard lock(mu_);
  if (options_.backing) {
    for (auto& [ptr, bytes] : reservations_) std::free(ptr);
    for (auto& [base, range] : ranges_) munmap(reinterpret_cast<void*>(base), range.bytes);
  }
  for (auto& [ptr, bytes] : pinned_) std::free(ptr);
}

Status SimBackend::fail(Status s, std::string message) {
  t_last_error = std::move(message);
  return s;
}

bool SimBackend::take_fault(std::uint64_t& countdown) {
  if (countdown == 0) return false;
  return --countdown == 0;
}

Status SimBackend::charge(std::size_t bytes) {
  if (take_fault(reserve_fault_)) return fail(Status::kOutOfMemory, "injected reserve failure");
  if (counters_.reserved_bytes + bytes > options_.capacity_bytes) {
    return fail(Status::kOutOfMemory, "sim device out of memory: " + std::to_string(bytes) +
                                          " bytes asked, " +
                                          std::to_string(options_.capacity_bytes -
                                                         counters_.reserved_bytes) +
                                          " free");
  }
  counters_.reserved_bytes += bytes;
  counters_.peak_reserved_bytes = std::max(counters_.peak_reserved_bytes, counters_.reserved_bytes);
  ++counters_.reserve_calls;
  return Status::kOk;
}

void SimBackend::uncharge(std::size_t bytes) {
  counters_.reserved_bytes -= bytes;
  ++counters_.release_calls;
}

void* SimBackend::next_fake(std::size_t bytes, std::size_t align) {
  fake_next_ = round_up(fake_next_, align);
  void* p = reinterpret_cast<void*>(fake_next_);
  fake_next_ += std::max<std::size_t>(bytes, align);
  return p;
}

Status SimBackend::reserve(std::size_t bytes, void** out) {
  std::lock_guard lock(mu_);
  *out = nullptr;
  if (bytes == 0) return fail(Status::kInvalid, "reserve of 0 bytes");
  if (Status s = charge(bytes); s != Status::kOk) return s;
  // Fake reservations start on a granule so that work-in-flight tracking (per granule) never
  // mixes two reservations.
  void* p = options_.backing ? std::aligned_alloc(kHostAlignment, round_up(bytes, kHostAlignment))
                             : next_fake(bytes, std::max(kReserveAlignment, options_.granule_bytes));
  if (!p) {
    uncharge(bytes);
    return fail(Status::kOutOfMemory, "host memory backing the sim device is exhausted");
  }
  reservations_[p] = bytes;
  *out = p;
  return Status::kOk;
}

Status SimBackend::release(void* ptr, std::size_t bytes) {
  std::lock_guard lock(mu_);
  auto it = reservations_.find(ptr);
  if (it == reservations_.end()) return fail(Status::kInvalid, "release of an unknown pointer");
  if (it->second != bytes) return fail(Status::kInvalid, "release with a size other than reserved");
  // cudaFree synchronises the device before it frees: no queued work can still use the range.
  ++counters_.waits;
  for (auto& [s, t] : stream_tail_ns_) now_ns_ = std::max(now_ns_, t);
  run_until(now_ns_);
  check_unmap(reinterpret_cast<std::uintptr_t>(ptr), bytes);  // forgets the (finished) work
  if (options_.backing) std::free(ptr);
  uncharge(bytes);
  reservations_.erase(it);
  return Status::kOk;
}

MemInfo SimBackend::mem_info() {
  std::lock_guard lock(mu_);
  return {options_.capacity_bytes - counters_.reserved_bytes, options_.capacity_bytes};
}

SimBackend::GranuleFlags::GranuleFlags(std::size_t n)
    : words_(n == 0 ? nullptr
                    : static_cast<std::uint64_t*>(std::calloc((n + 63) / 64, sizeof(std::uint64_t)))) {
  if (n != 0 && !words_) throw std::bad_alloc();
}

void SimBackend::GranuleFlags::Free::operator()(std::uint64_t* p) const noexcept { std::free(p); }

void SimBackend::GranuleFlags::set(std::size_t first, std::size_t n, bool value) noexcept {
  for (std::size_t i = first; i < first + n; ++i) {
    const std::uint64_t bit = std::uint64_t{1} << (i % 64);
    std::uint64_t& w = words_[i / 64];
    if (((w & bit) != 0) == value) continue;
    w ^= bit;
    if (value) {
      ++count_;
    } else {
      --count_;
    }
  }
}

Status SimBackend::va_reserve(std::size_t bytes, void** base) {
  std::lock_guard lock(mu_);
  *base = nullptr;
  const std::size_t g = options_.granule_bytes;
  if (bytes == 0 || bytes % g != 0) {
    return fail(Status::kInvalid, "va_reserve size must be a non-zero multiple of the granule");
  }
  void* p = nullptr;
  if (options_.backing) {
    // Over-reserve by one granule so the range can be aligned to a granule boundary.
    void* raw = mmap(nullptr, bytes + g, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (raw == MAP_FAILED) return fail(Status::kOutOfMemory, "mmap of the virtual range failed");
    auto start = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = round_up(start, g);
    if (aligned > start) munmap(raw, aligned - start);
    const std::uintptr_t end = start + bytes + g;
    if (end > aligned + bytes) munmap(reinterpret_cast<void*>(aligned + bytes), end - aligned - bytes);
    p = reinterpret_cast<void*>(aligned);
  } else {
    p = next_fake(bytes, g);
  }
  Range r;
  r.bytes = bytes;
  r.mapped = GranuleFlags(bytes / g);
  ranges_.emplace(reinterpret_cast<std::uintptr_t>(p), std::move(r));
  *base = p;
  return Status::kOk;
}

Status SimBackend::va_release(void* base, std::size_t bytes) {
  std::lock_guard lock(mu_);
  auto it = ranges_.find(reinterpret_cast<std::uintptr_t>(base));
  if (it == ranges_.end() || it->second.bytes != bytes) {
    return fail(Status::kInvalid, "va_release of an unknown range");
  }
  if (it->second.mapped.count() != 0) return fail(Status::kInvalid, "va_release of a range with mapped granules");
  if (options_.backing) munmap(base, bytes);
  ranges_.erase(it);
  return Status::kOk;
}

SimBackend::Range* SimBackend::find_range(void* addr, std::size_t bytes, std::size_t* first) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  const std::size_t g = options_.granule_bytes;
  if (bytes == 0 || a % g != 0 || bytes % g != 0) return nullptr;
  auto it = ranges_.upper_bound(a);
  if (it == ranges_.begin()) return nullptr;
  --it;
  if (a + bytes > it->first + it->second.bytes) return nullptr;
  *first = (a - it->first) / g;
  return &it->second;
}

Status SimBackend::map(void* addr, std::size_t bytes) {
  std::lock_guard lock(mu_);
  std::size_t first = 0;
  Range* r = find_range(addr, bytes, &first);
  if (!r) return fail(Status::kInvalid, "map outside a reserved range or not granule-aligned");
  const std::size_t n = bytes / options_.granule_bytes;
  for (std::size_t i = first; i < first + n; ++i) {
    if (r->mapped.test(i)) return fail(Status::kInvalid, "map of an already mapped granule");
  }
  if (Status s = charge(bytes); s != Status::kOk) return s;
  if (options_.backing && mprotect(addr, bytes, PROT_READ | PROT_WRITE) != 0) {
    uncharge(bytes);
    return fail(Status::kError, "mprotect failed while mapping");
  }
  r->mapped.set(first, n, true);
  return Status::kOk;
}

Status SimBackend::unmap(void* addr, std::size_t bytes) {
  std::lock_guard lock(mu_);
  std::size_t first = 0;
  Range* r = find_range(addr, bytes, &first);
  if (!r) return fail(Status::kInvalid, "unmap outside a reserved range or not granule-aligned");
  const std::size_t n = bytes / options_.granule_bytes;
  for (std::size_t i = first; i < first + n; ++i) {
    if (!r->mapped.test(i)) return fail(Status::kInvalid, "unmap of a granule that is not mapped");
  }
  run_until(now_ns_);
  check_unmap(reinterpret_cast<std::uintptr_t>(addr), bytes);
  if (options_.backing) {
    drop_copies_into(reinterpret_cast<std::uintptr_t>(addr), bytes);
    madvise(addr, bytes, MADV_DONTNEED);
    mprotect(addr, bytes, PROT_NONE);
  }
  r->mapped.set(first, n, false);
  // Physical memory goes back with its last mapping (map_alias shares it between addresses).
  std::size_t freed = bytes;
  const std::size_t g = options_.granule_bytes;
  for (std::size_t i = 0; !aliased_.empty() && i < n; ++i) {
    auto it = aliased_.find(reinterpret_cast<std::uintptr_t>(addr) + i * g);
    if (it == aliased_.end()) continue;
    auto ref = phys_refs_.find(it->second);
    if (--ref->second != 0) {
      freed -= g;
    } else {
      phys_refs_.erase(ref);
    }
    aliased_.erase(it);
  }
  uncharge(freed);
  return Status::kOk;
}

Status SimBackend::map_alias(void* addr, const void* from, std::size_t bytes) {
  std::lock_guard lock(mu_);
  std::size_t first = 0;
  std::size_t from_first = 0;
  Range* r = find_range(addr, bytes, &first);
  Range* fr = find_range(const_cast<void*>(from), bytes, &from_first);
  if (!r || !fr) return fail(Status::kInvalid, "map_alias outside a reserved range or not granule-aligned");
  const std::size_t n = bytes / options_.granule_bytes;
  for (std::size_t i = 0; i < n; ++i) {
    if (r->mapped.test(first + i)) return fail(Status::kInvalid, "map_alias onto a mapped granule");
    if (!fr->mapped.test(from_first + i)) return fail(Status::kInvalid, "map_alias from an unmapped granule");
  }
  if (take_fault(reserve_fault_)) return fail(Status::kOutOfMemory, "injected map failure");
  if (options_.backing && mprotect(addr, bytes, PROT_READ | PROT_WRITE) != 0) {
    return fail(Status::kError, "mprotect failed while mapping");
  }
  const std::size_t g = options_.granule_bytes;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uintptr_t src = reinterpret_cast<std::uintptr_t>(from) + i * g;
    auto [it, inserted] = aliased_.try_emplace(src, next_phys_);
    if (inserted) {
      phys_refs_[next_phys_++] = 1;
    }
    ++phys_refs_[it->second];
    aliased_[reinterpret_cast<std::uintptr_t>(addr) + i * g] = it->second;
  }
  r->mapped.set(first, n, true);
  ++counters_.reserve_calls;  // a device call (cuMemMap), but no new physical memory
  return Status::kOk;
}

std::uint64_t& SimBackend::tail(Stream s) {
  auto [it, inserted] = stream_tail_ns_.try_emplace(s, now_ns_);
  if (it->second < now_ns_) it->second = now_ns_;
  return it->second;
}

Status SimBackend::create_stream(Stream* out) {
  std::lock_guard lock(mu_);
  *out = next_stream_++;
  stream_tail_ns_[*out] = now_ns_;
  return Status::kOk;
}

Status SimBackend::destroy_stream(Stream s) {
  std::lock_guard lock(mu_);
  if (s == kDefaultStream) return fail(Status::kInvalid, "cannot destroy the default stream");
  stream_tail_ns_.erase(s);
  return Status::kOk;
}

Status SimBackend::create_event(Event* out) {
  std::lock_guard lock(mu_);
  *out = next_event_++;
  events_[*out] = 0;
  return Status::kOk;
}

Status SimBackend::destroy_event(Event e) {
  std::lock_guard lock(mu_);
  return events_.erase(e) ? Status::kOk : fail(Status::kInvalid, "destroy of an unknown event");
}

Status SimBackend::record(Event e, Stream s) {
  std::lock_guard lock(mu_);
  auto it = events_.find(e);
  if (it == events_.end()) return fail(Status::kInvalid, "record of an unknown event");
  it->second = tail(s);
  return Status::kOk;
}

bool SimBackend::query(Event e) {
  std::lock_guard lock(mu_);
  auto it = events_.find(e);
  if (it == events_.end()) return true;
  run_until(now_ns_);
  return it->second <= now_ns_;
}

Status SimBackend::stream_wait(Stream s, Event e) {
  std::lock_guard lock(mu_);
  auto it = events_.find(e);
  if (it == events_.end()) return fail(Status::kInvalid, "wait on an unknown event");
  std::uint64_t& t = tail(s);
  t = std::max(t, it->second);
  return Status::kOk;
}

Status SimBackend::synchronize_event(Event e) {
  std::lock_guard lock(mu_);
  ++counters_.waits;
  auto it = events_.find(e);
  if (it == events_.end()) return fail(Status::kInvalid, "synchronize on an unknown event");
  now_ns_ = std::max(now_ns_, it->second);
  run_until(now_ns_);
  return Status::kOk;
}

Status SimBackend::synchronize_stream(Stream s) {
  std::lock_guard lock(mu_);
  ++counters_.waits;
  now_ns_ = std::max(now_ns_, tail(s));
  run_until(now_ns_);
  return Status::kOk;
}

Status SimBackend::synchronize_device() {
  std::lock_guard lock(mu_);
  ++counters_.waits;
  for (auto& [s, t] : stream_tail_ns_) now_ns_ = std::max(now_ns_, t);
  run_until(now_ns_);
  return Status::kOk;
}

Status SimBackend::copy_async(void* dst, const void* src, std::size_t bytes, CopyKind kind,
                              Stream s) {
  std::lock_guard lock(mu_);
  if (take_fault(copy_fault_)) return fail(Status::kError, "injected copy failure");
  if (bytes == 0) return Status::kOk;
  if (!dst || !src) return fail(Status::kInvalid, "copy with a null pointer");
  std::uint64_t& t = tail(s);
  t += copy_duration_ns(options_, bytes, kind);
  ++counters_.copies;
  counters_.copied_bytes += bytes;
  // The copy uses its device side(s) until it completes.
  const auto d = reinterpret_cast<std::uintptr_t>(dst);
  const auto h = reinterpret_cast<std::uintptr_t>(src);
  if (kind != CopyKind::kHostToDevice) touch_locked(s, h, bytes, t);
  if (kind != CopyKind::kDeviceToHost) touch_locked(s, d, bytes, t);
  // Bytes move at completion. Without backing, device pointers are fake: model the time only.
  if (options_.backing) copies_.push({t, copy_seq_++, dst, src, bytes});
  return Status::kOk;
}

void SimBackend::run_until(std::uint64_t ns) {
  while (!copies_.empty() && copies_.top().done_ns <= ns) {
    const PendingCopy c = copies_.top();
    copies_.pop();
    std::memmove(c.dst, c.src, c.bytes);
  }
}

Status SimBackend::host_alloc_pinned(std::size_t bytes, void** out) {
  std::lock_guard lock(mu_);
  *out = nullptr;
  if (take_fault(pinned_fault_)) return fail(Status::kOutOfMemory, "injected pinned failure");
  if (bytes == 0) return fail(Status::kInvalid, "pinned allocation of 0 bytes");
  if (counters_.pinned_bytes + bytes > options_.pinned_capacity_bytes) {
    return fail(Status::kOutOfMemory, "sim pinned host memory exhausted");
  }
  void* p = std::aligned_alloc(kHostAlignment, round_up(bytes, kHostAlignment));
  if (!p) return fail(Status::kOutOfMemory, "host memory exhausted");
  pinned_[p] = bytes;
  counters_.pinned_bytes += bytes;
  *out = p;
  return Status::kOk;
}

Status SimBackend::host_free_pinned(void* ptr) {
  std::lock_guard lock(mu_);
  auto it = pinned_.find(ptr);
  if (it == pinned_.end()) return fail(Status::kInvalid, "free of unknown pinned memory");
  counters_.pinned_bytes -= it->second;
  std::free(ptr);
  pinned_.erase(it);
  return Status::kOk;
}

std::uint64_t SimBackend::now_ns() {
  std::lock_guard lock(mu_);
  return now_ns_;
}

std::string SimBackend::last_error() const { return t_last_error; }

void SimBackend::enqueue_work(Stream s, std::uint64_t duration_ns) {
  std::lock_guard lock(mu_);
  tail(s) += duration_ns;
}

void SimBackend::touch(Stream s, const void* addr, std::size_t bytes, std::uint64_t until_ns) {
  std::lock_guard lock(mu_);
  touch_locked(s, reinterpret_cast<std::uintptr_t>(addr), bytes, until_ns);
}

void SimBackend::touch_locked(Stream s, std::uintptr_t addr, std::size_t bytes,
                              std::uint64_t until_ns) {
  std::uint64_t& t = tail(s);
  t = std::max(t, until_ns);
  if (bytes == 0 || until_ns <= now_ns_) return;
  const std::size_t g = options_.granule_bytes;
  for (std::uint64_t k = addr / g; k <= (addr + bytes - 1) / g; ++k) {
    Busy& b = busy_[k];
    int slot = -1;
    for (int i = 0; i < 2 && slot < 0; ++i) {
      if (b.until_ns[i] > now_ns_ && b.stream[i] == s) slot = i;
    }
    for (int i = 0; i < 2 && slot < 0; ++i) {
      if (b.until_ns[i] <= now_ns_) {
        slot = i;
        b.stream[i] = s;
        b.until_ns[i] = 0;
      }
    }
    if (slot < 0) {  // a third stream at once: it shares the slot that ends first
      slot = b.until_ns[0] <= b.until_ns[1] ? 0 : 1;
      b.stream[slot] = s;
    }
    b.until_ns[slot] = std::max(b.until_ns[slot], until_ns);
  }
  if (busy_.size() >= busy_prune_at_) prune_busy();
}

void SimBackend::prune_busy() {
  for (auto it = busy_.begin(); it != busy_.end();) {
    const Busy& b = it->second;
    it = b.until_ns[0] <= now_ns_ && b.until_ns[1] <= now_ns_ ? busy_.erase(it) : std::next(it);
  }
  busy_prune_at_ = std::max<std::size_t>(4096, 2 * busy_.size());
}

void SimBackend::fault(const char* what, std::uintptr_t granule_addr, Stream stream,
                       std::uint64_t busy_until_ns) {
  ++counters_.device_faults;
  if (fault_log_.size() < kSimFaultLogEntries) {
    fault_log_.push_back({granule_addr, stream, what, now_ns_, busy_until_ns});
  }
}

void SimBackend::check_unmap(std::uintptr_t addr, std::size_t bytes) {
  if (busy_.empty() || bytes == 0) return;
  const std::size_t g = options_.granule_bytes;
  for (std::uint64_t k = addr / g; k <= (addr + bytes - 1) / g; ++k) {
    auto it = busy_.find(k);
    if (it == busy_.end()) continue;
    for (int i = 0; i < 2; ++i) {
      if (it->second.until_ns[i] > now_ns_) {
        fault("unmap", k * g, it->second.stream[i], it->second.until_ns[i]);
      }
    }
    busy_.erase(it);
  }
}

void SimBackend::drop_copies_into(std::uintptr_t addr, std::size_t bytes) {
  if (copies_.empty()) return;
  std::vector<PendingCopy> keep;
  while (!copies_.empty()) {
    const PendingCopy c = copies_.top();
    copies_.pop();
    const auto d = reinterpret_cast<std::uintptr_t>(c.dst);
    const auto s = reinterpret_cast<std::uintptr_t>(c.src);
    const bool hits = (d < addr + bytes && addr < d + c.bytes) || (s < addr + bytes && addr < s + c.bytes);
    if (!hits) keep.push_back(c);
  }
  for (const PendingCopy& c : keep) copies_.push(c);
}

std::vector<SimFault> SimBackend::faults() const {
  std::lock_guard lock(mu_);
  return fault_log_;
}

void SimBackend::advance(std::uint64_t ns) {
  std::lock_guard lock(mu_);
  now_ns_ += ns;
  run_until(now_ns_);
}

void SimBackend::set_now(std::uint64_t ns) {
  std::lock_guard lock(mu_);
  now_ns_ = std::max(now_ns_, ns);
  run_until(now_ns_);
}

std::uint64_t SimBackend::stream_tail_ns(Stream s) {
  std::lock_guard lock(mu_);
  return tail(s);
}

void SimBackend::fail_reserve_at(std::uint64_t nth) {
  std::lock_guard lock(mu_);
  reserve_fault_ = nth;
}

void SimBackend::fail_copy_at(std::uint64_t nth) {
  std::lock_guard lock(mu_);
  copy_fault_ = nth;
}

void SimBackend::fail_pinned_at(std::uint64_t nth) {
  std::lock_guard lock(mu_);
  pinned_fault_ = nth;
}

SimCounters SimBackend::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

}  // namespace timeshare::device
