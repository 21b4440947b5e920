// CUDA IPC over virtual memory: the text of a handle that names a live block's memory in
// another process, and taking that process's file descriptors (pidfd_getfd, Linux 5.6+).
//
// A sender exports the physical memory of each granule under a block as a POSIX file
// descriptor (device::Backend::export_granules) and keeps those descriptors open while the
// block lives; the handle says which process holds them and under which numbers. A receiver
// takes copies of them from that process and maps the same memory (import_granules). The
// handle's token and serial make it unique for the life of the machine: a receiver may cache
// mappings by handle text (torch's getIpcDevPtr contract) without mistaking a later block that
// happens to reuse descriptor numbers for an earlier one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace timeshare::ipc {

struct Handle {
  int pid = 0;                // the sending process
  int device = 0;             // its device index
  std::size_t granule = 0;    // bytes per descriptor
  std::uint64_t token = 0;    // random per sending process
  std::uint64_t serial = 0;   // per export in that process
  std::vector<int> fds;       // the sender's descriptor numbers, one per granule
  std::vector<std::uint64_t> inodes;  // what each descriptor names (fstat), checked on taking
};

// A new handle of this process for `fds` (token, serial and inodes filled in).
Handle make_handle(int device, std::size_t granule, std::vector<int> fds);
std::string to_text(const Handle& h);
// False, with `why`, when `text` is not a handle to_text wrote.
bool parse(const std::string& text, Handle* out, std::string* why);

// Copies of the sender's descriptors, open in this process (the caller closes them); false,
// with `why` naming the cause (the sender exited, it freed the block, the kernel's ptrace
// policy forbids taking its descriptors), and nothing open, when any cannot be taken. A
// descriptor number the sender reused for something else (it freed the block, then opened other
// files) is refused by its inode.
bool take_fds(const Handle& h, std::vector<int>* out, std::string* why);

void close_fds(std::vector<int>* fds);

}  // namespace timeshare::ipc
