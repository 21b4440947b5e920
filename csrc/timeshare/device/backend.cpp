#include "timeshare/device/backend.h"

namespace timeshare::device {

const char* to_string(Status s) noexcept {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kOutOfMemory: return "out of memory";
    case Status::kInvalid: return "invalid argument";
    case Status::kError: return "device error";
  }
  return "unknown status";
}

}  // namespace timeshare::device
