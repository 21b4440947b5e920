// trace/ — allocation traces in a compact array form: the event format, its reader and writer.
// The ground floor: every layer may read it (predict/ trains from it). The replayer, the
// reference policies and the oracle planner that consume it sit above allocator/, in replay/.
//
// Real traces are PyTorch memory snapshots (see docs/traces.md); the Python reader
// (timeshare.snapshot) resolves their addresses into this compact form: one 32-byte record per
// allocation or free, where a free names the id of the allocation it frees. Ids are dense
// (0 .. allocs-1, in allocation order), so per-allocation data lives in plain vectors. The same
// layout is a NumPy structured dtype on the Python side (zero-copy into C++) and the body of a
// `.tsev` file (magic "TSEV0001", u64 count, then the records, little-endian).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace timeshare::trace {

enum class Op : std::uint8_t { kAlloc = 0, kFree = 1 };

struct Event {
  Op op;
  std::uint8_t pad[3];
  std::uint32_t stream;    // dense stream index within the trace (0 = the trace's first stream)
  std::uint64_t id;        // allocation id (dense, allocation order); a free names its alloc
  std::uint64_t bytes;     // requested bytes (for frees: the allocation's bytes)
  std::uint64_t time_us;   // trace time in microseconds
};
static_assert(sizeof(Event) == 32, "Event must stay 32 bytes: it is shared with NumPy");

struct Trace {
  std::string name;
  std::vector<Event> events;
  std::size_t allocs = 0;
};

// Counts allocations and checks the structural invariants every consumer relies on: ids dense
// in allocation order, each freed at most once and only after its allocation. Returns an empty
// string when valid, otherwise one line saying what is wrong.
std::string validate(const Event* events, std::size_t n, std::size_t* allocs_out);

bool write_tsev(const std::string& path, const std::vector<Event>& events, std::string* error);
bool read_tsev(const std::string& path, std::vector<Event>* events, std::string* error);

// read_tsev + validate, and the name (the file name without directory and ".tsev"). On failure
// *error is one line naming the file.
bool load_trace(const std::string& path, Trace* out, std::string* error);

}  // namespace timeshare::trace
