// IoQueue — one background thread running jobs in submission order (the SSD tier's writer and
// read-ahead). Jobs must not throw. The destructor runs the jobs already queued, then joins.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace timeshare::spill {

class IoQueue {
 public:
  IoQueue();
  ~IoQueue();
  IoQueue(const IoQueue&) = delete;
  IoQueue& operator=(const IoQueue&) = delete;

  void submit(std::function<void()> job);
  // Blocks until every job submitted before the call has run.
  void drain();
  std::size_t pending() const;

 private:
  void run();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<void()>> jobs_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace timeshare::spill
