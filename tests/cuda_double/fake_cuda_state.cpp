// The CUDA driver test double's model (see fake_cuda_state.h) and its control entry points
// (fake_cuda_control.h): state reset, armed failures, violations, the access check every copy
// goes through, and the stream queues that run in order.
#include "fake_cuda_state.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "fake_cuda_control.h"

namespace fakecuda {

namespace {

CUctx_st g_contexts[kMaxDevices];

void free_all_memory(State& s) {
  for (auto& [base, a] : s.allocs) munmap(reinterpret_cast<void*>(base), a.mmap_bytes);
  for (auto& [base, a] : s.pinned) munmap(reinterpret_cast<void*>(base), a.mmap_bytes);
  for (auto& [base, r] : s.reservations) munmap(reinterpret_cast<void*>(r.mmap_base), r.mmap_bytes);
  for (auto& [id, h] : s.handles) close(h.fd);
  s.allocs.clear();
  s.pinned.clear();
  s.reservations.clear();
  s.handles.clear();
}

// Does [a, a+n) overlap [b, b+m)?
bool overlaps(std::uintptr_t a, std::size_t n, std::uintptr_t b, std::size_t m) {
  return a < b + m && b < a + n;
}

bool op_touches(const Op& op, std::uintptr_t addr, std::size_t bytes) {
  if (op.kind == Op::Kind::kCopy) {
    return overlaps(op.dst, op.bytes, addr, bytes) || overlaps(op.src, op.bytes, addr, bytes);
  }
  return op.kind == Op::Kind::kKernel && op.bytes > 0 && overlaps(op.dst, op.bytes, addr, bytes);
}

// The entry of `m` (keyed by start, valued with .bytes) that overlaps [addr, addr+bytes).
template <typename M>
auto overlapping(M& m, std::uintptr_t addr, std::size_t bytes) -> decltype(&*m.begin()) {
  auto it = m.upper_bound(addr);
  if (it != m.begin()) {
    auto prev = std::prev(it);
    if (overlaps(prev->first, prev->second.bytes, addr, bytes)) return &*prev;
  }
  if (it != m.end() && overlaps(it->first, it->second.bytes, addr, bytes)) return &*it;
  return nullptr;
}

std::string hex(std::uintptr_t p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(p));
  return buf;
}

void execute(State& s, const Op& op) {
  switch (op.kind) {
    case Op::Kind::kMarker: {
      auto it = s.events.find(op.event);
      if (it != s.events.end()) it->second.completed_op = std::max(it->second.completed_op, op.id);
      return;
    }
    case Op::Kind::kWait:
      run_stream(s, op.wait_stream, op.wait_op);
      return;
    case Op::Kind::kCopy:
    case Op::Kind::kKernel: {
      if (s.sticky[op.device] != CUDA_SUCCESS) return;  // a dead context runs nothing
      std::string why;
      const bool ok = op.bytes == 0 ||
                      ((op.kind == Op::Kind::kKernel ||
                        accessible(s, op.src, op.bytes, op.device, &why)) &&
                       accessible(s, op.dst, op.bytes, op.device, &why));
      if (!ok) {
        violation(s, CUDA_ERROR_ILLEGAL_ADDRESS, "queued work faulted when it ran: " + why);
        s.sticky[op.device] = CUDA_ERROR_ILLEGAL_ADDRESS;
        return;
      }
      if (op.kind == Op::Kind::kCopy && op.bytes > 0) {
        std::memmove(reinterpret_cast<void*>(op.dst), reinterpret_cast<const void*>(op.src),
                     op.bytes);
      } else if (op.bytes > 0) {
        std::memset(reinterpret_cast<void*>(op.dst), op.fill, op.bytes);
      }
      if (op.fault != CUDA_SUCCESS) s.sticky[op.device] = op.fault;
      return;
    }
  }
}

}  // namespace

State& state() {
  static State* s = [] {
    auto* x = new State();  // never destroyed: backends may outlive static destruction
    reset_locked(*x);
    return x;
  }();
  return *s;
}

CUctx_st* primary_context(int device) {
  if (device < 0 || device >= state().devices) return nullptr;
  return &g_contexts[device];
}

CUctx_st*& current_context() {
  thread_local CUctx_st* current = nullptr;
  return current;
}

