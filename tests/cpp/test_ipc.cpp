// CUDA IPC through the allocator core (allocator_ipc.cpp): a live block's memory shared as a
// handle and mapped by another allocator (in another process on a GPU; here a second core in
// this process, which takes the descriptors from this process's pid exactly as it would from
// another's), over the CUDA backend and the driver double, whose physical memory is real shared
// pages: what one side writes, the other reads. The sim shares nothing and says so.
#include <catch2/catch.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include <cstring>
#include <string>

#include "timeshare/allocator/allocator.h"
#include "timeshare/allocator/ipc_handle.h"
#include "timeshare/common/units.h"
#include "timeshare/device/sim/sim_backend.h"

#ifdef TIMESHARE_WITH_CUDA
#include "cuda_fixture.h"
#include "fake_cuda_control.h"
#endif

extern char** environ;

using namespace timeshare;

TEST_CASE("ipc: a handle's text parses back, and anything else is one clear refusal", "[ipc]") {
  ipc::Handle h = ipc::make_handle(3, 2 * kMiB, {});
  h.fds = {7, 8};
  h.inodes = {11, 12};
  const std::string text = ipc::to_text(h);
  ipc::Handle back;
  std::string why;
  REQUIRE(ipc::parse(text, &back, &why));
  CHECK(back.pid == h.pid);
  CHECK(back.device == 3);
  CHECK(back.granule == 2 * kMiB);
  CHECK(back.token == h.token);
  CHECK(back.serial == h.serial);
  CHECK(back.fds == std::vector<int>{7, 8});
  CHECK(back.inodes == std::vector<std::uint64_t>{11, 12});
  CHECK(ipc::make_handle(0, 2 * kMiB, {}).serial != h.serial);  // unique per export
  // torch's own handles (a cudaIpcMemHandle_t, its expandable-segment format), and damage.
  for (const std::string& bad :
       {std::string(64, '\x01'), std::string("timeshare-ipc/1 pid=x"), text.substr(0, 30),
        text + ",", text + "x", std::string("timeshare-ipc/1\0 pid=1", 22)}) {
    why.clear();
    CHECK_FALSE(ipc::parse(bad, &back, &why));
    CHECK(why.find("not a timeshare CUDA IPC handle") == 0);
  }
}

TEST_CASE("ipc: the sim backend shares no memory between processes, and says so", "[ipc]") {
  device::SimOptions so;
  so.capacity_bytes = kGiB;
  Allocator a(*parse_options("policy:timeshare").options, std::make_unique<device::SimBackend>(so));
  void* p = a.malloc(3 * kMiB, 0);
  REQUIRE(p);
  std::size_t offset = 0;
  std::string why;
  CHECK(a.share_ipc(p, &offset, &why).empty());
  CHECK(why.find("the sim backend cannot export this memory") == 0);
  why.clear();
  CHECK(a.share_ipc(static_cast<char*>(p) + 1, &offset, &why).empty());
  CHECK(why == "the pointer is not the start of a live block timeshare allocated");
  REQUIRE(a.free(p));
}

#ifdef TIMESHARE_WITH_CUDA

using namespace timeshare::test;

namespace {

// A new block of `bytes` filled with `fill`, and its handle (the test fails where it has none).
struct Shared {
  unsigned char* p = nullptr;
  std::string handle;
  std::size_t offset = 0;
};
Shared share_new_block(Allocator& a, std::size_t bytes, unsigned char fill) {
  Shared s;
  s.p = static_cast<unsigned char*>(a.malloc(bytes, 0));
  REQUIRE(s.p);
  std::memset(s.p, fill, bytes);
  std::string why;
  s.handle = a.share_ipc(s.p, &s.offset, &why);
  INFO(why);
  REQUIRE(s.handle.rfind("timeshare-ipc/1 ", 0) == 0);
  return s;
}

}  // namespace

TEST_CASE("cuda: a block shared with share_ipc is the same memory where open_ipc maps it",
          "[cuda][ipc]") {
  FakeDriver fake(1);
  {
    Allocator sender(options_of("policy:timeshare"), cuda(0));
    Allocator receiver(options_of("policy:timeshare"), cuda(0));
    (void)sender.malloc(1 * kMiB, 0);  // the shared block does not start on a granule
    const std::size_t bytes = 5 * kMiB + 4096;
    const auto [p, handle, offset] = share_new_block(sender, bytes, 0xAB);
    std::string why;
    CHECK(offset == reinterpret_cast<std::uintptr_t>(p) % (2 * kMiB));
    std::size_t again = 0;
    CHECK(sender.share_ipc(p, &again, &why) == handle);  // one export per block
    CHECK(again == offset);

    const std::size_t mapped_before = fakecuda_mapped_bytes(0);
    auto* base = static_cast<unsigned char*>(receiver.open_ipc(handle, &why));
    INFO(why);
    REQUIRE(base);
    unsigned char* q = base + offset;
    CHECK(q != p);
    CHECK(fakecuda_mapped_bytes(0) == mapped_before + 4 * 2 * kMiB);  // the block's 4 granules
    CHECK(q[0] == 0xAB);
    CHECK(q[bytes - 1] == 0xAB);
    q[17] = 0x5C;  // the receiver writes; the sender reads it
    CHECK(p[17] == 0x5C);
    // Not the receiver's block: its own statistics do not count it.
    CHECK(receiver.stats().allocated_bytes.front().current == 0);

    // The sender frees its block: the receiver's mapping keeps the memory.
    REQUIRE(sender.free(p));
    sender.empty_cache();
    CHECK(q[bytes - 1] == 0xAB);
    // A handle of a freed block opens no more.
    why.clear();
    CHECK(receiver.open_ipc(handle, &why) == nullptr);
    CHECK(why.find("no longer holds the memory") != std::string::npos);

    CHECK(receiver.close_ipc(base));
    CHECK_FALSE(receiver.close_ipc(base));  // once
  }
  CHECK(fakecuda_mapped_bytes(0) == 0);
  CHECK(fakecuda_live_handles() == 0);
  CHECK(fakecuda_reservations() == 0);
  check_violations();
}

