// mqtt_bare_forward: the minimal MQTT -> MQTT forwarder fingate's MQTT path is compared with in
// bench/mqtt_forward.cpp ("bare" path). Same client library as fingate's MQTT plugin
// (paho-mqtt-cpp on Debian's paho-mqtt-c), nothing else: subscribe to a filter on broker A,
// republish each message unchanged (topic, payload, QoS; retain off) to broker B.
//
// A fair minimal implementation, not a strawman:
//   * MQTT 3.1.1 both ways, clean session, TCP_NODELAY on its sockets (as fingate's plugin);
//   * its own in-flight window on B (--window publishes handed to paho and not yet completed:
//     PUBACK for QoS 1, written for QoS 0), kept below paho's max_inflight (window + 10), and
//     paho's max_buffered_messages raised above it, so paho never parks or refuses a publish.
//     Default 20: paho-c finds each PUBACK's message by a linear search of the in-flight list,
//     so a large window costs CPU per message (fingate's plugin negotiates 19 with mosquitto);
//   * publishes from paho's message callback directly (no thread hand-off) while the window is
//     open and nothing is queued; otherwise the message is queued in order and one worker thread
//     publishes it when a completion reopens the window. Order per topic is kept.
//   * no reconnect handling, no persistence: a failed publish is counted and reported at exit.
//
// Usage: mqtt_bare_forward --from tcp://127.0.0.1:PA --to tcp://127.0.0.1:PB [--filter 'bench/#']
//                          [--qos 1] [--window 20] [--max-seconds 600]
// Prints "bare forwarder: up" once both connections and the subscription are in place; SIGTERM
// or SIGINT: prints its counters and exits 0.
#include <mqtt/async_client.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "../plugins/mqtt/tcp_nodelay.hpp"

namespace {

using namespace std::chrono_literals;
volatile std::sig_atomic_t g_stop = 0;

class Forwarder : public mqtt::iaction_listener {
 public:
  Forwarder(const std::string& from, const std::string& to, const std::string& filter, int qos, int window)
      : filter_(filter),
        qos_(qos),
        window_(window),
        out_(to, "bare-out-" + std::to_string(::getpid()), mqtt::create_options(MQTTVERSION_3_1_1, window + 100000)),
        in_(from, "bare-in-" + std::to_string(::getpid()), mqtt::create_options(MQTTVERSION_3_1_1)) {}

  bool start() {
    auto out_opts = mqtt::connect_options_builder()
                        .mqtt_version(MQTTVERSION_3_1_1)
                        .clean_session(true)
                        .keep_alive_interval(30s)
                        .max_inflight(window_ + 10)
                        .finalize();
    if (!out_.connect(out_opts)->wait_for(10s) || !out_.is_connected()) return false;
    worker_ = std::thread([this] { work(); });
    in_.set_message_callback([this](mqtt::const_message_ptr m) { onMessage(std::move(m)); });
    auto in_opts = mqtt::connect_options_builder()
                       .mqtt_version(MQTTVERSION_3_1_1)
                       .clean_session(true)
                       .keep_alive_interval(30s)
                       .finalize();
    if (!in_.connect(in_opts)->wait_for(10s) || !in_.is_connected()) return false;
    fingate::setTcpNoDelayToPort(0);  // paho never sets it; see plugins/mqtt/tcp_nodelay.hpp
    return in_.subscribe(filter_, qos_)->wait_for(10s);
  }

  void stop() {
    try {
      in_.disable_callbacks();
      if (in_.is_connected()) in_.disconnect()->wait_for(2s);
    } catch (...) {
    }
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    // Let the last publishes complete (bounded).
    for (int i = 0; i < 200 && inflight_.load() > 0; ++i) std::this_thread::sleep_for(10ms);
    try {
      if (out_.is_connected()) out_.disconnect()->wait_for(2s);
    } catch (...) {
    }
  }

  void report() const {
    std::printf("bare forwarder: received %llu, published %llu, completed %llu, failed %llu, queued at most %zu\n",
                (unsigned long long)received_.load(), (unsigned long long)published_.load(),
                (unsigned long long)completed_.load(), (unsigned long long)failed_.load(), max_queued_);
    std::fflush(stdout);
  }

