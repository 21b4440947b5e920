// libfakecuda.so, virtual memory: cuMemAddressReserve/Free, cuMemCreate/Release, cuMemMap/Unmap,
// cuMemSetAccess and cuMemGetAllocationGranularity over host memory (a reservation is a
// PROT_NONE mapping, a physical handle a memfd mapped into it). The rules each call enforces
// are listed at the top of fake_cuda.cpp.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "fake_cuda_control.h"
#include "fake_cuda_state.h"

using namespace fakecuda;

namespace {

// The reservation that holds all of [addr, addr+bytes), or null.
Reservation* reservation_of(State& s, std::uintptr_t addr, std::size_t bytes) {
  auto it = s.reservations.upper_bound(addr);
  if (it == s.reservations.begin()) return nullptr;
  --it;
  if (addr < it->first || addr + bytes > it->first + it->second.bytes) return nullptr;
  return &it->second;
}

// CUDA_SUCCESS when `prop` describes pinned device memory of an existing device.
CUresult check_prop(State& s, const CUmemAllocationProp* prop, const char* function) {
  if (!prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     std::string(function) + ": the property must be pinned device memory");
  }
  if (prop->location.id < 0 || prop->location.id >= s.devices) return CUDA_ERROR_INVALID_DEVICE;
  if (!s.vmm[prop->location.id]) return CUDA_ERROR_NOT_SUPPORTED;
  return CUDA_SUCCESS;
}

}  // namespace

FAKE_EXPORT CUresult cuMemGetAllocationGranularity(size_t* granularity,
                                                   const CUmemAllocationProp* prop,
                                                   CUmemAllocationGranularity_flags option) {
  FAKE_ENTER("cuMemGetAllocationGranularity");
  if (CUresult r = check_prop(s, prop, "cuMemGetAllocationGranularity"); r != CUDA_SUCCESS) {
    return r;
  }
  *granularity = kGranuleBytes;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemAddressReserve(CUdeviceptr* ptr, size_t bytes, size_t alignment,
                                         CUdeviceptr addr, unsigned long long flags) {
  FAKE_ENTER_CTX("cuMemAddressReserve");
  if (bytes == 0 || !granular(bytes)) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemAddressReserve of " + std::to_string(bytes) +
                         " bytes: not a multiple of the 2 MiB granularity");
  }
  if (alignment == 0) alignment = kGranuleBytes;
  if ((alignment & (alignment - 1)) != 0 || !granular(alignment) || flags != 0) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemAddressReserve: alignment must be a power-of-two multiple of the "
                     "granularity and flags 0");
  }
  const std::size_t mmap_bytes = bytes + alignment;
  void* raw = map_anonymous(mmap_bytes, PROT_NONE);
  if (!raw) return CUDA_ERROR_OUT_OF_MEMORY;
  const auto raw_addr = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t base = (raw_addr + alignment - 1) / alignment * alignment;
  Reservation& r = s.reservations[base];
  r.bytes = bytes;
  r.mmap_base = raw_addr;
  r.mmap_bytes = mmap_bytes;
  *ptr = static_cast<CUdeviceptr>(base);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t bytes) {
  FAKE_ENTER_CTX("cuMemAddressFree");
  auto it = s.reservations.find(static_cast<std::uintptr_t>(ptr));
  if (it == s.reservations.end() || it->second.bytes != bytes) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemAddressFree of a range that is not exactly one reservation");
  }
  if (!it->second.maps.empty()) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemAddressFree with " + std::to_string(it->second.maps.size()) +
                         " mapping(s) still inside the range");
  }
  munmap(reinterpret_cast<void*>(it->second.mmap_base), it->second.mmap_bytes);
  s.reservations.erase(it);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle* handle, size_t bytes,
                                 const CUmemAllocationProp* prop, unsigned long long flags) {
  FAKE_ENTER_CTX("cuMemCreate");
  if (CUresult r = check_prop(s, prop, "cuMemCreate"); r != CUDA_SUCCESS) return r;
  if (bytes == 0 || !granular(bytes) || flags != 0) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemCreate of " + std::to_string(bytes) +
                         " bytes: not a multiple of the 2 MiB granularity (or flags not 0)");
  }
  const int dev = prop->location.id;
  const bool rdma = prop->allocFlags.gpuDirectRDMACapable != 0;
  if (rdma && !s.rdma_vmm[dev]) {
    return violation(s, CUDA_ERROR_NOT_SUPPORTED,
                     "cuMemCreate: allocFlags.gpuDirectRDMACapable on device " +
                         std::to_string(dev) +
                         ", which does not report GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED");
  }
  const unsigned types = static_cast<unsigned>(prop->requestedHandleTypes);
  if (types != CU_MEM_HANDLE_TYPE_NONE && types != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) {
    return violation(s, CUDA_ERROR_NOT_SUPPORTED,
                     "cuMemCreate: requestedHandleTypes other than POSIX_FILE_DESCRIPTOR");
  }
  const bool exportable = types == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  if (exportable && !s.posix_fd[dev]) {
    return violation(s, CUDA_ERROR_NOT_SUPPORTED,
                     "cuMemCreate: requestedHandleTypes POSIX_FILE_DESCRIPTOR on device " +
                         std::to_string(dev) +
                         ", which does not report HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED");
  }
  if (s.used_bytes[dev] + bytes > s.capacity_bytes[dev]) return CUDA_ERROR_OUT_OF_MEMORY;
  const int fd = memfd_create("fakecuda-handle", 0);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    if (fd >= 0) close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  const std::uint64_t id = s.next_handle++;
  s.handles[id] = {dev, bytes, fd, 0, false, rdma, exportable, false};
  s.used_bytes[dev] += bytes;
  *handle = id;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  FAKE_ENTER_CTX("cuMemRelease");
  auto it = s.handles.find(handle);
  if (it == s.handles.end() || it->second.released) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemRelease of an unknown or already released handle");
  }
  if (it->second.maps > 0) {
    it->second.released = true;  // legal: freed at its last unmap
    return CUDA_SUCCESS;
  }
  free_handle(s, handle);
  return CUDA_SUCCESS;
}

