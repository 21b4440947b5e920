// GranuleRelease — when a granule that a free emptied may go back to the device: quarantine,
// fences and aliases. TemporalGranules (temporal_granules.h) owns one and keeps everything else
// (which granules are mapped, needed, cached; the mark; trimming).
//
// Nothing is unmapped under running kernels. PyTorch frees a block as soon as the host drops
// the tensor, while kernels that use it may still be queued on its stream, and cuMemUnmap does
// not wait for them. A granule that a free empties is therefore *quarantined*: it may be
// reused at once by its own arena (same stream: stream order makes that safe), but it may be
// unmapped (given back to the device, or to another stream's arena through a later map) only
// once its stream has passed the free. Each arena stamps the granules it quarantines with its
// open *generation*; a fence (an event recorded on the arena's stream) closes a generation, and
// when the fence completes every granule of that generation or older becomes an ordinary cached
// granule, free to trim. A fence is recorded where trimming is wanted (mapped above the mark, a
// limit, empty_cache), i.e. where the unsafe policy would have made a device call, and by a free
// that quarantines granules when its arena's last such fence is at least kFenceIntervalEvents
// (16) ticks old, so that granules become trimmable a GPU lag after their free: the steady state
// records at most one event per arena every 16 ticks, and makes no device call. A host wait
// (synchronize on a fence) happens only where memory must go back now: a request at the limit,
// empty_cache, teardown; each is counted (waits()).
//
// Aliases instead of waits: a request of an arena may take the physical memory of that arena's
// quarantined granules at once (Backend::map_alias; same stream), and their old addresses
// *retire*: still mapped, not to be placed on or mapped over, unmapped once the fence of their
// generation completes (retiring changes tell the pool).
//
// Generations are stamped per run, not per granule: a big block's granules are quarantined,
// checked when their generation completes, and given to an alias, a word of 64 granules at a
// time (GenStamps below), so that a free costs the same for 2 MiB and for 2 GiB in all but the
// words it spans.
//
// The granules' state stays theirs: a call that completes generations returns what they must
// do (Completed: quarantined granules now trimmable, retiring addresses now unmapped), an alias
// made or undone returns which granules moved, and granule indices are the arena's (keys, in the
// quarantined() index, are the granules' keys: arena offset + index).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "timeshare/device/backend.h"
#include "timeshare/pool/event_pool.h"
#include "timeshare/pool/temporal/temporal_bit_index.h"
#include "timeshare/pool/zeroed_array.h"

namespace timeshare::pool {

class GranuleRelease {
 public:
  GranuleRelease(device::Backend* backend, std::size_t granule_bytes);
  ~GranuleRelease();
  GranuleRelease(const GranuleRelease&) = delete;
  GranuleRelease& operator=(const GranuleRelease&) = delete;

  // Registers the arena of `stream` (the granules' next index): `granules` granules at `base`,
  // whose keys start at `offset`.
  void add_arena(std::uintptr_t base, std::size_t offset, std::size_t granules,
                 device::Stream stream);

  // Granules [first, last] of arena `a` have just lost their last block (and are not pinned).
  void quarantine(std::size_t a, std::size_t first, std::size_t last);
  // Keys of the quarantined granules (cached, not yet fenced).
  const TemporalBitIndex& quarantined() const noexcept { return quarantined_; }
  // Key `k` (or keys [first, last]) leave quarantine without a fence: their arena reuses them,
  // or they are gone. Their quarantine entries become stale.
  void forget(std::size_t k) { quarantined_.clear(k); }
  void forget(std::size_t first, std::size_t last) { quarantined_.clear_range(first, last); }

