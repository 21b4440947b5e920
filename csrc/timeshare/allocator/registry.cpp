#include "timeshare/allocator/registry.h"

#include <array>
#include <memory>
#include <mutex>

#include "timeshare/common/log.h"
#include "timeshare/device/sim/sim_backend.h"
#ifdef TIMESHARE_WITH_CUDA
#include "timeshare/device/cuda/cuda_backend.h"
#endif

namespace timeshare::registry {

namespace {

struct State {
  std::mutex mu;
  Options options;
  bool configured = false;
  std::array<std::unique_ptr<Allocator>, kMaxDevices> allocators;
  bool any = false;
};

State& state() {
  static State* s = new State();  // never destroyed: PyTorch may free tensors during exit
  return *s;
}

std::unique_ptr<device::Backend> make_backend(const Options& o, int device, std::string* error) {
  if (o.backend == BackendKind::kSim) {
    device::SimOptions so;
    so.capacity_bytes = o.sim_capacity_bytes;
    so.backing = true;
    return std::make_unique<device::SimBackend>(so, device);
  }
#ifdef TIMESHARE_WITH_CUDA
  return device::make_cuda_backend(device, error);
#else
  *error = "this build of timeshare has no CUDA backend (built without the CUDA Toolkit); use "
           "backend:sim";
  return nullptr;
#endif
}

}  // namespace

std::string configure(const Options& options) {
  State& s = state();
  std::lock_guard lock(s.mu);
  if (s.any && to_conf_string(s.options) != to_conf_string(options)) {
    return "timeshare is already serving memory with options '" + to_conf_string(s.options) +
           "'; options cannot change after the first allocation";
  }
  s.options = options;
  s.configured = true;
  return {};
}

Options options() {
  State& s = state();
  std::lock_guard lock(s.mu);
  return s.options;
}

bool any_created() {
  State& s = state();
  std::lock_guard lock(s.mu);
  return s.any;
}

Allocator* get(int device, std::string* error) {
  State& s = state();
  if (device < 0 || device >= kMaxDevices) {
    if (error) *error = "device index " + std::to_string(device) + " is out of range";
    return nullptr;
  }
  std::lock_guard lock(s.mu);
  if (auto& a = s.allocators[device]) return a.get();
  std::string why;
  auto backend = make_backend(s.options, device, &why);
  if (!backend) {
    log().error("cannot create the allocator for device {}: {}", device, why);
    if (error) *error = why;
    return nullptr;
  }
  s.allocators[device] = std::make_unique<Allocator>(s.options, std::move(backend));
  s.any = true;
  return s.allocators[device].get();
}

Allocator* existing(int device) {
  if (device < 0 || device >= kMaxDevices) return nullptr;
  State& s = state();
  std::lock_guard lock(s.mu);
  return s.allocators[device].get();
}

void for_each(const std::function<void(int, Allocator&)>& f) {
  State& s = state();
  std::array<Allocator*, kMaxDevices> list{};
  {
    std::lock_guard lock(s.mu);
    for (int i = 0; i < kMaxDevices; ++i) list[i] = s.allocators[i].get();
  }
  for (int i = 0; i < kMaxDevices; ++i) {
    if (list[i]) f(i, *list[i]);
  }
}

bool base_allocation(const void* ptr, std::uintptr_t* base, std::size_t* bytes) {
  bool found = false;
  for_each([&](int, Allocator& a) {
    if (!found) found = a.base_allocation(ptr, base, bytes);
  });
  return found;
}

std::string reset() {
  State& s = state();
  std::lock_guard lock(s.mu);
  for (auto& a : s.allocators) {
    if (a && !a->live_blocks().empty()) {
      return "cannot reset timeshare: device " + std::to_string(a->backend().device_index()) +
             " still has " + std::to_string(a->live_blocks().size()) + " live blocks";
    }
  }
  for (auto& a : s.allocators) a.reset();
  s.any = false;
  return {};
}

}  // namespace timeshare::registry
