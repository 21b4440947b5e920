// The process-wide allocators, one per device, created on first use with the configured options.
//
// PyTorch calls the C entry points (api/) with a device index; they find the device's Allocator
// here. Options are fixed once the first allocator exists: configure() after that is refused
// unless the options are identical, so a half-configured allocator can never serve memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "timeshare/allocator/allocator.h"
#include "timeshare/common/options.h"

namespace timeshare::registry {

inline constexpr int kMaxDevices = 64;

// Sets the options for allocators created from now on. Returns "" on success, else one line.
std::string configure(const Options& options);
Options options();
bool any_created();

// The allocator of `device`, created on first call; nullptr (with error set) when its backend
// cannot be created (no driver, bad index).
Allocator* get(int device, std::string* error = nullptr);
// An allocator that already exists, or nullptr (never creates).
Allocator* existing(int device);
void for_each(const std::function<void(int, Allocator&)>& f);
// The mapped run holding `ptr` on whichever device maps it (torch's getBaseAllocation, on both
// routes); false when no allocator maps it.
bool base_allocation(const void* ptr, std::uintptr_t* base, std::size_t* bytes);

// Destroys every allocator (tests and the sim demo only). Refused ("" = done) while any holds
// live blocks, because their memory would be freed under the caller.
std::string reset();

}  // namespace timeshare::registry
