#include "timeshare/spill/spill_engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "timeshare/common/log.h"

namespace timeshare::spill {

using device::Status;

namespace {

std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace

SpillConfig SpillConfig::from_options(const Options& o) {
  SpillConfig c;
  c.pinned_bytes = o.pinned_bytes;
  c.ssd = o.spill == SpillTier::kHostSsd;
  c.spill_dir = o.spill_dir;
  c.prefetch_bytes = o.prefetch_bytes;
  return c;
}

SpillEngine::SpillEngine(device::Backend& backend, SpillConfig config)
    : backend_(backend), config_(std::move(config)), arena_(backend) {}

SpillEngine::~SpillEngine() {
  io_.reset();  // runs the queued I/O (it takes mu_ briefly), then joins
  if (!ready_) return;
  backend_.synchronize_stream(d2h_stream_);
  backend_.synchronize_stream(h2d_stream_);
  for (device::Event e : all_events_) backend_.destroy_event(e);
  backend_.destroy_event(fence_);
  backend_.destroy_stream(d2h_stream_);
  backend_.destroy_stream(h2d_stream_);
  for (auto& [h, e] : entries_) {
    if (e.on_ssd && ssd_) ssd_->remove(h, e.bytes);
  }
}

std::string SpillEngine::init() {
  std::lock_guard lock(mu_);
  if (ready_) return "";
  if (Status s = arena_.init(config_.pinned_bytes); s != Status::kOk) {
    const std::string why = "spill: cannot allocate the pinned arena of " +
                            std::to_string(config_.pinned_bytes) + " bytes (" +
                            device::to_string(s) + ": " + backend_.last_error() +
                            "); activations stay on the device";
    warn_once_locked(kWarnPinned, why);
    return why;
  }
  if (backend_.create_stream(&d2h_stream_) != Status::kOk ||
      backend_.create_stream(&h2d_stream_) != Status::kOk ||
      backend_.create_event(&fence_) != Status::kOk) {
    return "spill: cannot create copy streams: " + backend_.last_error();
  }
  if (config_.ssd) {
    ssd_ = std::make_unique<SsdTier>(config_.spill_dir, config_.ssd_capacity_bytes);
    if (std::string why = ssd_->init(); !why.empty()) {
      warn_once_locked(kWarnSsdWrite, "spill: " + why + "; spilled data stays in pinned memory");
    }
    io_ = std::make_unique<IoQueue>();
  }
  stats_.pinned_capacity_bytes = arena_.capacity_bytes();
  ready_ = true;
  return "";
}

void SpillEngine::warn_once_locked(Warn w, const std::string& message) {
  if (warned_[w]) return;
  warned_[w] = true;
  log().warn("{}", message);
}

device::Event SpillEngine::take_event_locked() {
  if (!free_events_.empty()) {
    const device::Event e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  device::Event e = device::kNoEvent;
  if (backend_.create_event(&e) != Status::kOk) return device::kNoEvent;
  all_events_.push_back(e);
  return e;
}

void SpillEngine::reap_locked() {
  auto done = [this](Deferred& d) {
    for (device::Event e : d.events) {
      if (!backend_.query(e)) return false;
    }
    return true;
  };
  for (auto it = deferred_.begin(); it != deferred_.end();) {
    if (!done(*it)) {
      ++it;
      continue;
    }
    if (it->arena_ptr) arena_.free(it->arena_ptr);
    for (device::Event e : it->events) free_events_.push_back(e);
    it = deferred_.erase(it);
  }
}

void SpillEngine::update_peaks_locked() {
  stats_.peak_pinned_bytes = std::max(stats_.peak_pinned_bytes, arena_.used_bytes());
  if (ssd_) stats_.peak_ssd_bytes = std::max(stats_.peak_ssd_bytes, ssd_->current_bytes());
}

void* SpillEngine::allocate_pinned_locked(Lock& lock, std::size_t bytes) {
  if (void* p = arena_.allocate(bytes)) return p;
  // Ranges whose last copy is still running: wait for them rather than refuse the spill.
  if (!deferred_.empty()) {
    for (Deferred& d : deferred_) {
      for (device::Event e : d.events) backend_.synchronize_event(e);
    }
    reap_locked();
    if (void* p = arena_.allocate(bytes)) return p;
  }
  if (!ssd_ || !ssd_->ready()) return nullptr;
  // Move the furthest-needed entries to SSD until the request fits, waiting for the I/O thread.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kEvictWaitMs);
  for (;;) {
    std::size_t planned = evicting_bytes_;
    for (Handle h : by_rank_locked(/*soonest_first=*/false)) {
      if (arena_.largest_free_bytes() + planned >= bytes + kArenaAlignmentBytes) break;
      Entry& e = entries_.at(h);
      if (!e.pinned || e.staging || e.io_busy || e.restoring || e.evict_failed) continue;
      e.io_busy = true;
      evicting_bytes_ += e.bytes;
      planned += e.bytes;
      io_->submit([this, h] { evict_job(h); });
    }
    if (evicting_bytes_ == 0 && reading_bytes_ == 0) return arena_.allocate(bytes);
    const std::uint64_t t0 = steady_ns();
    io_cv_.wait_until(lock, deadline);
    stats_.wait_ns += steady_ns() - t0;
    reap_locked();
    if (void* p = arena_.allocate(bytes)) return p;
    if (std::chrono::steady_clock::now() >= deadline) return nullptr;
  }
}

Handle SpillEngine::spill(const void* device_ptr, std::size_t bytes, device::Stream compute_stream,
                          std::uint64_t key) {
  Lock lock(mu_);
  if (!ready_ || bytes == 0 || !device_ptr) return kNoHandle;
  reap_locked();
  void* p = allocate_pinned_locked(lock, bytes);
  if (!p) {
    ++stats_.pinned_full;
    warn_once_locked(kWarnPinned, "spill: the pinned arena (" +
                                      std::to_string(arena_.capacity_bytes()) +
                                      " bytes, option pinned) is full; activations that do not "
                                      "fit stay on the device");
    return kNoHandle;
  }
  const device::Event done = take_event_locked();
  Status s = done == device::kNoEvent ? Status::kError : backend_.record(fence_, compute_stream);
  if (s == Status::kOk) s = backend_.stream_wait(d2h_stream_, fence_);
  if (s == Status::kOk) {
    s = backend_.copy_async(p, device_ptr, bytes, device::CopyKind::kDeviceToHost, d2h_stream_);
  }
  if (s == Status::kOk) s = backend_.record(done, d2h_stream_);
  if (s != Status::kOk) {
    // The copy was never queued (or its completion cannot be tracked): wait for whatever was
    // queued, then give the range back. The data stays on the device.
    backend_.synchronize_stream(d2h_stream_);
    arena_.free(p);
    if (done != device::kNoEvent) free_events_.push_back(done);
    ++stats_.copy_failures;
    warn_once_locked(kWarnCopy, std::string("spill: a device-to-host copy failed (") +
                                    device::to_string(s) + ": " + backend_.last_error() +
                                    "); the activation stays on the device");
    return kNoHandle;
  }
  const Handle h = next_handle_++;
  Entry& e = entries_[h];
  e.bytes = bytes;
  e.key = key;
  e.pinned = p;
  e.d2h_event = done;
  ++stats_.spills;
  stats_.spilled_bytes_pinned += bytes;
  update_peaks_locked();
  schedule_evictions_locked();
  return h;
}

bool SpillEngine::spill_complete(Handle h) {
  device::Event ev = device::kNoEvent;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(h);
    if (it == entries_.end()) return true;
    ev = it->second.d2h_event;
  }
  return backend_.query(ev);
}

void SpillEngine::wait_spill(Handle h) {
  device::Event ev = device::kNoEvent;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(h);
    if (it == entries_.end()) return;
    ev = it->second.d2h_event;
  }
  const std::uint64_t t0 = steady_ns();
  backend_.synchronize_event(ev);
  std::lock_guard lock(mu_);
  stats_.wait_ns += steady_ns() - t0;
}

void SpillEngine::wait_io_locked(Lock& lock, Entry*& e, Handle h) {
  if (!e->io_busy) return;
  const std::uint64_t t0 = steady_ns();
  io_cv_.wait(lock, [&] {
    auto it = entries_.find(h);
    return it == entries_.end() || !it->second.io_busy;
  });
  stats_.wait_ns += steady_ns() - t0;
  auto it = entries_.find(h);
  e = it == entries_.end() ? nullptr : &it->second;
}

Status SpillEngine::start_restore(Handle h, void* device_dst, device::Stream compute_stream,
                                  bool prefetch) {
  Lock lock(mu_);
  reap_locked();
  auto it = entries_.find(h);
  if (it == entries_.end() || !device_dst) return Status::kInvalid;
  Entry* e = &it->second;
  if (e->restoring) return e->restore_dst == device_dst ? Status::kOk : Status::kInvalid;
  wait_io_locked(lock, e, h);
  if (!e) return Status::kInvalid;
  if (!e->pinned) {
    // On SSD only: read it back now, into the arena if it has room, else a host staging buffer.
    void* p = arena_.allocate(e->bytes);
    std::unique_ptr<std::byte[]> staging;
    if (!p) {
      staging.reset(new (std::nothrow) std::byte[e->bytes]);
      if (!staging) return Status::kOutOfMemory;
      p = staging.get();
    }
    e->io_busy = true;
    const std::size_t bytes = e->bytes;
    lock.unlock();
    std::string why;
    const std::uint64_t t0 = steady_ns();
    const bool ok = ssd_->read(h, p, bytes, &why);
    const std::uint64_t waited = steady_ns() - t0;
    lock.lock();
    e = &entries_.at(h);
    e->io_busy = false;
    io_cv_.notify_all();
    stats_.wait_ns += waited;
    if (!ok) {
      if (!staging) arena_.free(p);
      ++stats_.ssd_read_failures;
      warn_once_locked(kWarnSsdRead, "spill: " + why + "; the activation stays on SSD");
      return Status::kError;
    }
    e->pinned = p;
    e->staging = std::move(staging);
    ++stats_.demand_ssd_reads;
    stats_.restored_bytes_ssd += bytes;
  }
  const device::Event done = take_event_locked();
  Status s = done == device::kNoEvent ? Status::kError : backend_.record(fence_, compute_stream);
  if (s == Status::kOk) s = backend_.stream_wait(h2d_stream_, fence_);
  if (s == Status::kOk) s = backend_.stream_wait(h2d_stream_, e->d2h_event);
  if (s == Status::kOk) {
    s = backend_.copy_async(device_dst, e->pinned, e->bytes, device::CopyKind::kHostToDevice,
                            h2d_stream_);
  }
  if (s == Status::kOk) s = backend_.record(done, h2d_stream_);
  if (s != Status::kOk) {
    backend_.synchronize_stream(h2d_stream_);
    if (done != device::kNoEvent) free_events_.push_back(done);
    ++stats_.copy_failures;
    warn_once_locked(kWarnCopy, std::string("spill: a host-to-device copy failed (") +
                                    device::to_string(s) + ": " + backend_.last_error() +
                                    "); the activation stays in host memory");
    return Status::kError;
  }
  e->h2d_event = done;
  e->restoring = true;
  e->restore_dst = device_dst;
  e->prefetched = prefetch;
  schedule_readahead_locked();
  return Status::kOk;
}

Status SpillEngine::finish_restore(Handle h, device::Stream compute_stream, bool host_wait) {
  device::Event ev = device::kNoEvent;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(h);
    if (it == entries_.end() || !it->second.restoring) return Status::kInvalid;
    Entry& e = it->second;
    ev = e.h2d_event;
    const bool ready = backend_.query(ev);
    if (e.prefetched && ready) {
      ++stats_.prefetch_hits;
    } else {
      ++stats_.late_restores;
    }
    if (Status s = backend_.stream_wait(compute_stream, ev); s != Status::kOk) return s;
    need_.record_restore(e.key);
    ++stats_.restores;
    stats_.restored_bytes_pinned += e.bytes;
  }
  if (!host_wait) return Status::kOk;
  const std::uint64_t t0 = steady_ns();
  const Status s = backend_.synchronize_event(ev);
  std::lock_guard lock(mu_);
  stats_.wait_ns += steady_ns() - t0;
  return s;
}