void reset_locked(State& s) {
  free_all_memory(s);
  s.devices = kDefaultDevices;
  for (int d = 0; d < kMaxDevices; ++d) {
    g_contexts[d].device = d;
    s.capacity_bytes[d] = kDefaultCapacityBytes;
    s.used_bytes[d] = 0;
    s.vmm[d] = true;
    s.rdma_vmm[d] = true;
    s.posix_fd[d] = true;
    s.sticky[d] = CUDA_SUCCESS;
    s.ctx_refs[d] = 0;
    for (int p = 0; p < kMaxDevices; ++p) s.peer[d][p] = d != p;
  }
  s.pinned_capacity_bytes = kDefaultPinnedCapacityBytes;
  s.pinned_used_bytes = 0;
  s.lazy = false;
  s.next_handle = 1;
  s.streams.clear();
  for (int d = 0; d < kMaxDevices; ++d) s.streams[static_cast<std::uint64_t>(d)].device = d;
  s.next_stream = kFirstUserStream;
  s.events.clear();
  s.next_event = 1;
  s.next_op = 1;
  s.armed.clear();
  s.calls.clear();
  s.access_descriptors = 0;
  s.violations.clear();
  current_context() = nullptr;
}

CUresult enter(State& s, const char* function) {
  ++s.calls[function];
  if (!s.initialized) return CUDA_ERROR_NOT_INITIALIZED;
  auto it = s.armed.find(function);
  if (it == s.armed.end()) return CUDA_SUCCESS;
  if (it->second.skip > 0) {
    --it->second.skip;
    return CUDA_SUCCESS;
  }
  const CUresult code = it->second.code;
  if (--it->second.times == 0) s.armed.erase(it);
  return code;
}

CUresult enter_ctx(State& s, const char* function) {
  if (CUresult r = enter(s, function); r != CUDA_SUCCESS) return r;
  CUctx_st* ctx = current_context();
  if (!ctx) {
    return violation(s, CUDA_ERROR_INVALID_CONTEXT,
                     std::string(function) + " called with no current context on this thread");
  }
  return s.sticky[ctx->device];
}

CUresult violation(State& s, CUresult code, const std::string& what) {
  std::fprintf(stderr, "[fakecuda] VIOLATION: %s\n", what.c_str());
  s.violations.push_back(what);
  return code;
}

bool accessible(State& s, std::uintptr_t addr, std::size_t bytes, int device, std::string* why) {
  if (auto* r = overlapping(s.reservations, addr, bytes)) {
    const std::uintptr_t base = r->first;
    Reservation& res = r->second;
    if (addr < base || addr + bytes > base + res.bytes) {
      *why = std::string("[") + hex(addr) + ", +" + std::to_string(bytes) +
             ") straddles the reserved range at " + hex(base);
      return false;
    }
    for (std::uintptr_t pos = addr; pos < addr + bytes;) {
      auto it = res.maps.upper_bound(pos);
      if (it == res.maps.begin() || std::prev(it)->first + std::prev(it)->second.bytes <= pos) {
        *why = "touches unmapped memory at " + hex(pos) + " in the reserved range at " + hex(base);
        return false;
      }
      --it;
      if (!(it->second.access_mask & (1u << device))) {
        *why = "device " + std::to_string(device) + " has no access to the mapping at " +
               hex(it->first) + " (cuMemSetAccess did not grant it)";
        return false;
      }
      pos = it->first + it->second.bytes;
    }
    return true;
  }
  for (auto* m : {&s.allocs, &s.pinned}) {
    if (auto* a = overlapping(*m, addr, bytes)) {
      if (addr < a->first || addr + bytes > a->first + a->second.bytes) {
        *why = std::string("[") + hex(addr) + ", +" + std::to_string(bytes) +
               ") runs past the allocation at " + hex(a->first) + " of " +
               std::to_string(a->second.bytes) + " bytes";
        return false;
      }
      return true;
    }
  }
  return true;  // pageable host memory: unified addressing copies from and to it
}

void check_no_pending(State& s, std::uintptr_t addr, std::size_t bytes, const char* function) {
  for (auto& [id, stream] : s.streams) {
    for (const Op& op : stream.queue) {
      if (op_touches(op, addr, bytes)) {
        violation(s, CUDA_SUCCESS,
                  std::string(function) + " of [" + hex(addr) + ", +" + std::to_string(bytes) +
                      ") while queued work on a stream still touches it");
        run_all(s);
        return;
      }
    }
  }
}

