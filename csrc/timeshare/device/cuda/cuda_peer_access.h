// Peer access as PyTorch tracks it (CUDAAllocator::enablePeerAccess): the process's registry of
// the device pairs enabled, whether the allocator hears of them at all (tracked), and the live
// CUDA backends whose mappings follow it. The public side is cuda_backend.h's
// cuda_track_peer_access / cuda_enable_peer_access / cuda_reset_peer_access; this header is what
// a backend sees of the registry. Thread-safe. Internal to device/cuda/.
#pragma once

#include <set>
#include <string>
#include <utility>

#include "timeshare/device/backend.h"

namespace timeshare::device::cuda_api {

// Which devices may be granted access to memory of which: every device that can access it while
// peer access is not tracked, else those whose peer access to the owner is enabled.
struct PeerAccess {
  bool tracked = false;
  std::set<std::pair<int, int>> enabled;  // (device, device_to_access)
  bool granted(int device, int owner) const {
    return !tracked || enabled.count({device, owner}) != 0;
  }
};

// A backend whose mappings grant what the registry says.
class PeerFollower {
 public:
  // Brings the peers granted access to this backend's memory in line with `access`; on a
  // failure returns it and sets *why. Called with the registry's lock held: a follower may take
  // its own locks inside (lock order: registry, then backend), never the registry's.
  virtual Status follow(const PeerAccess& access, std::string* why) = 0;

 protected:
  ~PeerFollower() = default;
};

// Registers `f` (its mappings follow the registry from now on, starting with a follow() call
// now) and unregisters it (before it is destroyed).
void add_peer_follower(PeerFollower* f);
void remove_peer_follower(PeerFollower* f);

}  // namespace timeshare::device::cuda_api