Status SpillEngine::restore(Handle h, void* device_dst, device::Stream stream, bool host_wait) {
  if (Status s = start_restore(h, device_dst, stream); s != Status::kOk) return s;
  return finish_restore(h, stream, host_wait);
}

bool SpillEngine::copy_to_host(Handle h, void* host_dst) {
  Lock lock(mu_);
  auto it = entries_.find(h);
  if (it == entries_.end()) return false;
  Entry* e = &it->second;
  wait_io_locked(lock, e, h);
  if (!e) return false;
  const std::size_t bytes = e->bytes;
  if (e->pinned) {
    const device::Event ev = e->d2h_event;
    const void* src = e->pinned;
    e->io_busy = true;  // keeps the range in place while unlocked
    lock.unlock();
    backend_.synchronize_event(ev);
    std::memcpy(host_dst, src, bytes);
    lock.lock();
    entries_.at(h).io_busy = false;
    io_cv_.notify_all();
    return true;
  }
  e->io_busy = true;
  lock.unlock();
  std::string why;
  const bool ok = ssd_->read(h, host_dst, bytes, &why);
  lock.lock();
  entries_.at(h).io_busy = false;
  io_cv_.notify_all();
  if (!ok) {
    ++stats_.ssd_read_failures;
    warn_once_locked(kWarnSsdRead, "spill: " + why);
  }
  return ok;
}

