// One configured endpoint at run time: a plugin instance, its inbound lane (plugin threads
// -> bounded queue -> router, in order) and its outbound side:
//  - messages for the whole endpoint (session 0: broker transports, broadcasts) go to the
//    plugin at once when nothing waits, else into one bounded FIFO that a dispatcher thread
//    retries on FG_RETRY / FG_ERR_UNAVAILABLE;
//  - messages for one client session (session transports) that the plugin cannot take now
//    (FG_RETRY for that session) wait in that session's own bounded queue, resumed on
//    FG_EVENT_SESSION_WRITABLE; a session whose queue stays full past the grace period is
//    closed as a slow consumer and what it held is dead-lettered (commands nacked).
// Nothing here waits for room: a full queue is a dead letter (and a nack for a command),
// counted by reason; only the inbound side answers FG_RETRY (back-pressure to the source).
//
// Outcomes (ABI 1.1): every copy handed to this endpoint settles exactly once: delivered
// (on_delivery OK, or publish OK on plugins without FG_CAP_DELIVERY), or dead-lettered.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <fingate/config.hpp>
#include <fingate/plugin_loader.hpp>
#include <fingate/router.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <variant>

#include "bounded_queue.hpp"

namespace fingate {

struct EndpointOptions {
  size_t queue_capacity = 65536;
  Limits limits;
};

// Latency buckets (seconds) for fingate_route_latency_seconds.
inline constexpr std::array<double, 12> kLatencyBuckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                        0.01,   0.025,   0.05,   0.1,   0.25,   1.0};

struct EndpointStats {
  std::atomic<uint64_t> in{0}, out{0}, publish_errors{0}, delivered{0}, delivery_failed{0}, no_receiver{0};
  std::atomic<uint64_t> backpressure{0}, reconnects{0}, sessions_opened{0}, sessions_closed{0};
  std::atomic<uint64_t> slow_consumers{0}, session_retries{0};
  // Outcomes of tracked inbound messages, by fg_outcome (0..3).
  std::array<std::atomic<uint64_t>, 4> outcomes{};
  std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> latency{};
  std::atomic<uint64_t> latency_count{0};
  std::atomic<double> latency_sum{0};
};

// Copies handed to a FG_CAP_DELIVERY plugin and not reported yet, by delivery id. Ids are given
// out in increasing order (under the endpoint's publish lock), so a deque indexed by
// id - base holds them without an allocation per message; a reported slot is emptied and the
// front trimmed. References to stored messages stay valid until they are taken.
class InflightRing {
 public:
  OutMessage* put(uint64_t id, OutMessage&& m) {
    if (slots_.empty()) base_ = id;
    while (base_ + slots_.size() < id) slots_.emplace_back();  // ids used without tracking
    slots_.emplace_back();
    Slot& s = slots_.back();
    s.live = true;
    s.m = std::move(m);
    ++live_;
    return &s.m;
  }
  bool take(uint64_t id, OutMessage& out) {
    if (id < base_ || id - base_ >= slots_.size()) return false;
    Slot& s = slots_[id - base_];
    if (!s.live) return false;
    out = std::move(s.m);
    s.live = false;
    --live_;
    while (!slots_.empty() && !slots_.front().live) {
      slots_.pop_front();
      ++base_;
    }
    return true;
  }
  bool empty() const { return live_ == 0; }
  template <class F>
  void drain(F&& f) {
    for (auto& s : slots_)
      if (s.live) f(std::move(s.m));
    slots_.clear();
    live_ = 0;
  }

 private:
  struct Slot {
    bool live = false;
    OutMessage m;
  };
  std::deque<Slot> slots_;
  uint64_t base_ = 0;
  size_t live_ = 0;
};