std::uint64_t stream_id(State& s, CUstream h, bool* ok) {
  *ok = true;
  if (h == nullptr) {
    CUctx_st* ctx = current_context();
    return static_cast<std::uint64_t>(ctx ? ctx->device : 0);
  }
  const auto raw = reinterpret_cast<std::uintptr_t>(h);
  const std::uint64_t id = (raw - kStreamHandleBase) / kHandleStride;
  if (raw < kStreamHandleBase || (raw - kStreamHandleBase) % kHandleStride != 0 ||
      !s.streams.count(id) || id < kFirstUserStream) {
    *ok = false;
  }
  return id;
}

CUstream stream_handle(std::uint64_t id) {
  return reinterpret_cast<CUstream>(kStreamHandleBase + id * kHandleStride);
}

std::uint64_t event_id(CUevent h) {
  const auto raw = reinterpret_cast<std::uintptr_t>(h);
  if (raw < kEventHandleBase || (raw - kEventHandleBase) % kHandleStride != 0) return 0;
  return (raw - kEventHandleBase) / kHandleStride;
}

CUevent event_handle(std::uint64_t id) {
  return reinterpret_cast<CUevent>(kEventHandleBase + id * kHandleStride);
}

void enqueue(State& s, std::uint64_t stream, Op op) {
  op.id = s.next_op++;
  s.streams[stream].queue.push_back(op);
}

void run_stream(State& s, std::uint64_t stream, std::uint64_t up_to_op) {
  auto it = s.streams.find(stream);
  if (it == s.streams.end()) return;
  std::deque<Op>& queue = it->second.queue;  // map nodes are stable while other streams run
  while (!queue.empty() && queue.front().id <= up_to_op) {
    const Op op = queue.front();
    queue.pop_front();
    execute(s, op);
  }
}

void run_device(State& s, int device) {
  for (auto& [id, stream] : s.streams) {
    if (stream.device == device) run_stream(s, id, UINT64_MAX);
  }
}

void run_all(State& s) {
  for (auto& [id, stream] : s.streams) run_stream(s, id, UINT64_MAX);
}

bool event_done(const Event& e) { return e.recorded_op == 0 || e.completed_op >= e.recorded_op; }

void* map_anonymous(std::size_t bytes, int prot) {
  void* p = mmap(nullptr, bytes, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

std::size_t page_round(std::size_t bytes) {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

void free_handle(State& s, std::uint64_t id) {
  auto it = s.handles.find(id);
  if (it == s.handles.end()) return;
  close(it->second.fd);
  if (!it->second.imported) s.used_bytes[it->second.device] -= it->second.bytes;
  s.handles.erase(it);
}

}  // namespace fakecuda

// ---- control entry points (fake_cuda_control.h) -----------------------------------------------

using fakecuda::state;

namespace {

bool valid_device(int d) { return d >= 0 && d < fakecuda::kMaxDevices; }

}  // namespace

FAKECUDA_API void fakecuda_reset(void) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  fakecuda::reset_locked(s);
}

FAKECUDA_API void fakecuda_set_device_count(int devices) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.devices = std::clamp(devices, 0, fakecuda::kMaxDevices);
}

FAKECUDA_API void fakecuda_set_capacity(int device, std::size_t bytes) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (valid_device(device)) s.capacity_bytes[device] = bytes;
}

FAKECUDA_API void fakecuda_set_pinned_capacity(std::size_t bytes) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.pinned_capacity_bytes = bytes;
}

FAKECUDA_API void fakecuda_set_peer_access(int device, int peer, int can_access) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (valid_device(device) && valid_device(peer) && device != peer) {
    s.peer[device][peer] = can_access != 0;
  }
}

FAKECUDA_API void fakecuda_set_vmm_supported(int device, int supported) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (valid_device(device)) s.vmm[device] = supported != 0;
}

FAKECUDA_API void fakecuda_set_rdma_vmm_supported(int device, int supported) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (valid_device(device)) s.rdma_vmm[device] = supported != 0;
}

FAKECUDA_API void fakecuda_set_posix_fd_supported(int device, int supported) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (valid_device(device)) s.posix_fd[device] = supported != 0;
}

FAKECUDA_API void fakecuda_set_lazy(int lazy) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.lazy = lazy != 0;
}

FAKECUDA_API void fakecuda_fail_next(const char* function, CUresult code) {
  fakecuda_fail_after(function, 0, code);
}

