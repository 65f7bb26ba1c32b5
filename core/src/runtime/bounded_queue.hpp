// The inbound lane's queue: a bounded FIFO (mutex + condition variables). Producers never wait:
// a full queue refuses data (the plugin answers FG_RETRY: back-pressure, never a drop), while
// control items (session closed, replay, lane tasks) are always taken, in order with the data.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

namespace fingate {

template <class T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity ? capacity : 1) {}

  // Pushes when there is room; on false v is left untouched (the caller still owns it).
  bool pushOrKeep(T& v) {
    std::unique_lock lk(mu_);
    if (closed_ || items_.size() >= capacity_) return false;
    items_.push_back(std::move(v));
    lk.unlock();
    not_empty_.notify_one();
    return true;
  }
  // A control item: always taken (ignores the capacity), in FIFO order with the data, so
  // that a plugin thread reporting an event never waits. Callers bound how many exist.
  void pushControl(T&& v) {
    {
      std::lock_guard lk(mu_);
      if (closed_) return;
      items_.push_back(std::move(v));
    }
    not_empty_.notify_one();
  }
  bool closed() const {
    std::lock_guard lk(mu_);
    return closed_;
  }
  // Waits up to `wait` for an item; nullopt on timeout or when closed and empty. The consumer
  // calls done() when it has finished the item (for drain()).
  std::optional<T> popFor(std::chrono::milliseconds wait) {
    std::unique_lock lk(mu_);
    if (!not_empty_.wait_for(lk, wait, [&] { return closed_ || !items_.empty(); })) return std::nullopt;
    if (items_.empty()) return std::nullopt;
    T v = std::move(items_.front());
    items_.pop_front();
    busy_ = true;
    return v;
  }
  // An item if one is there (after close too: to settle what was left).
  std::optional<T> tryPop() {
    std::lock_guard lk(mu_);
    if (items_.empty()) return std::nullopt;
    T v = std::move(items_.front());
    items_.pop_front();
    return v;
  }
  void done() {
    std::lock_guard lk(mu_);
    busy_ = false;
    idle_.notify_all();
  }
  // Waits until empty and the consumer is idle; false on timeout.
  bool drain(std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    return idle_.wait_for(lk, timeout, [&] { return items_.empty() && !busy_; });
  }
  void close() {
    {
      std::lock_guard lk(mu_);
      closed_ = true;
    }
    not_empty_.notify_all();
    idle_.notify_all();
  }
  size_t size() const {
    std::lock_guard lk(mu_);
    return items_.size();
  }

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable not_empty_, idle_;
  std::deque<T> items_;
  bool closed_ = false;
  bool busy_ = false;
};

}  // namespace fingate
