// make_room — the conflict-spill seam between the allocator and whoever holds spillable data.
//
// When an allocation would pass the budget, the allocator (a) leaves its own lock, (b) calls
// make_room(device, bytes), (c) retries the allocation once under the lock. Holders of spillable
// data (the offload hooks, through the Python bindings) register a callback that spills
// already-packed resident activations, waits on their copy events, drops its references so the
// memory is freed, and returns how many bytes it released. Callbacks run on the allocating thread
// with no timeshare lock held, so they may free (and even allocate) through the allocator; a
// make_room() reached again from inside a callback on the same thread returns 0 at once, so
// there is no recursion. Thread-safe; callbacks are copied out of the registry before they run,
// so unregistering while one runs is safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace timeshare::spill {

using MakeRoomFn = std::function<std::size_t(int device, std::size_t bytes)>;

// Returns a token for unregister_make_room (never 0).
std::uint64_t register_make_room(MakeRoomFn fn);
bool unregister_make_room(std::uint64_t token);
std::size_t make_room_callbacks();

// Asks the registered callbacks, in registration order, to free at least `bytes` on `device`;
// stops when enough was freed. Returns the bytes they reported freed.
std::size_t make_room(int device, std::size_t bytes);

}  // namespace timeshare::spill