 private:
  // paho's receive thread.
  void onMessage(mqtt::const_message_ptr m) {
    received_.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lk(mu_);
      if (!q_.empty() || worker_busy_ || inflight_.load() >= window_) {
        q_.push_back(std::move(m));
        max_queued_ = std::max(max_queued_, q_.size());
        if (worker_waiting_) cv_.notify_one();
        return;
      }
      inflight_.fetch_add(1);
    }
    if (!send(m)) {  // paho refused: retry from the worker, in order
      std::lock_guard lk(mu_);
      inflight_.fetch_sub(1);
      q_.push_front(std::move(m));
      cv_.notify_one();
    }
  }

  bool send(const mqtt::const_message_ptr& m) {
    try {
      auto msg = mqtt::message::create(m->get_topic(), m->get_payload_ref(), qos_, false);
      out_.publish(msg, nullptr, *this);
      published_.fetch_add(1, std::memory_order_relaxed);
      return true;
    } catch (const mqtt::exception&) {
      return false;
    }
  }

  // Completion of a publish to B (paho's receive thread for QoS 1).
  void on_success(const mqtt::token&) override { done(); }
  void on_failure(const mqtt::token&) override {
    failed_.fetch_add(1, std::memory_order_relaxed);
    done();
  }
  void done() {
    completed_.fetch_add(1, std::memory_order_relaxed);
    inflight_.fetch_sub(1);
    if (worker_waiting_.load()) {
      std::lock_guard lk(mu_);
      cv_.notify_one();
    }
  }

  // Publishes what was queued, in order, whenever the window has room.
  void work() {
    std::unique_lock lk(mu_);
    while (!stop_) {
      worker_waiting_ = true;
      cv_.wait_for(lk, 100ms, [&] { return stop_ || (!q_.empty() && inflight_.load() < window_); });
      worker_waiting_ = false;
      while (!stop_ && !q_.empty() && inflight_.load() < window_) {
        auto m = std::move(q_.front());
        q_.pop_front();
        inflight_.fetch_add(1);
        worker_busy_ = true;
        lk.unlock();
        bool ok = send(m);
        lk.lock();
        worker_busy_ = false;
        if (!ok) {
          inflight_.fetch_sub(1);
          q_.push_front(std::move(m));
          lk.unlock();
          std::this_thread::sleep_for(200us);
          lk.lock();
        }
      }
    }
  }

  std::string filter_;
  int qos_;
  int window_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<mqtt::const_message_ptr> q_;
  size_t max_queued_ = 0;
  bool stop_ = false;
  bool worker_busy_ = false;
  std::atomic<bool> worker_waiting_{false};
  std::atomic<int> inflight_{0};
  std::atomic<uint64_t> received_{0}, published_{0}, completed_{0}, failed_{0};
  std::thread worker_;
  mqtt::async_client out_;  // destroyed after in_ (declared first)
  mqtt::async_client in_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string from, to, filter = "bench/#";
  int qos = 1, window = 20;
  double max_seconds = 600;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--from") from = argv[i + 1];
    else if (k == "--to") to = argv[i + 1];
    else if (k == "--filter") filter = argv[i + 1];
    else if (k == "--qos") qos = std::atoi(argv[i + 1]);
    else if (k == "--window") window = std::atoi(argv[i + 1]);
    else if (k == "--max-seconds") max_seconds = std::atof(argv[i + 1]);
    else from.clear();
  }
  if (from.empty() || to.empty() || qos < 0 || qos > 1 || window < 1 || window > 60000) {
    std::fprintf(stderr, "usage: mqtt_bare_forward --from URL --to URL [--filter F] [--qos 0|1] [--window W] [--max-seconds S]\n");
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = 1; };
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  Forwarder f(from, to, filter, qos, window);
  bool up = false;
  try {
    up = f.start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bare forwarder: %s\n", e.what());
  }
  if (!up) {
    std::fprintf(stderr, "bare forwarder: could not connect/subscribe (%s -> %s)\n", from.c_str(), to.c_str());
    f.stop();
    return 1;
  }
  std::printf("bare forwarder: up (%s %s -> %s, qos %d, window %d)\n", from.c_str(), filter.c_str(), to.c_str(), qos, window);
  std::fflush(stdout);
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(max_seconds);
  while (!g_stop && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(50ms);
  f.stop();
  f.report();
  return 0;
}
