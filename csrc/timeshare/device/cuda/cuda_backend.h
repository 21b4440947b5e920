// CudaBackend — the real device, through the CUDA driver API.
//
// The driver is loaded with dlopen("libcuda.so.1") at first use rather than linked, so the
// allocator library loads (and its sim backend works) on machines without a GPU or driver, and
// one build serves every driver version PyTorch itself can use (no runtime-version coupling
// with the cudart that torch ships). Streams and events are the driver's CUstream/CUevent,
// which are the same objects as the runtime's cudaStream_t/cudaEvent_t: PyTorch's streams pass
// straight through. Virtual memory uses cuMemAddressReserve/cuMemCreate/cuMemMap/cuMemSetAccess
// with one physical handle per granule, so any granule can be unmapped independently; physical
// memory is created RDMA-capable (allocFlags.gpuDirectRDMACapable) where the device reports
// CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED, and mapped memory is made readable
// and writable by the owning device and its peers: where peer access is tracked
// (cuda_track_peer_access), the peers with peer access enabled, as PyTorch's expandable segments
// do; else every device that can access it (cuDeviceCanAccessPeer). map_alias maps the same handles
// at a second address, and a handle is released with its last mapping. An unmap is all or
// nothing: when the driver fails a granule, those already unmapped are mapped again, so a caller
// that sees the failure knows the range is still mapped. An event recorded on a stream of another
// device (record_stream onto another GPU's stream) is recorded as a stand-in created in that
// device's context, which the driver requires and PyTorch does too. Every call makes the
// device's primary context current for its duration and gives the calling thread back the
// context it had (PyTorch's current device), so a free of a cuda:1 tensor leaves a thread on
// device 0 where it was. A driver error is kOutOfMemory only when the driver said out of memory,
// kInvalid for a bad argument or handle, kError otherwise, with last_error() naming the call and
// the driver's text; query() is false (not complete) whenever the driver does not say complete.
//
// TIMESHARE_CUDA_DRIVER=/path/to/libfakecuda.so loads another library exporting the same driver
// entry points instead of libcuda.so.1 (the default): the tests point it at the driver test
// double in tests/cuda_double/. It is read once, at the first use of the backend in the process.
#pragma once

#include <memory>
#include <string>

#include "timeshare/device/backend.h"

namespace timeshare::device {

// Whether a CUDA driver with at least one device can be loaded here (never throws).
bool cuda_available(std::string* why_not = nullptr);
int cuda_device_count();

// Creates the backend for `device`, or returns null with `error` set (no driver, bad index).
std::unique_ptr<Backend> make_cuda_backend(int device, std::string* error);

// Peer access. A kernel or copy of one GPU may touch memory of another only once peer access is
// enabled (PyTorch's CUDAAllocator::enablePeerAccess, before a peer copy), and memory mapped with
// cuMemMap only where cuMemSetAccess granted that GPU. Where the allocator learns of every
// enablePeerAccess (the native allocator does; PyTorch's pluggable route tells it nothing), peer
// access is tracked: a mapping grants its own device and the peers enabled so far, one access
// descriptor per map instead of one per GPU of the node, as PyTorch's expandable segments do.
// Untracked (the default), it grants every device that can access it, since any of them may be
// enabled behind the allocator's back.
//
// cuda_track_peer_access(true): from now on grant the enabled peers only (mappings keep the
// access they have); false: every capable device again, mappings included.
void cuda_track_peer_access(bool tracked);
// Reports enablePeerAccess(device, device_to_access): kernels and copies of `device` may touch
// memory of `device_to_access`, so every granule the CUDA backends of `device_to_access` have
// mapped, and every one they map later, is readable and writable by `device`. Enabling a pair
// twice changes nothing. False, with `error` set, when a device does not exist, `device` cannot
// access `device_to_access` (cuDeviceCanAccessPeer) or the driver refuses the access.
bool cuda_enable_peer_access(int device, int device_to_access, std::string* error = nullptr);
// Forgets the pairs enabled and stops tracking (the default). For tests, which reset the driver
// test double between cases.
void cuda_reset_peer_access();

}  // namespace timeshare::device