  // What completed generations leave the granules to do, in order: keys [first, last] now
  // trimmable (out of quarantine), and runs of retiring addresses now unmapped.
  struct Unmapped {
    std::size_t arena = 0;
    std::size_t first = 0;
    std::size_t n = 0;
  };
  struct Completed {
    std::vector<std::pair<std::size_t, std::size_t>> trimmable;
    std::vector<Unmapped> unmapped;
  };
  // Each call below returns what it completed (valid until the next such call).
  // A free quarantined granules of arena `a` at tick `now_events`: completed fences are polled
  // and a new one recorded when the arena's last one is kFenceIntervalEvents old.
  const Completed& fence_after_free(std::size_t a, std::uint64_t now_events);
  // Completed fences make their generations trimmable; with `record`, dirty arenas get fences.
  const Completed& advance_fences(bool record);
  // Waits for arena `a`'s quarantined granules (its newest fence, or its stream when some are
  // not fenced); one step of the granules' wait for trimmable granules.
  const Completed& wait_for_arena(std::size_t a);
  // Waits for arena `a`'s stream and completes all its generations (counted in waits()).
  const Completed& drain(std::size_t a);
  // Arena `a` has fences in flight, unfenced quarantine or retiring addresses.
  bool in_flight(std::size_t a) const noexcept {
    const ArenaRelease& ar = arenas_[a];
    return !ar.fences.empty() || ar.dirty || !ar.retiring.empty();
  }

  // Granules [g, g+n) of an arena now reach the memory of [donor, donor+n).
  struct Alias {
    std::size_t g = 0;
    std::size_t donor = 0;
    std::size_t n = 0;
    std::uint32_t gen = 0;
  };
  // Whether arena `a` may alias (the backend supports map_alias, and it has quarantine).
  bool can_alias(std::size_t a) const noexcept {
    return alias_ok_ && !arenas_[a].quarantine.empty();
  }
  // Maps at granules [g, g+n) of arena `a` (n <= max_n) the memory of the highest run of its
  // quarantined granules, which start retiring. False when none or the backend refuses.
  bool alias_run(std::size_t a, std::size_t g, std::size_t max_n, Alias* out);
  // Unmaps the alias again; returns gone[i] for each granule i of it: gone, its donor holds the
  // memory alone (quarantine it again); kept by the device, it holds the memory (quarantine it)
  // and the donor's address still retires.
  std::vector<std::uint8_t> undo_alias(std::size_t a, const Alias& al);
  bool has_retiring(std::size_t a) const noexcept { return !arenas_[a].retiring.empty(); }

  // Address ranges that started retiring (not to be placed on until unmapped) and retiring
  // ranges since unmapped (free for placement again), since the last call: (arena, addr,
  // bytes) each. The pool keeps its free ranges in step with them.
  struct RetiringChange {
    std::size_t arena = 0;
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;
    bool retiring = false;  // true: started retiring; false: unmapped
  };
  bool has_retiring_changes() const noexcept { return !retiring_changes_.empty(); }
  std::vector<RetiringChange> take_retiring_changes() {
    std::vector<RetiringChange> out;
    out.swap(retiring_changes_);
    return out;
  }

  // Host waits made to give memory back (synchronize on a fence or a stream), and fences.
  std::uint64_t waits() const noexcept { return waits_; }
  std::uint64_t fences_recorded() const noexcept { return fences_recorded_; }
  // Runs of granules whose memory moved within an arena by map_alias instead of waiting (one
  // map call each), and their granules.
  std::uint64_t aliases() const noexcept { return aliases_; }
  std::uint64_t granules_aliased() const noexcept { return granules_aliased_; }
  // Unmap calls made here (retiring addresses, undone aliases).
  std::uint64_t unmap_calls() const noexcept { return unmap_calls_; }

