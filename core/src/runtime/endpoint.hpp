// One configured endpoint at run time: a plugin instance, its inbound lane (plugin threads
// -> bounded queue -> router, in order) and its outbound dispatcher (router -> bounded queue
// -> plugin.publish, retried on FG_RETRY).
#pragma once

#include <fingate/config.hpp>
#include <fingate/plugin_loader.hpp>
#include <fingate/router.hpp>

#include <array>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <variant>

#include "bounded_queue.hpp"

namespace fingate {

struct EndpointOptions {
  size_t queue_capacity = 65536;
  uint32_t subscribe_timeout_ms = 5000;
  uint32_t send_wait_ms = 1000;  // how long the router waits for room in the outbound queue
};

// Latency buckets (seconds) for fingate_route_latency_seconds.
inline constexpr std::array<double, 12> kLatencyBuckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                        0.01,   0.025,   0.05,   0.1,   0.25,   1.0};

struct EndpointStats {
  std::atomic<uint64_t> in{0}, out{0}, publish_errors{0}, delivered{0}, delivery_failed{0};
  std::atomic<uint64_t> backpressure{0}, reconnects{0}, sessions_opened{0}, sessions_closed{0};
  std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> latency{};
  std::atomic<uint64_t> latency_count{0};
  std::atomic<double> latency_sum{0};
};

class Endpoint final : public PluginHost, public RouterOutput {
 public:
  Endpoint(const EndpointConfig& cfg, std::shared_ptr<PluginLibrary> lib, Router& router,
           const EndpointOptions& opts);
  ~Endpoint() override;

  const std::string& name() const { return cfg_.name; }
  const EndpointConfig& config() const { return cfg_; }
  std::shared_ptr<RouterEndpoint> routerEndpoint() const { return rep_; }
  const PluginLibrary& library() const { return instance_->library(); }

  void start();  // throws PluginError when the plugin refuses
  // Orchestrator endpoints: re-send the stored registers (through the lane, in order).
  void requestReplay();
  // Waits (bounded) until both queues are empty.
  bool drain(std::chrono::milliseconds timeout);
  void stop(uint32_t timeout_ms);

  fg_state state() const { return state_.load(); }
  std::string stateDetail() const;
  bool up() const { auto s = state_.load(); return s == FG_STATE_UP || s == FG_STATE_RECONNECTED; }
  size_t inboundDepth() const { return inbound_.size(); }
  size_t outboundDepth() const { return outbound_.size(); }
  const EndpointStats& stats() const { return stats_; }

  // PluginHost
  void log(fg_log_level level, std::string_view msg) override;
  fg_status onMessage(uint64_t sub_id, const fg_message& msg) override;
  void onDelivery(uint64_t delivery_id, fg_delivery status) override;
  void onState(fg_state state, std::string_view detail) override;
  void onSession(uint64_t session, fg_session_event event) override;
  fg_status authorizeSubscribe(uint64_t session, std::string_view filter, std::string& reason) override;

  // RouterOutput
  bool send(OutMessage&& m) override;
  bool subscribe(const std::string& filter, uint64_t sub_id) override;
  void unsubscribe(uint64_t sub_id) override;

 private:
  struct SessionClosed {
    uint64_t session;
  };
  struct Replay {};
  using InItem = std::variant<Envelope, SessionClosed, Replay>;
  void laneLoop();
  void dispatchLoop();
  // Hands one message to the plugin (caller holds publish_mu_); counts it when taken.
  fg_status publishOnce(const OutMessage& m);
  // Worth offering again later (full, or not connected yet) rather than dead-lettering.
  bool retryable(fg_status st) const;
  // The plugin refused m for good: counted, dead-lettered, logged.
  void publishFailed(const OutMessage& m, fg_status st);
  void recordLatency(int64_t ingress_ns);

  EndpointConfig cfg_;
  Router& router_;
  EndpointOptions opts_;
  std::shared_ptr<RouterEndpoint> rep_;
  std::unique_ptr<PluginInstance> instance_;
  BoundedQueue<InItem> inbound_;
  BoundedQueue<OutMessage> outbound_;
  std::thread lane_, dispatcher_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> overflow_{false};  // outbound queue stayed full; refusing until half drained
  std::atomic<bool> started_{false};
  std::atomic<fg_state> state_{FG_STATE_STOPPED};
  mutable std::mutex detail_mu_;
  std::string detail_;
  std::mutex sub_mu_;  // plugin subscribe/unsubscribe are never called concurrently
  std::mutex confirm_mu_;
  std::condition_variable confirm_cv_;
  std::set<uint64_t> confirmed_;
  std::atomic<uint64_t> next_delivery_{1};
  // Held while a message is handed to the plugin's publish: by the dispatcher, or by a router
  // lane that publishes directly because nothing is queued (see send()).
  std::mutex publish_mu_;
  EndpointStats stats_;
};

}  // namespace fingate