void SpillEngine::release(Handle h) {
  Lock lock(mu_);
  auto it = entries_.find(h);
  if (it == entries_.end()) return;
  Entry* e = &it->second;
  wait_io_locked(lock, e, h);
  if (!e) return;
  Deferred d;
  if (e->staging) {
    d.staging = std::move(e->staging);
  } else {
    d.arena_ptr = e->pinned;
  }
  d.events.push_back(e->d2h_event);
  if (e->h2d_event != device::kNoEvent) d.events.push_back(e->h2d_event);
  if (e->on_ssd) ssd_->remove(h, e->bytes);
  entries_.erase(h);
  deferred_.push_back(std::move(d));
  reap_locked();
  schedule_readahead_locked();
}

std::vector<Handle> SpillEngine::prefetch_candidates(std::size_t lookahead_bytes) {
  std::lock_guard lock(mu_);
  std::vector<Handle> out;
  if (lookahead_bytes == 0) return out;
  std::size_t window = 0;
  for (Handle h : by_rank_locked(/*soonest_first=*/true)) {
    const Entry& e = entries_.at(h);
    window += e.bytes;
    // The soonest entry is always a candidate, even when larger than the look-ahead.
    if (window > lookahead_bytes && (!out.empty() || e.restoring)) break;
    if (!e.restoring && !e.io_busy) out.push_back(h);
    if (window > lookahead_bytes) break;
  }
  return out;
}

void SpillEngine::end_iteration() {
  std::lock_guard lock(mu_);
  need_.end_iteration();
}

SpillStats SpillEngine::stats() const {
  std::lock_guard lock(mu_);
  SpillStats s = stats_;
  s.current_pinned_bytes = arena_.used_bytes();
  s.current_ssd_bytes = ssd_ ? ssd_->current_bytes() : 0;
  s.entries = entries_.size();
  return s;
}

std::optional<Tier> SpillEngine::tier_of(Handle h) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(h);
  if (it == entries_.end()) return std::nullopt;
  return it->second.pinned ? Tier::kPinned : Tier::kSsd;
}

bool SpillEngine::is_restoring(Handle h) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(h);
  return it != entries_.end() && it->second.restoring;
}

std::string SpillEngine::ssd_dir() const { return ssd_ ? ssd_->dir() : std::string(); }

void SpillEngine::drain_io() {
  if (io_) io_->drain();
}

}  // namespace timeshare::spill
