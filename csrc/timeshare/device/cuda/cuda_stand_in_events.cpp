#include "timeshare/device/cuda/cuda_stand_in_events.h"

#include "timeshare/device/cuda/cuda_driver.h"

namespace timeshare::device::cuda_api {

CUresult StandInEvents::record(CUevent e, CUstream stream, CUcontext owner, CUcontext home,
                               const char** what) {
  const Driver& d = driver();
  std::lock_guard lock(mu_);
  *what = "cuCtxSetCurrent";
  CUresult r = d.cuCtxSetCurrent(owner);
  if (r != CUDA_SUCCESS) return r;
  std::vector<CUevent>& spare = spare_[owner];
  CUevent x = nullptr;
  if (!spare.empty()) {
    x = spare.back();
    spare.pop_back();
  } else {
    *what = "cuEventCreate";
    r = d.cuEventCreate(&x, CU_EVENT_DISABLE_TIMING);
  }
  if (r == CUDA_SUCCESS) {
    *what = "cuEventRecord";
    r = d.cuEventRecord(x, stream);
    if (r != CUDA_SUCCESS) spare.push_back(x);
  }
  if (r == CUDA_SUCCESS) {
    auto [it, fresh] = live_.try_emplace(e, StandIn{x, owner});
    if (!fresh) {  // the earlier recording is superseded, as an event recorded again
      spare_[it->second.ctx].push_back(it->second.event);
      it->second = StandIn{x, owner};
    }
    any_.store(true, std::memory_order_release);
  }
  const CUresult back = d.cuCtxSetCurrent(home);
  if (r == CUDA_SUCCESS && back != CUDA_SUCCESS) {
    *what = "cuCtxSetCurrent";
    r = back;
  }
  return r;
}

void StandInEvents::destroy_all() {
  const Driver& d = driver();
  std::lock_guard lock(mu_);
  for (auto& [e, in] : live_) d.cuEventDestroy(in.event);
  for (auto& [ctx, events] : spare_) {
    for (CUevent x : events) d.cuEventDestroy(x);
  }
  live_.clear();
  spare_.clear();
}

}  // namespace timeshare::device::cuda_api