class Endpoint final : public PluginHost,
                       public RouterOutput,
                       public OutcomeSink,
                       public std::enable_shared_from_this<Endpoint> {
 public:
  Endpoint(const EndpointConfig& cfg, std::shared_ptr<PluginLibrary> lib, Router& router, const EndpointOptions& opts);
  ~Endpoint() override;

  const std::string& name() const { return cfg_.name; }
  const EndpointConfig& config() const { return cfg_; }
  // The router's view. It owns this endpoint (RouterEndpoint::owner): whoever can still reach
  // it through a router snapshot keeps it alive (reload safety).
  std::shared_ptr<RouterEndpoint> routerEndpoint();
  const PluginLibrary& library() const { return instance_->library(); }

  void start();  // throws PluginError when the plugin refuses
  // Lanes hand messages to plugins directly when nothing is queued; other threads always queue.
  static void markCurrentThreadAsLane();
  // Orchestrator endpoints: re-send the stored registers (through the lane, in order).
  void requestReplay();
  // Waits (bounded) until the inbound lane and every outbound queue are empty.
  bool drain(std::chrono::milliseconds timeout);
  void stop(uint32_t timeout_ms);

  fg_state state() const { return state_.load(); }
  std::string stateDetail() const;
  bool up() const {
    auto s = state_.load();
    return s == FG_STATE_UP || s == FG_STATE_RECONNECTED;
  }
  size_t inboundDepth() const { return inbound_.size(); }
  size_t outboundDepth() const;
  size_t sessionQueues() const;
  const EndpointStats& stats() const { return stats_; }

  // PluginHost
  void log(fg_log_level level, std::string_view msg) override;
  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) override;
  void onDelivery(uint64_t delivery_id, fg_delivery status) override;
  void onState(fg_state state, std::string_view detail) override;
  void onSession(uint64_t session, fg_session_event event) override;
  void onEvent(const fg_event& ev) override;
  fg_status authorizeSubscribe(uint64_t session, std::string_view filter, std::string& reason) override;

  // RouterOutput
  void send(OutMessage&& m) override;
  fg_status subscribe(const std::string& filter, uint64_t sub_id) override;
  void unsubscribe(uint64_t sub_id) override;
  void post(std::function<void()> fn) override;
  bool noLocal() const override { return no_local_.load(std::memory_order_relaxed); }

  // OutcomeSink: the final outcome of a message this endpoint's plugin handed in.
  void outcome(uint64_t token, fg_outcome outcome) override;

 private:
  struct SessionClosed {
    uint64_t session;
  };
  struct Replay {
    std::set<std::string> register_ids;  // bound when the replay was asked for
  };
  struct Task {
    std::function<void()> fn;
  };
  using InItem = std::variant<Envelope, SessionClosed, Replay, Task>;
  struct SessionQueue {
    std::deque<OutMessage> q;
    size_t bytes = 0;
    int64_t full_since_ms = 0;  // steady ms when it first hit its limit; 0 = not full
  };
  void laneLoop();
  void dispatchLoop();
  // Hands one message to the plugin (caller holds publish_mu_). On FG_OK the message has moved
  // into the in-flight map (FG_CAP_DELIVERY) or settled as delivered; otherwise m is untouched.
  fg_status publishOnce(OutMessage& m);
  bool retryable(fg_status st) const;
  // m will not be delivered: counted, dead-lettered (whole), nacked when it is a command.
  void failed(OutMessage&& m, const std::string& reason, const std::string& detail);
  void sendSession(OutMessage&& m);
  // Offers every waiting session its queue and closes sessions that stayed full past the grace
  // period. Dispatcher thread.
  void serviceSessions();
  void dropSession(uint64_t session, const std::string& reason);
  void recordLatency(int64_t ingress_ns);
  bool tracksDelivery() const { return (caps_ & FG_CAP_DELIVERY) != 0; }

  EndpointConfig cfg_;
  Router& router_;
  EndpointOptions opts_;
  uint32_t caps_ = 0;
  std::shared_ptr<RouterEndpoint> rep_;
  std::unique_ptr<PluginInstance> instance_;
  bool plugin_acks_ = false;  // the plugin implements ack (ABI 1.1)
  BoundedQueue<InItem> inbound_;
  std::thread lane_, dispatcher_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<fg_state> state_{FG_STATE_STOPPED};
  std::atomic<bool> no_local_{false};    // never hands back our own publishes: no echo window
  std::atomic<bool> conn_facts_{false};  // the plugin reports FG_EVENT_CONNECTION (ABI 1.1)
  mutable std::mutex detail_mu_;
  std::string detail_;
  std::mutex sub_mu_;  // plugin subscribe/unsubscribe are never called concurrently

  // Outbound. publish_mu_ serialises every hand-over to the plugin and guards the queues.
  mutable std::mutex publish_mu_;
  std::condition_variable dispatch_cv_;
  std::deque<OutMessage> outbound_;  // session 0 (and 1.0-style) messages waiting for the plugin
  bool dispatching_ = false;         // the dispatcher holds a popped message
  std::unordered_map<uint64_t, SessionQueue> sessions_;
  bool sessions_writable_ = false;  // a session said it can take more: service now

  // Copies handed to the plugin and not yet reported by on_delivery (FG_CAP_DELIVERY).
  std::mutex inflight_mu_;
  InflightRing inflight_;
  std::atomic<uint64_t> next_delivery_{1};

  EndpointStats stats_;
};

}  // namespace fingate
