// CUDA IPC (allocator.h): a live block's memory shared with another process, and another
// process's block mapped here. The memory goes granule by granule: the granules under the block
// are exported (device::Backend::export_granules) and the receiver maps all of them, so it sees
// the block at `offset` inside them, as PyTorch's receivers see a tensor inside the segment its
// handle names. A block's granules stay mapped while it lives, whatever the pool does around it;
// memory a receiver mapped lives on there after the sender frees it, until the receiver closes.
#include <algorithm>

#include "timeshare/allocator/allocator.h"
#include "timeshare/allocator/ipc_handle.h"
#include "timeshare/common/log.h"

namespace timeshare {

namespace {

// "the <backend> backend cannot <what>", with the backend's reason where it gave one.
std::string backend_refusal(device::Backend& b, const char* what) {
  const std::string cause = b.last_error();
  return std::string("the ") + b.name() + " backend cannot " + what +
         (cause.empty() ? std::string(" (it shares no memory between processes)") : ": " + cause);
}

}  // namespace

std::string Allocator::share_ipc(void* ptr, std::size_t* offset, std::string* why) {
  std::lock_guard lock(mu_);
  auto live = live_.find(ptr);
  if (live == live_.end()) {
    *why = "the pointer is not the start of a live block timeshare allocated";
    return "";
  }
  if (auto e = exported_.find(ptr); e != exported_.end()) {
    *offset = e->second.offset;
    return e->second.handle;
  }
  if (!backend_->supports_virtual_memory()) {
    *why = "CUDA IPC needs the device's virtual memory management, which this device lacks";
    return "";
  }
  const std::size_t g = backend_->granule_bytes();
  const auto addr = reinterpret_cast<std::uintptr_t>(ptr);
  const std::uintptr_t first = addr / g * g;
  const std::uintptr_t end = (addr + std::max<std::size_t>(live->second.bytes, 1) + g - 1) / g * g;
  std::vector<int> fds;
  if (backend_->export_granules(reinterpret_cast<void*>(first), end - first, &fds) !=
      device::Status::kOk) {
    *why = backend_refusal(*backend_, "export this memory");
    return "";
  }
  Exported e;
  e.offset = addr - first;
  e.fds = fds;
  e.handle = ipc::to_text(ipc::make_handle(backend_->device_index(), g, std::move(fds)));
  *offset = e.offset;
  return exported_.emplace(ptr, std::move(e)).first->second.handle;
}

void Allocator::forget_export(void* ptr) {
  auto e = exported_.find(ptr);
  if (e == exported_.end()) return;
  ipc::close_fds(&e->second.fds);
  exported_.erase(e);
}

void* Allocator::open_ipc(const std::string& text, std::string* why) {
  ipc::Handle h;
  if (!ipc::parse(text, &h, why)) return nullptr;
  std::lock_guard lock(mu_);
  if (!backend_->supports_virtual_memory() || backend_->granule_bytes() != h.granule) {
    *why = "this device cannot map the shared memory (" +
           std::string(backend_->supports_virtual_memory() ? "its granule differs from the sender's"
                                                           : "no virtual memory management") +
           ")";
    return nullptr;
  }
  std::vector<int> fds;
  if (!ipc::take_fds(h, &fds, why)) return nullptr;
  void* base = nullptr;
  const device::Status s = backend_->import_granules(fds, &base);
  ipc::close_fds(&fds);  // the mapping holds the memory now
  if (s != device::Status::kOk) {
    *why = backend_refusal(*backend_, "map the shared memory");
    return nullptr;
  }
  imported_.insert(base);
  return base;
}

bool Allocator::close_ipc(void* base) {
  std::lock_guard lock(mu_);
  if (imported_.erase(base) == 0) return false;
  if (backend_->release_import(base) != device::Status::kOk) {
    log().warn("releasing shared memory at {} failed: {}", base, backend_->last_error());
    return false;
  }
  return true;
}

}  // namespace timeshare