FAKECUDA_API void fakecuda_fail_after(const char* function, unsigned skip, CUresult code) {
  fakecuda_fail_calls(function, skip, 1, code);
}

FAKECUDA_API void fakecuda_fail_calls(const char* function, unsigned skip, unsigned times,
                                      CUresult code) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (times == 0) {
    s.armed.erase(function);
    return;
  }
  s.armed[function] = {skip, times, code};
}

FAKECUDA_API void fakecuda_set_sticky(int device, CUresult code) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (valid_device(device)) s.sticky[device] = code;
}

FAKECUDA_API CUresult fakecuda_launch(int device, CUstream h, void* dst, std::size_t bytes,
                                      int value, CUresult fault) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  if (device < 0 || device >= s.devices) return CUDA_ERROR_INVALID_DEVICE;
  if (s.sticky[device] != CUDA_SUCCESS) return s.sticky[device];
  std::uint64_t id = static_cast<std::uint64_t>(device);
  if (h != nullptr) {
    bool ok = false;
    id = fakecuda::stream_id(s, h, &ok);
    if (!ok || s.streams.at(id).device != device) {
      return fakecuda::violation(s, CUDA_ERROR_INVALID_HANDLE,
                                 "launch on a stream that is not one of the device's");
    }
  }
  fakecuda::Op op;
  op.kind = fakecuda::Op::Kind::kKernel;
  op.device = device;
  op.dst = reinterpret_cast<std::uintptr_t>(dst);
  op.bytes = bytes;
  op.fill = value;
  op.fault = fault;
  fakecuda::enqueue(s, id, op);
  return CUDA_SUCCESS;
}

FAKECUDA_API void fakecuda_drain(void) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  fakecuda::run_all(s);
}

FAKECUDA_API unsigned long long fakecuda_violations(void) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.violations.size();
}

FAKECUDA_API const char* fakecuda_violation(unsigned long long i) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return i < s.violations.size() ? s.violations[i].c_str() : nullptr;
}

FAKECUDA_API unsigned long long fakecuda_calls(const char* function) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  auto it = s.calls.find(function);
  return it == s.calls.end() ? 0 : it->second;
}

FAKECUDA_API int fakecuda_current_device(void) {
  CUctx_st* ctx = fakecuda::current_context();
  return ctx ? ctx->device : -1;
}

FAKECUDA_API std::size_t fakecuda_used_bytes(int device) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return valid_device(device) ? s.used_bytes[device] : 0;
}

FAKECUDA_API std::size_t fakecuda_mapped_bytes(int device) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  std::size_t total = 0;
  for (auto& [base, r] : s.reservations) {
    for (auto& [addr, m] : r.maps) {
      if (s.handles.at(m.handle).device == device) total += m.bytes;
    }
  }
  return total;
}

FAKECUDA_API unsigned long long fakecuda_live_handles(void) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.handles.size();
}

FAKECUDA_API unsigned long long fakecuda_reservations(void) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.reservations.size();
}

FAKECUDA_API unsigned long long fakecuda_pending_ops(void) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  unsigned long long n = 0;
  for (auto& [id, stream] : s.streams) n += stream.queue.size();
  return n;
}

FAKECUDA_API int fakecuda_primary_ctx_refs(int device) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return valid_device(device) ? s.ctx_refs[device] : 0;
}

namespace {

// The mapping that holds `addr`, or null; s.mu held.
fakecuda::Mapping* mapping_at(fakecuda::State& s, const void* addr) {
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  auto* r = fakecuda::overlapping(s.reservations, a, 1);
  if (!r) return nullptr;
  auto* m = fakecuda::overlapping(r->second.maps, a, 1);
  return m ? &m->second : nullptr;
}

}  // namespace

FAKECUDA_API unsigned fakecuda_access_mask(const void* addr) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  const fakecuda::Mapping* m = mapping_at(s, addr);
  return m ? m->access_mask : 0;
}

FAKECUDA_API int fakecuda_access_flags(const void* addr, int device) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  const fakecuda::Mapping* m = mapping_at(s, addr);
  return m && valid_device(device) ? m->access_flags[device] : 0;
}

FAKECUDA_API unsigned long long fakecuda_access_descriptors(void) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.access_descriptors;
}

FAKECUDA_API int fakecuda_rdma_capable(const void* addr) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  const fakecuda::Mapping* m = mapping_at(s, addr);
  return m ? static_cast<int>(s.handles.at(m->handle).rdma) : -1;
}
