// CudaBackend — the real device, through the CUDA driver API.
//
// The driver is loaded with dlopen("libcuda.so.1") at first use rather than linked, so the
// allocator library loads (and its sim backend works) on machines without a GPU or driver, and
// one build serves every driver version PyTorch itself can use (no runtime-version coupling
// with the cudart that torch ships). Streams and events are the driver's CUstream/CUevent,
// which are the same objects as the runtime's cudaStream_t/cudaEvent_t: PyTorch's streams pass
// straight through. Virtual memory uses cuMemAddressReserve/cuMemCreate/cuMemMap/cuMemSetAccess
// with one physical handle per granule, so any granule can be unmapped independently; mapped
// memory is made readable and writable by the owning device and by every device for which
// cuDeviceCanAccessPeer says yes (as PyTorch's expandable segments do); map_alias maps the same
// handles at a second address, and a handle is released with its last mapping. Every call makes the
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

}  // namespace timeshare::device
