#include "timeshare/device/cuda/cuda_peer_access.h"

#include <cuda.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "timeshare/device/cuda/cuda_backend.h"
#include "timeshare/device/cuda/cuda_driver.h"

namespace timeshare::device {

namespace {

using cuda_api::PeerAccess;
using cuda_api::PeerFollower;

struct PeerRegistry {
  std::mutex mu;
  PeerAccess access;
  std::vector<PeerFollower*> followers;
};

// Never destroyed: backends may outlive statics.
PeerRegistry& registry() {
  static auto* r = new PeerRegistry();
  return *r;
}

// Brings every live backend's peers in line with the registry; false, with `why`, on a failure.
// r.mu held.
bool follow_all(PeerRegistry& r, std::string* why) {
  bool ok = true;
  for (PeerFollower* f : r.followers) {
    std::string failed;
    if (f->follow(r.access, &failed) == Status::kOk) continue;
    if (ok && why) *why = failed;
    ok = false;
  }
  return ok;
}

}  // namespace

namespace cuda_api {

void add_peer_follower(PeerFollower* f) {
  PeerRegistry& r = registry();
  std::lock_guard lock(r.mu);
  std::string ignored;
  f->follow(r.access, &ignored);
  r.followers.push_back(f);
}

void remove_peer_follower(PeerFollower* f) {
  PeerRegistry& r = registry();
  std::lock_guard lock(r.mu);
  std::erase(r.followers, f);
}

}  // namespace cuda_api

void cuda_track_peer_access(bool tracked) {
  PeerRegistry& r = registry();
  std::lock_guard lock(r.mu);
  if (r.access.tracked == tracked) return;
  r.access.tracked = tracked;
  follow_all(r, nullptr);
}

bool cuda_enable_peer_access(int device, int device_to_access, std::string* error) {
  std::string why;
  const auto refuse = [&](std::string what) {
    if (error) *error = std::move(what);
    return false;
  };
  if (!cuda_available(&why)) return refuse(why);
  const cuda_api::Driver& x = cuda_api::driver();
  const int n = cuda_device_count();
  CUdevice dev = 0;
  CUdevice owner = 0;
  if (device < 0 || device >= n || device_to_access < 0 || device_to_access >= n ||
      x.cuDeviceGet(&dev, device) != CUDA_SUCCESS ||
      x.cuDeviceGet(&owner, device_to_access) != CUDA_SUCCESS) {
    return refuse("CUDA device " + std::to_string(device) + " or " +
                  std::to_string(device_to_access) + " does not exist");
  }
  if (device == device_to_access) return true;  // a device always reaches its own memory
  int can = 0;
  if (x.cuDeviceCanAccessPeer(&can, dev, owner) != CUDA_SUCCESS || !can) {
    return refuse("CUDA device " + std::to_string(device) + " cannot access memory of device " +
                  std::to_string(device_to_access) + " (cuDeviceCanAccessPeer)");
  }
  PeerRegistry& r = registry();
  std::lock_guard lock(r.mu);
  if (!r.access.enabled.emplace(device, device_to_access).second) return true;
  return follow_all(r, &why) ||
         refuse("granting CUDA device " + std::to_string(device) + " access failed: " + why);
}

void cuda_reset_peer_access() {
  PeerRegistry& r = registry();
  std::lock_guard lock(r.mu);
  r.access.enabled.clear();
  r.access.tracked = false;
  follow_all(r, nullptr);
}

}  // namespace timeshare::device