// The physical memory of a handle as a POSIX file descriptor: a new descriptor of the memfd
// behind it, which another process takes with pidfd_getfd as it would the real driver's.
FAKE_EXPORT CUresult cuMemExportToShareableHandle(void* shareable,
                                                  CUmemGenericAllocationHandle handle,
                                                  CUmemAllocationHandleType type,
                                                  unsigned long long flags) {
  FAKE_ENTER_CTX("cuMemExportToShareableHandle");
  auto it = s.handles.find(handle);
  if (it == s.handles.end() || it->second.released || shareable == nullptr) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemExportToShareableHandle of an unknown or released handle");
  }
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || flags != 0 || !it->second.exportable) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemExportToShareableHandle: the handle was not created with "
                     "requestedHandleTypes POSIX_FILE_DESCRIPTOR (or another type was asked)");
  }
  const int fd = fcntl(it->second.fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  *static_cast<int*>(shareable) = fd;
  return CUDA_SUCCESS;
}

// A handle to the memory a POSIX file descriptor from cuMemExportToShareableHandle names (in
// this process or, passed over, another); the caller keeps the descriptor. Of the current
// context's device: the double cannot tell which device made the memory.
FAKE_EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle* handle,
                                                    void* os_handle,
                                                    CUmemAllocationHandleType type) {
  FAKE_ENTER_CTX("cuMemImportFromShareableHandle");
  const int fd = static_cast<int>(reinterpret_cast<std::uintptr_t>(os_handle));
  struct stat st {};
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR || handle == nullptr ||
      fstat(fd, &st) != 0 || st.st_size <= 0 || !granular(static_cast<std::size_t>(st.st_size))) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemImportFromShareableHandle of something that is not an exported "
                     "POSIX file descriptor");
  }
  const int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  const std::uint64_t id = s.next_handle++;
  s.handles[id] = {current_device(), static_cast<std::size_t>(st.st_size), own, 0, false, false,
                   true, true};
  *handle = id;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t bytes, size_t offset,
                              CUmemGenericAllocationHandle handle, unsigned long long flags) {
  FAKE_ENTER_CTX("cuMemMap");
  const auto addr = static_cast<std::uintptr_t>(ptr);
  auto h = s.handles.find(handle);
  if (h == s.handles.end() || h->second.released) {
    return violation(s, CUDA_ERROR_INVALID_HANDLE, "cuMemMap of an unknown or released handle");
  }
  if (bytes == 0 || !granular(bytes) || !granular(addr) || !granular(offset) || flags != 0 ||
      offset + bytes > h->second.bytes) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemMap of " + std::to_string(bytes) + " bytes at offset " +
                         std::to_string(offset) +
                         ": size, address and offset must be multiples of the 2 MiB "
                         "granularity within the handle");
  }
  Reservation* r = reservation_of(s, addr, bytes);
  if (!r) {
    return violation(s, CUDA_ERROR_INVALID_VALUE, "cuMemMap outside a reserved address range");
  }
  for (auto& [start, m] : r->maps) {
    if (start < addr + bytes && addr < start + m.bytes) {
      return violation(s, CUDA_ERROR_INVALID_VALUE, "cuMemMap over an existing mapping");
    }
  }
  void* p = mmap(reinterpret_cast<void*>(addr), bytes, PROT_NONE, MAP_SHARED | MAP_FIXED,
                 h->second.fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  r->maps[addr] = {bytes, handle, 0};
  ++h->second.maps;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t bytes) {
  FAKE_ENTER_CTX("cuMemUnmap");
  const auto addr = static_cast<std::uintptr_t>(ptr);
  Reservation* r = bytes == 0 ? nullptr : reservation_of(s, addr, bytes);
  // The range must be made of whole mappings, back to back.
  bool whole = r != nullptr;
  for (std::uintptr_t pos = addr; whole && pos < addr + bytes;) {
    auto it = r->maps.find(pos);
    whole = it != r->maps.end() && pos + it->second.bytes <= addr + bytes;
    if (whole) pos += it->second.bytes;
  }
  if (!whole) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemUnmap of a range that is not exactly whole mappings");
  }
  check_no_pending(s, addr, bytes, "cuMemUnmap");
  for (std::uintptr_t pos = addr; pos < addr + bytes;) {
    auto it = r->maps.find(pos);
    const Mapping m = it->second;
    r->maps.erase(it);
    mmap(reinterpret_cast<void*>(pos), m.bytes, PROT_NONE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    Handle& h = s.handles.at(m.handle);
    if (--h.maps == 0 && h.released) free_handle(s, m.handle);
    pos += m.bytes;
  }
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t bytes, const CUmemAccessDesc* desc,
                                    size_t count) {
  FAKE_ENTER_CTX("cuMemSetAccess");
  const auto addr = static_cast<std::uintptr_t>(ptr);
  Reservation* r = bytes == 0 ? nullptr : reservation_of(s, addr, bytes);
  bool covered = r != nullptr && count > 0 && desc != nullptr;
  for (std::uintptr_t pos = addr; covered && pos < addr + bytes;) {
    auto it = r->maps.find(pos);
    covered = it != r->maps.end();
    if (covered) pos += it->second.bytes;
  }
  if (!covered) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemSetAccess of a range that is not fully mapped (from a mapping's start)");
  }
  for (std::size_t i = 0; i < count; ++i) {
    const CUmemAccessDesc& d = desc[i];
    if (d.location.type != CU_MEM_LOCATION_TYPE_DEVICE || d.location.id < 0 ||
        d.location.id >= s.devices) {
      return violation(s, CUDA_ERROR_INVALID_DEVICE, "cuMemSetAccess for an unknown device");
    }
    for (std::uintptr_t pos = addr; pos < addr + bytes; pos += r->maps.at(pos).bytes) {
      const int owner = s.handles.at(r->maps.at(pos).handle).device;
      if (owner != d.location.id && !s.peer[d.location.id][owner]) {
        return violation(s, CUDA_ERROR_INVALID_DEVICE,
                         "cuMemSetAccess: device " + std::to_string(d.location.id) +
                             " cannot access memory of device " + std::to_string(owner));
      }
    }
  }
  s.access_descriptors += count;
  for (std::uintptr_t pos = addr; pos < addr + bytes;) {
    Mapping& m = r->maps.at(pos);
    for (std::size_t i = 0; i < count; ++i) {
      m.access_flags[desc[i].location.id] = static_cast<unsigned char>(desc[i].flags);
      const unsigned bit = 1u << desc[i].location.id;
      if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE) {
        m.access_mask |= bit;
      } else {
        m.access_mask &= ~bit;
      }
    }
    mprotect(reinterpret_cast<void*>(pos), m.bytes,
             m.access_mask ? PROT_READ | PROT_WRITE : PROT_NONE);
    pos += m.bytes;
  }
  return CUDA_SUCCESS;
}
