// libfakecuda.so, streams, events and copies: every operation is queued on its stream and runs
// in order when the host synchronizes (stream, event, context), queries an event (eager mode)
// or drains; a copy is checked when it is enqueued and again when it runs (fake_cuda_state.h).
#include <string>

#include "fake_cuda_control.h"
#include "fake_cuda_state.h"

using namespace fakecuda;

namespace {

// The event behind `h`, or null (counting a violation).
Event* find_event(State& s, CUevent h, const char* function) {
  auto it = s.events.find(event_id(h));
  if (it == s.events.end()) {
    violation(s, CUDA_ERROR_INVALID_HANDLE, std::string(function) + " of an unknown event");
    return nullptr;
  }
  return &it->second;
}

}  // namespace

FAKE_EXPORT CUresult cuStreamCreate(CUstream* stream, unsigned int flags) {
  FAKE_ENTER_CTX("cuStreamCreate");
  if (flags != CU_STREAM_DEFAULT && flags != CU_STREAM_NON_BLOCKING) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  const std::uint64_t id = s.next_stream++;
  s.streams[id].device = current_device();
  *stream = stream_handle(id);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamDestroy(CUstream stream) {
  FAKE_ENTER_CTX("cuStreamDestroy_v2");
  bool ok = false;
  const std::uint64_t id = stream_id(s, stream, &ok);
  if (!ok || stream == nullptr) {
    return violation(s, CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy of an unknown stream");
  }
  run_stream(s, id, UINT64_MAX);  // its queued work still completes
  s.streams.erase(id);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamGetCtx(CUstream stream, CUcontext* ctx) {
  FAKE_ENTER_CTX("cuStreamGetCtx");
  bool ok = false;
  const std::uint64_t id = stream_id(s, stream, &ok);
  if (!ok) return violation(s, CUDA_ERROR_INVALID_HANDLE, "cuStreamGetCtx of an unknown stream");
  *ctx = primary_context(s.streams.at(id).device);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int flags) {
  FAKE_ENTER_CTX("cuStreamWaitEvent");
  bool ok = false;
  const std::uint64_t id = stream_id(s, stream, &ok);
  if (!ok) return violation(s, CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent on an unknown stream");
  Event* e = find_event(s, event, "cuStreamWaitEvent");
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (!event_done(*e)) {
    Op op;
    op.kind = Op::Kind::kWait;
    op.device = current_device();
    op.wait_stream = e->record_stream;
    op.wait_op = e->recorded_op;
    enqueue(s, id, op);
  }
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuStreamSynchronize(CUstream stream) {
  FAKE_ENTER_CTX("cuStreamSynchronize");
  bool ok = false;
  const std::uint64_t id = stream_id(s, stream, &ok);
  if (!ok) {
    return violation(s, CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize of an unknown stream");
  }
  run_stream(s, id, UINT64_MAX);
  return s.sticky[s.streams.at(id).device];
}

FAKE_EXPORT CUresult cuEventCreate(CUevent* event, unsigned int flags) {
  FAKE_ENTER_CTX("cuEventCreate");
  constexpr unsigned kKnownFlags = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING |
                                   CU_EVENT_INTERPROCESS;
  if ((flags & ~kKnownFlags) != 0) return CUDA_ERROR_INVALID_VALUE;
  const std::uint64_t id = s.next_event++;
  s.events[id].device = current_device();
  *event = event_handle(id);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventDestroy(CUevent event) {
  FAKE_ENTER_CTX("cuEventDestroy_v2");
  if (!find_event(s, event, "cuEventDestroy")) return CUDA_ERROR_INVALID_HANDLE;
  s.events.erase(event_id(event));  // legal while pending: its marker finds nothing
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventRecord(CUevent event, CUstream stream) {
  FAKE_ENTER_CTX("cuEventRecord");
  bool ok = false;
  const std::uint64_t id = stream_id(s, stream, &ok);
  if (!ok) return violation(s, CUDA_ERROR_INVALID_HANDLE, "cuEventRecord on an unknown stream");
  Event* e = find_event(s, event, "cuEventRecord");
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  if (e->device != s.streams.at(id).device) {
    return violation(s, CUDA_ERROR_INVALID_HANDLE,
                     "cuEventRecord: event of device " + std::to_string(e->device) +
                         " on a stream of device " + std::to_string(s.streams.at(id).device));
  }
  Op op;
  op.kind = Op::Kind::kMarker;
  op.device = current_device();
  op.event = event_id(event);
  e->recorded_op = s.next_op;  // the id enqueue gives the marker
  e->record_stream = id;
  enqueue(s, id, op);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuEventQuery(CUevent event) {
  FAKE_ENTER_CTX("cuEventQuery");
  Event* e = find_event(s, event, "cuEventQuery");
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  if (!s.lazy && !event_done(*e)) run_stream(s, e->record_stream, e->recorded_op);
  if (s.sticky[e->device] != CUDA_SUCCESS) return s.sticky[e->device];
  return event_done(*e) ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

FAKE_EXPORT CUresult cuEventSynchronize(CUevent event) {
  FAKE_ENTER_CTX("cuEventSynchronize");
  Event* e = find_event(s, event, "cuEventSynchronize");
  if (!e) return CUDA_ERROR_INVALID_HANDLE;
  if (!event_done(*e)) run_stream(s, e->record_stream, e->recorded_op);
  return s.sticky[e->device];
}

FAKE_EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes,
                                   CUstream stream) {
  FAKE_ENTER_CTX("cuMemcpyAsync");
  bool ok = false;
  const std::uint64_t id = stream_id(s, stream, &ok);
  if (!ok) return violation(s, CUDA_ERROR_INVALID_HANDLE, "cuMemcpyAsync on an unknown stream");
  if (bytes == 0) return CUDA_SUCCESS;
  const int dev = current_device();
  std::string why;
  if (!accessible(s, static_cast<std::uintptr_t>(src), bytes, dev, &why) ||
      !accessible(s, static_cast<std::uintptr_t>(dst), bytes, dev, &why)) {
    return violation(s, CUDA_ERROR_INVALID_VALUE, "cuMemcpyAsync from device " +
                                                      std::to_string(dev) + ": " + why);
  }
  Op op;
  op.kind = Op::Kind::kCopy;
  op.device = dev;
  op.dst = static_cast<std::uintptr_t>(dst);
  op.src = static_cast<std::uintptr_t>(src);
  op.bytes = bytes;
  enqueue(s, id, op);
  return CUDA_SUCCESS;
}