 private:
  struct Fence {
    device::Event event = device::kNoEvent;
    std::uint32_t gen = 0;  // completes generation `gen` (and every older one)
  };
  struct Quarantined {  // granules [first, last] of an arena, quarantined in generation `gen`
    std::size_t first = 0;
    std::size_t last = 0;
    std::uint32_t gen = 0;
  };
  // The generation in which each granule of an arena was last quarantined (0: never), in two
  // levels over the words of the quarantined() index (keys kBits w .. kBits w + kBits - 1):
  // word[w] != 0 is the generation of every granule of the arena in that word (a run that
  // covered the word whole stamps it at once); word[w] == 0 defers to one stamp per granule
  // (runs that cover a word in part). Words of keys are the arena's word0 + w.
  struct GenStamps {
    std::size_t offset = 0;  // key of granule 0
    std::size_t granules = 0;
    std::size_t word0 = 0;   // the first word of keys that holds a granule of the arena
    ZeroedArray<std::uint32_t> word;
    ZeroedArray<std::uint32_t> granule;
    void init(std::size_t offset_keys, std::size_t n);
    // Stamps generation `gen` on granules [first, last] (the arena's indices).
    void stamp(std::size_t first, std::size_t last, std::uint32_t gen);
    std::uint32_t of(std::size_t g) const noexcept {
      const std::uint32_t w = word[(offset + g) / TemporalBitIndex::kBits - word0];
      return w != 0 ? w : granule[g];
    }
    // The bits of `candidates` (keys of word `key_word` of keys) stamped `gen`.
    std::uint64_t stamped(std::size_t key_word, std::uint64_t candidates,
                          std::uint32_t gen) const noexcept;
    // The newest stamp among granules [first, last].
    std::uint32_t newest(std::size_t first, std::size_t last) const noexcept;

   private:
    // Word `w` defers to per-granule stamps (copies its generation into them).
    void split(std::size_t w);
  };
  struct ArenaRelease {
    std::uintptr_t base = 0;
    std::size_t offset = 0;    // key of granule 0
    std::size_t granules = 0;
    device::Stream stream = device::kDefaultStream;
    GenStamps cached_gen;  // generation in which each granule was quarantined
    std::uint32_t open_gen = 1;   // generation stamped on granules quarantined now
    bool dirty = false;           // granules of open_gen exist (no fence covers them yet)
    std::uint64_t last_fence_events = 0;  // tick of the last fence a free recorded
    std::deque<Fence> fences;     // in flight, oldest first
    std::deque<Quarantined> quarantine;  // oldest first; entries may be stale (reclaimed)
    // Addresses whose physical memory moved to an alias (map_alias), unmapped once the fence
    // of `gen` completes; oldest first.
    std::deque<Quarantined> retiring;
  };
  // Starts a call that returns what it completed.
  const Completed& begin() {
    completed_.trimmable.clear();
    completed_.unmapped.clear();
    return completed_;
  }
  // Records a fence for arena `a`'s open generation (when it has quarantined granules).
  void fence(std::size_t a);
  void drain_arena(std::size_t a);
  // Pops the completed fences of an arena (oldest first) and completes the newest generation
  // among them (fence_done).
  void poll_fences(ArenaRelease& ar);
  // Generation `gen` of the arena is complete: its quarantine is trimmable, its retiring
  // addresses are unmapped.
  void fence_done(ArenaRelease& ar, std::uint32_t gen);
  // Makes quarantined granules of an arena up to generation `gen` trimmable.
  void release_quarantine(ArenaRelease& ar, std::uint32_t gen);
  // Granules [first, first+n) of arena `a` start retiring, with generation `gen` or a later one
  // (retiring addresses are unmapped in generation order).
  void retire(std::size_t a, std::size_t first, std::size_t n, std::uint32_t gen);

  device::Backend* backend_;
  std::size_t granule_bytes_;
  std::vector<ArenaRelease> arenas_;
  TemporalBitIndex quarantined_;  // key(arena, granule) of cached granules not yet fenced
  EventPool events_;
  Completed completed_;
  std::vector<RetiringChange> retiring_changes_;
  std::uint64_t waits_ = 0;
  std::uint64_t fences_recorded_ = 0;
  std::uint64_t aliases_ = 0;
  std::uint64_t granules_aliased_ = 0;
  std::uint64_t unmap_calls_ = 0;
  bool alias_ok_ = true;  // the backend supports map_alias (until it says otherwise)
};

}  // namespace timeshare::pool