// The receiver of the next test, run in its own process (this binary again, started by
// posix_spawn: a fork of a process with threads is not safe): maps the handle in
// TIMESHARE_TEST_IPC_HANDLE, checks the sender's bytes and writes one back.
TEST_CASE("cuda: the receiving process of a shared block", "[.][ipc-receiver]") {
  const char* handle = std::getenv("TIMESHARE_TEST_IPC_HANDLE");
  const char* offset = std::getenv("TIMESHARE_TEST_IPC_OFFSET");
  if (!handle || !offset) {  // a run of the whole suite (a filter such as "~[bench]" runs it)
    SUCCEED("nothing to receive: the sender's test starts this one");
    return;
  }
  FakeDriver fake(1);
  {
    Allocator receiver(options_of("policy:timeshare"), cuda(0));
    std::string why;
    auto* base = static_cast<unsigned char*>(receiver.open_ipc(handle, &why));
    INFO(why);
    REQUIRE(base);
    unsigned char* q = base + std::stoull(offset);
    CHECK(q[0] == 0x3D);
    CHECK(q[3 * kMiB - 1] == 0x3D);
    q[3 * kMiB / 2] = 0x77;
    CHECK(receiver.close_ipc(base));
  }
  CHECK(fakecuda_mapped_bytes(0) == 0);
  check_violations();
}

TEST_CASE("cuda: another process maps a shared block, reads what the sender wrote and writes back",
          "[cuda][ipc]") {
  FakeDriver fake(1);
  Allocator sender(options_of("policy:timeshare"), cuda(0));
  const std::size_t bytes = 3 * kMiB;
  const auto [p, handle, offset] = share_new_block(sender, bytes, 0x3D);

  std::vector<std::string> env_text;
  for (char** e = environ; *e; ++e) env_text.emplace_back(*e);
  env_text.push_back("TIMESHARE_TEST_IPC_HANDLE=" + handle);
  env_text.push_back("TIMESHARE_TEST_IPC_OFFSET=" + std::to_string(offset));
  std::vector<char*> env;
  for (auto& e : env_text) env.push_back(e.data());
  env.push_back(nullptr);
  std::string self = "/proc/self/exe", spec = "[ipc-receiver]";
  char* argv[] = {self.data(), spec.data(), nullptr};
  pid_t child = 0;
  REQUIRE(posix_spawn(&child, "/proc/self/exe", nullptr, nullptr, argv, env.data()) == 0);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);  // the receiver's checks passed (its output is above)
  CHECK(p[bytes / 2] == 0x77);      // its write, in the sender's block
  REQUIRE(sender.free(p));
  sender.empty_cache();
  check_violations();
}

TEST_CASE("cuda: a device without POSIX file descriptor handles refuses to share, clearly",
          "[cuda][ipc]") {
  FakeDriver fake(1);
  fakecuda_set_posix_fd_supported(0, 0);
  {
    Allocator a(options_of("policy:timeshare"), cuda(0));
    void* p = a.malloc(2 * kMiB, 0);
    REQUIRE(p);
    std::size_t offset = 0;
    std::string why;
    CHECK(a.share_ipc(p, &offset, &why).empty());
    CHECK(why.find("cannot export memory as POSIX file descriptors") != std::string::npos);
    REQUIRE(a.free(p));
  }
  check_violations();
}

TEST_CASE("cuda: where the driver refuses exportable memory, memory is made plain and sharing "
          "says why", "[cuda][ipc]") {
  FakeDriver fake(1);
  fakecuda_fail_next("cuMemCreate", CUDA_ERROR_NOT_SUPPORTED);  // as some containers answer
  {
    Allocator a(options_of("policy:timeshare"), cuda(0));
    void* p = a.malloc(4 * kMiB, 0);
    REQUIRE(p);  // the allocation does not fail for it
    std::size_t offset = 0;
    std::string why;
    CHECK(a.share_ipc(p, &offset, &why).empty());
    CHECK(why.find("cannot export memory as POSIX file descriptors (the driver refused it: "
                   "cuMemCreate of exportable memory") != std::string::npos);
    REQUIRE(a.free(p));
  }
  CHECK(fakecuda_calls("cuMemCreate") >= 3);  // the refused one, then plain ones
  check_violations();
}

#endif  // TIMESHARE_WITH_CUDA
