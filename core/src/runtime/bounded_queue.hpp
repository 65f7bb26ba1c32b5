// A bounded blocking FIFO (mutex + condition variables). Full = back-pressure, never a drop.
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

  // Pushes when there is room within `wait`; false when still full (or closed).
  bool push(T&& v, std::chrono::milliseconds wait = std::chrono::milliseconds(0)) {
    std::unique_lock lk(mu_);
    if (items_.size() >= capacity_) {
      if (wait.count() <= 0 || !not_full_.wait_for(lk, wait, [&] { return closed_ || items_.size() < capacity_; }))
        return false;
    }
    if (closed_) return false;
    items_.push_back(std::move(v));
    lk.unlock();
    not_empty_.notify_one();
    return true;
  }
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
  bool full() const {
    std::lock_guard lk(mu_);
    return items_.size() >= capacity_;
  }
  bool closed() const {
    std::lock_guard lk(mu_);
    return closed_;
  }
  // Waits up to `wait` for an item; nullopt on timeout or when closed and empty.
  std::optional<T> popFor(std::chrono::milliseconds wait) {
    std::unique_lock lk(mu_);
    if (!not_empty_.wait_for(lk, wait, [&] { return closed_ || !items_.empty(); })) return std::nullopt;
    return takeFront(lk);
  }
  // An item if one is there (after close too: to settle what was left).
  std::optional<T> tryPop() {
    std::lock_guard lk(mu_);
    if (items_.empty()) return std::nullopt;
    T v = std::move(items_.front());
    items_.pop_front();
    return v;
  }
  // Blocks until an item arrives or the queue is closed and empty.
  std::optional<T> pop() {
    std::unique_lock lk(mu_);
    not_empty_.wait(lk, [&] { return closed_ || !items_.empty(); });
    return takeFront(lk);
  }
  // The consumer finished the item it popped (for drain()).
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
    not_full_.notify_all();
    idle_.notify_all();
  }
  // Nothing queued and the consumer holds nothing it popped.
  bool idle() const {
    std::lock_guard lk(mu_);
    return items_.empty() && !busy_;
  }
  size_t size() const {
    std::lock_guard lk(mu_);
    return items_.size();
  }
  size_t capacity() const { return capacity_; }

 private:
  // The consumer takes the first item (lk held, released here); nullopt when empty (closed).
  std::optional<T> takeFront(std::unique_lock<std::mutex>& lk) {
    if (items_.empty()) return std::nullopt;
    T v = std::move(items_.front());
    items_.pop_front();
    busy_ = true;
    lk.unlock();
    not_full_.notify_one();
    return v;
  }
  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable not_empty_, not_full_, idle_;
  std::deque<T> items_;
  bool closed_ = false;
  bool busy_ = false;
};

}  // namespace fingate
