// EventPool — device events recycled by a pool (creating and destroying an event per use costs
// a driver call each). take() hands out a spare event or creates one (kNoEvent when the device
// refuses); give() takes one back; the destructor destroys them all.
#pragma once

#include <vector>

#include "timeshare/device/backend.h"

namespace timeshare::pool {

class EventPool {
 public:
  explicit EventPool(device::Backend& backend) : backend_(backend) {}
  ~EventPool() {
    for (device::Event e : spare_) backend_.destroy_event(e);
  }
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;

  device::Event take() {
    if (!spare_.empty()) {
      const device::Event e = spare_.back();
      spare_.pop_back();
      return e;
    }
    device::Event e = device::kNoEvent;
    if (backend_.create_event(&e) != device::Status::kOk) return device::kNoEvent;
    return e;
  }
  void give(device::Event e) {
    if (e != device::kNoEvent) spare_.push_back(e);
  }

 private:
  device::Backend& backend_;
  std::vector<device::Event> spare_;
};

}  // namespace timeshare::pool
