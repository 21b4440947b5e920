#include "timeshare/spill/make_room.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "timeshare/common/log.h"

namespace timeshare::spill {

namespace {

struct Registry {
  std::mutex mu;
  std::map<std::uint64_t, std::shared_ptr<MakeRoomFn>> callbacks;
  std::uint64_t next_token = 1;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: callable during static teardown
  return *r;
}

thread_local bool t_in_make_room = false;

}  // namespace

std::uint64_t register_make_room(MakeRoomFn fn) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  const std::uint64_t token = r.next_token++;
  r.callbacks.emplace(token, std::make_shared<MakeRoomFn>(std::move(fn)));
  return token;
}

bool unregister_make_room(std::uint64_t token) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  return r.callbacks.erase(token) > 0;
}

std::size_t make_room_callbacks() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  return r.callbacks.size();
}

std::size_t make_room(int device, std::size_t bytes) {
  if (t_in_make_room) return 0;
  std::vector<std::shared_ptr<MakeRoomFn>> fns;
  {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    for (const auto& [token, fn] : r.callbacks) fns.push_back(fn);
  }
  t_in_make_room = true;
  std::size_t freed = 0;
  for (const auto& fn : fns) {
    try {
      freed += (*fn)(device, bytes - std::min(freed, bytes));
    } catch (const std::exception& e) {
      log().warn("make_room callback failed: {}", e.what());
    } catch (...) {
      log().warn("make_room callback failed with an unknown exception");
    }
    if (freed >= bytes) break;
  }
  t_in_make_room = false;
  return freed;
}

}  // namespace timeshare::spill
