#include "timeshare/pool/temporal/granule_release.h"

#include <algorithm>
#include <bit>
#include <iterator>

#include "timeshare/pool/temporal/granule_unmap.h"

namespace timeshare::pool {

namespace {
// Fences in flight per arena; past this, new quarantined granules wait for a later fence.
constexpr std::size_t kMaxFencesPerArena = 8;
// A free that quarantines granules records a fence when the arena's last one is at least this
// many ticks old: granules become trimmable a GPU lag after their free, whether or not a trim
// wanted them then, for one event record per this many ticks at most.
constexpr std::uint64_t kFenceIntervalEvents = 16;
}  // namespace

GranuleRelease::GranuleRelease(device::Backend* backend, std::size_t granule_bytes)
    : backend_(backend), granule_bytes_(granule_bytes), events_(*backend) {}

GranuleRelease::~GranuleRelease() {
  for (ArenaRelease& ar : arenas_) {
    for (const Fence& f : ar.fences) events_.give(f.event);  // destroyed with events_
  }
}

void GranuleRelease::add_arena(std::uintptr_t base, std::size_t offset, std::size_t granules,
                               device::Stream stream) {
  ArenaRelease ar;
  ar.base = base;
  ar.offset = offset;
  ar.granules = granules;
  ar.stream = stream;
  ar.cached_gen.init(offset, granules);
  quarantined_.resize(offset + granules);
  arenas_.push_back(std::move(ar));
}

void GranuleRelease::quarantine(std::size_t a, std::size_t first, std::size_t last) {
  ArenaRelease& ar = arenas_[a];
  if (first == last) {
    quarantined_.set(ar.offset + first);
  } else {
    quarantined_.set_range(ar.offset + first, ar.offset + last);
  }
  ar.cached_gen.stamp(first, last, ar.open_gen);
  if (!ar.quarantine.empty()) {
    Quarantined& back = ar.quarantine.back();
    if (back.gen == ar.open_gen && back.last + 1 == first) {
      back.last = last;
      ar.dirty = true;
      return;
    }
  }
  ar.quarantine.push_back({first, last, ar.open_gen});
  ar.dirty = true;
}

// ---- fences ------------------------------------------------------------------------------------

const GranuleRelease::Completed& GranuleRelease::fence_after_free(std::size_t a,
                                                                  std::uint64_t now_events) {
  begin();
  ArenaRelease& ar = arenas_[a];
  if (now_events - ar.last_fence_events >= kFenceIntervalEvents) {
    poll_fences(ar);
    fence(a);
    ar.last_fence_events = now_events;
  }
  return completed_;
}

const GranuleRelease::Completed& GranuleRelease::advance_fences(bool record) {
  begin();
  for (std::size_t a = 0; a < arenas_.size(); ++a) {
    ArenaRelease& ar = arenas_[a];
    if (ar.fences.empty() && !(record && ar.dirty)) continue;
    // Completed fences first (they free slots for a new one), then the new fence, which an
    // idle stream completes at once.
    poll_fences(ar);
    if (!record || !ar.dirty) continue;
    fence(a);
    poll_fences(ar);
  }
  return completed_;
}

const GranuleRelease::Completed& GranuleRelease::wait_for_arena(std::size_t a) {
  begin();
  ArenaRelease& ar = arenas_[a];
  if (ar.quarantine.empty()) return completed_;
  if (ar.dirty || ar.fences.empty()) {
    // Granules not covered by a fence (the arena had its most in flight): the stream itself.
    drain_arena(a);
    return completed_;
  }
  ++waits_;
  backend_->synchronize_event(ar.fences.back().event);
  poll_fences(ar);
  return completed_;
}

const GranuleRelease::Completed& GranuleRelease::drain(std::size_t a) {
  begin();
  drain_arena(a);
  return completed_;
}

void GranuleRelease::poll_fences(ArenaRelease& ar) {
  std::uint32_t done = 0;
  while (!ar.fences.empty() && backend_->query(ar.fences.front().event)) {
    done = ar.fences.front().gen;
    events_.give(ar.fences.front().event);
    ar.fences.pop_front();
  }
  if (done != 0) fence_done(ar, done);
}

void GranuleRelease::fence(std::size_t a) {
  ArenaRelease& ar = arenas_[a];
  if (!ar.dirty || ar.fences.size() >= kMaxFencesPerArena) return;
  const device::Event e = events_.take();
  if (e == device::kNoEvent || backend_->record(e, ar.stream) != device::Status::kOk) {
    // No fence to be had: wait for the stream here rather than ever unmap under its work.
    events_.give(e);
    drain_arena(a);
    return;
  }
  ar.fences.push_back({e, ar.open_gen});
  ++fences_recorded_;
  ++ar.open_gen;
  ar.dirty = false;
}

void GranuleRelease::drain_arena(std::size_t a) {
  ArenaRelease& ar = arenas_[a];
  ++waits_;
  if (backend_->synchronize_stream(ar.stream) != device::Status::kOk) return;  // stays as is
  for (const Fence& f : ar.fences) events_.give(f.event);
  ar.fences.clear();
  fence_done(ar, ar.open_gen);
  ++ar.open_gen;
  ar.dirty = false;
}

void GranuleRelease::release_quarantine(ArenaRelease& ar, std::uint32_t gen) {
  constexpr std::size_t kBits = TemporalBitIndex::kBits;
  // Keys [first, last] leave quarantine, trimmable.
  const auto complete = [&](std::size_t first, std::size_t last) {
    if (first == last) {
      quarantined_.clear(first);
    } else {
      quarantined_.clear_range(first, last);
    }
    completed_.trimmable.emplace_back(first, last);
  };
  while (!ar.quarantine.empty() && ar.quarantine.front().gen <= gen) {
    const Quarantined q = ar.quarantine.front();
    ar.quarantine.pop_front();
    // A granule of the entry is current when still quarantined and stamped with the entry's
    // generation: stale when it was reused (and maybe quarantined again later) since.
    const std::size_t lo = ar.offset + q.first;
    const std::size_t hi = ar.offset + q.last;
    if (lo == hi) {  // one granule (most blocks are small)
      if (quarantined_.test(lo) && ar.cached_gen.of(q.first) == q.gen) complete(lo, lo);
      continue;
    }
    // An entry whose granules were all reused since (a big block freed and allocated again at
    // its place) is passed over at the cost of a word of the index's level above.
    if (!quarantined_.maybe_any(lo, hi)) continue;
    // Runs of current granules move as ranges (a big block's run is thousands of granules),
    // found a word of keys at a time.
    std::size_t run_first = TemporalBitIndex::npos;
    std::size_t run_last = 0;
    for (std::size_t w = lo / kBits; w <= hi / kBits; ++w) {
      std::uint64_t m = quarantined_.word(w);
      if (w == lo / kBits) m &= ~std::uint64_t{0} << (lo % kBits);
      if (w == hi / kBits) m &= TemporalBitIndex::mask_upto(hi % kBits);
      if (m != 0) m = ar.cached_gen.stamped(w, m, q.gen);
      while (m != 0) {
        const unsigned b = static_cast<unsigned>(std::countr_zero(m));
        const unsigned len = static_cast<unsigned>(std::countr_one(m >> b));
        const std::size_t first = w * kBits + b;
        if (run_first != TemporalBitIndex::npos && first == run_last + 1) {
          run_last = first + len - 1;
        } else {
          if (run_first != TemporalBitIndex::npos) complete(run_first, run_last);
          run_first = first;
          run_last = first + len - 1;
        }
        m = b + len >= kBits ? 0 : m & (~std::uint64_t{0} << (b + len));
      }
    }
    if (run_first != TemporalBitIndex::npos) complete(run_first, run_last);
  }
}

void GranuleRelease::fence_done(ArenaRelease& ar, std::uint32_t gen) {
  release_quarantine(ar, gen);
  const std::size_t a = static_cast<std::size_t>(&ar - arenas_.data());
  while (!ar.retiring.empty() && ar.retiring.front().gen <= gen) {
    const Quarantined r = ar.retiring.front();
    ar.retiring.pop_front();
    const std::size_t n = r.last - r.first + 1;
    // Its physical memory lives on at the alias: only the old address goes.
    std::vector<std::uint8_t> gone(n);
    const std::size_t done =
        unmap_granules(*backend_, ar.base, granule_bytes_, r.first, n, gone.data(), &unmap_calls_);
    // Runs of granules unmapped are free for placement again; those the device kept stay
    // retiring (mapped, not to be placed on or mapped over), retried at the next fence.
    std::vector<Quarantined> kept;
    for (std::size_t i = 0; i < n;) {
      std::size_t j = i;
      while (j + 1 < n && gone[j + 1] == gone[i]) ++j;
      if (gone[i]) {
        completed_.unmapped.push_back({a, r.first + i, j - i + 1});
        retiring_changes_.push_back({a, ar.base + (r.first + i) * granule_bytes_,
                                     (j - i + 1) * granule_bytes_, false});
      } else {
        kept.push_back({r.first + i, r.first + j, r.gen});
      }
      i = j + 1;
    }
    if (done != n) {
      ar.retiring.insert(ar.retiring.begin(), kept.begin(), kept.end());
      return;
    }
  }
}

// ---- generation stamps -------------------------------------------------------------------------

void GranuleRelease::GenStamps::init(std::size_t offset_keys, std::size_t n) {
  constexpr std::size_t kBits = TemporalBitIndex::kBits;
  offset = offset_keys;
  granules = n;
  word0 = offset / kBits;
  word = ZeroedArray<std::uint32_t>((offset + n + kBits - 1) / kBits - word0);
  granule = ZeroedArray<std::uint32_t>(n);
}

void GranuleRelease::GenStamps::split(std::size_t w) {
  constexpr std::size_t kBits = TemporalBitIndex::kBits;
  const std::uint32_t gen = word[w];
  if (gen == 0) return;
  const std::size_t k0 = std::max((word0 + w) * kBits, offset);
  const std::size_t k1 = std::min((word0 + w + 1) * kBits, offset + granules);
  std::fill(granule.begin() + (k0 - offset), granule.begin() + (k1 - offset), gen);
  word[w] = 0;
}

void GranuleRelease::GenStamps::stamp(std::size_t first, std::size_t last, std::uint32_t gen) {
  constexpr std::size_t kBits = TemporalBitIndex::kBits;
  // Keys [lo, hi] of word kw of keys.
  const auto part = [&](std::size_t kw, std::size_t lo, std::size_t hi) {
    const std::size_t w = kw - word0;
    if (lo == std::max(kw * kBits, offset) &&
        hi == std::min(kw * kBits + kBits, offset + granules) - 1) {
      word[w] = gen;  // the arena's part of the word, whole
      return;
    }
    split(w);
    std::fill(granule.begin() + (lo - offset), granule.begin() + (hi - offset + 1), gen);
  };
  const std::size_t lo = offset + first;  // keys
  const std::size_t hi = offset + last;
  const std::size_t kw0 = lo / kBits, kw1 = hi / kBits;
  if (kw0 == kw1) {
    part(kw0, lo, hi);
    return;
  }
  part(kw0, lo, kw0 * kBits + kBits - 1);
  for (std::size_t kw = kw0 + 1; kw < kw1; ++kw) word[kw - word0] = gen;  // inside the arena
  part(kw1, kw1 * kBits, hi);
}

std::uint64_t GranuleRelease::GenStamps::stamped(std::size_t key_word, std::uint64_t candidates,
                                                 std::uint32_t gen) const noexcept {
  constexpr std::size_t kBits = TemporalBitIndex::kBits;
  const std::uint32_t wg = word[key_word - word0];
  if (wg != 0) return wg == gen ? candidates : 0;
  // Mostly the candidates were stamped together: one pass over their span (vectorized).
  const std::size_t b0 = static_cast<std::size_t>(std::countr_zero(candidates));
  const std::size_t b1 = kBits - 1 - static_cast<std::size_t>(std::countl_zero(candidates));
  const std::uint32_t* span = granule.begin() + (key_word * kBits + b0 - offset);
  std::uint32_t differ = 0;
  for (std::size_t i = 0; i <= b1 - b0; ++i) differ |= span[i] ^ gen;
  if (differ == 0) return candidates;
  std::uint64_t out = 0;
  for (std::uint64_t m = candidates; m != 0; m &= m - 1) {
    const std::size_t b = static_cast<std::size_t>(std::countr_zero(m));
    if (granule[key_word * kBits + b - offset] == gen) out |= std::uint64_t{1} << b;
  }
  return out;
}

std::uint32_t GranuleRelease::GenStamps::newest(std::size_t first,
                                                std::size_t last) const noexcept {
  constexpr std::size_t kBits = TemporalBitIndex::kBits;
  std::uint32_t gen = 0;
  for (std::size_t g = first; g <= last;) {
    const std::size_t kw = (offset + g) / kBits;
    const std::uint32_t wg = word[kw - word0];
    const std::size_t end = std::min(last + 1, (kw + 1) * kBits - offset);  // the word's end
    if (wg != 0) {
      gen = std::max(gen, wg);
    } else {
      for (std::size_t h = g; h < end; ++h) gen = std::max(gen, granule[h]);
    }
    g = end;
  }
  return gen;
}

// ---- aliases -----------------------------------------------------------------------------------

void GranuleRelease::retire(std::size_t a, std::size_t first, std::size_t n, std::uint32_t gen) {
  ArenaRelease& ar = arenas_[a];
  // Retiring addresses are unmapped in generation order: a donor older than the newest
  // retiring entry waits for that entry's generation (later, never earlier).
  const std::uint32_t retire_gen =
      ar.retiring.empty() ? gen : std::max(gen, ar.retiring.back().gen);
  ar.retiring.push_back({first, first + n - 1, retire_gen});
  retiring_changes_.push_back({a, ar.base + first * granule_bytes_, n * granule_bytes_, true});
}

bool GranuleRelease::alias_run(std::size_t a, std::size_t g, std::size_t max_n, Alias* out) {
  ArenaRelease& ar = arenas_[a];
  // The donor: the highest run of this arena's quarantined granules (retiring addresses then
  // sit high in the arena, away from the low addresses placement prefers).
  const std::size_t end_key = ar.offset + ar.granules;
  const std::size_t last = quarantined_.find_prev(end_key);
  if (last == TemporalBitIndex::npos || last < ar.offset) return false;
  std::size_t first = last;
  while (last - first + 1 < max_n && first > ar.offset && quarantined_.test(first - 1)) --first;
  const std::size_t n = last - first + 1;
  const std::size_t donor = first - ar.offset;
  const device::Status st =
      backend_->map_alias(reinterpret_cast<void*>(ar.base + g * granule_bytes_),
                          reinterpret_cast<const void*>(ar.base + donor * granule_bytes_),
                          n * granule_bytes_);
  if (st != device::Status::kOk) {
    if (st == device::Status::kInvalid) alias_ok_ = false;  // unsupported: map fresh memory
    return false;
  }
  const std::uint32_t gen = ar.cached_gen.newest(donor, donor + n - 1);
  quarantined_.clear_range(first, last);  // their quarantine entries become stale
  retire(a, donor, n, gen);
  ++aliases_;
  granules_aliased_ += n;
  *out = {g, donor, n, gen};
  return true;
}

std::vector<std::uint8_t> GranuleRelease::undo_alias(std::size_t a, const Alias& al) {
  ArenaRelease& ar = arenas_[a];
  std::vector<std::uint8_t> gone(al.n);
  unmap_granules(*backend_, ar.base, granule_bytes_, al.g, al.n, gone.data(), &unmap_calls_);
  // The donor holds its memory alone again: its retiring entry is dropped by matching it.
  for (auto it = ar.retiring.begin(); it != ar.retiring.end(); ++it) {
    if (it->first == al.donor && it->last == al.donor + al.n - 1) {
      ar.retiring.erase(it);
      break;
    }
  }
  const std::uintptr_t donor_addr = ar.base + al.donor * granule_bytes_;
  for (auto it = retiring_changes_.rbegin(); it != retiring_changes_.rend(); ++it) {
    if (it->retiring && it->arena == a && it->addr == donor_addr) {
      retiring_changes_.erase(std::next(it).base());
      break;
    }
  }
  // Where the device kept the alias, the donor's address still retires.
  for (std::size_t i = 0; i < al.n; ++i) {
    if (!gone[i]) retire(a, al.donor + i, 1, al.gen);
  }
  return gone;
}

}  // namespace timeshare::pool
