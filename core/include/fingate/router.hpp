// The fin-aware router (DESIGN §3): learns bindings from register messages, routes Fin
// messages between orchestrator and fins endpoints, applies static routes, suppresses
// echoes and keeps what it cannot route in a bounded dead-letter store.
//
// Threading: route() is called from one lane thread per source endpoint (so registry
// changes made by a message take effect before the next message from that endpoint);
// lanes of different endpoints run concurrently. Every other method is thread-safe.
#pragma once

#include <fingate/config.hpp>
#include <fingate/message.hpp>
#include <fingate/plugin.h>
#include <fingate/registry.hpp>

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace fingate {
namespace fin {
struct ParseResult;
}  // namespace fin

// What the router needs from an endpoint. Implemented by the runtime (a plugin instance
// with its outbound queue) and by tests.
class RouterOutput {
 public:
  virtual ~RouterOutput() = default;
  // Queues m for publishing. Waits (bounded) for room; false when the queue stayed full.
  virtual bool send(OutMessage&& m) = 0;
  // Subscribes filter; true once confirmed by the transport (bounded wait), false on error
  // or timeout (the subscription may still complete later).
  virtual bool subscribe(const std::string& filter, uint64_t sub_id) = 0;
  virtual void unsubscribe(uint64_t sub_id) = 0;
};

struct RouterEndpoint {
  std::string name;
  Role role = Role::Bridge;
  RouterOutput* out = nullptr;
  bool sessions = false;              // a session transport (server side): no echoes, no broker subscriptions
  std::atomic<bool> no_local{false};  // the transport never hands back what the gateway published
  bool compat_python_fin = false;     // repair commands for the Python fin library (fins endpoints)
};

struct RouteRule {
  std::string from_endpoint;
  std::string from_filter;
  std::string to_endpoint;
  std::string to_template;  // "{topic}" replaced by the inbound topic
};

struct DeadLetter {
  int64_t time_ms = 0;
  std::string endpoint;
  std::string topic;
  uint64_t session = 0;
  std::string reason;  // short, stable: a metric label
  std::string detail;  // one human line
  std::string payload; // first 4 KiB
  size_t payload_bytes = 0;
};

// Bounded store of the most recent dead letters, with totals per reason.
class DeadLetterStore {
 public:
  explicit DeadLetterStore(size_t capacity) : capacity_(capacity) {}
  void add(DeadLetter d);
  std::vector<DeadLetter> snapshot() const;
  std::map<std::string, uint64_t> countsByReason() const;
  uint64_t total() const;

 private:
  mutable std::mutex mu_;
  size_t capacity_;
  std::deque<DeadLetter> items_;
  std::map<std::string, uint64_t> counts_;
  uint64_t total_ = 0;
};

// Records what the gateway published on endpoints that echo (no no-local), so the echo is
// recognised: key (endpoint, topic, hash of payload bytes); each publish absorbs one echo.
class EchoWindow {
 public:
  explicit EchoWindow(int64_t window_ms = 10000) : window_ms_(window_ms) {}
  void record(const std::string& endpoint, const std::string& topic, const std::string& payload);
  // True (and the record used up) when this inbound message is an echo of our own publish.
  bool consume(const std::string& endpoint, const std::string& topic, const std::string& payload);
  size_t size() const;

 private:
  static uint64_t key(const std::string& endpoint, const std::string& topic, const std::string& payload);
  void expireLocked(int64_t now_ms);
  int64_t window_ms_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, uint32_t> counts_;
  std::deque<std::pair<int64_t, uint64_t>> order_;  // (time, key) in publish order
};

struct RouterCounters {
  std::atomic<uint64_t> routed{0};
  std::atomic<uint64_t> echoes_suppressed{0};
  std::atomic<uint64_t> registers{0};
  std::atomic<uint64_t> nacks_sent{0};
  std::atomic<uint64_t> subscribe_timeouts{0};
  std::atomic<uint64_t> compat_auth_removed{0};         // empty authentication objects removed
  std::atomic<uint64_t> compat_variables_completed{0};  // variables given the fields Go omits
  std::atomic<uint64_t> compat_nacks_to_acks{0};        // "already registered" nacks turned into acks
  std::atomic<uint64_t> registers_replayed{0};
  std::atomic<uint64_t> replay_replies_swallowed{0};
};

class Router {
 public:
  Router(Registry& registry, size_t dead_letter_capacity);
  ~Router();

  // Replaces the endpoint set / the static routes (copy-on-write; safe while routing).
  void setEndpoints(std::vector<std::shared_ptr<RouterEndpoint>> endpoints);
  void setRoutes(std::vector<RouteRule> routes);

  // Makes the subscriptions the gateway always needs: `soarca` on orchestrator and fins
  // endpoints, every static route's filter, and the topics of restored bindings.
  void subscribeBase();

  // Routes one inbound message from endpoint `src`. Never throws.
  void route(const std::string& src, Envelope&& m);

  // Re-sends the stored register of every bound fin to orchestrator endpoint `orchestrator`
  // (all orchestrator endpoints when empty) and swallows the replies to those replays.
  // Called from that endpoint's lane when it (re)connects, and on the replay interval.
  void replayRegisters(const std::string& orchestrator);

  // A client session of `endpoint` closed: its bindings go.
  void sessionClosed(const std::string& endpoint, uint64_t session);
  // An endpoint goes away (reload): its bindings and subscriptions go.
  void endpointRemoved(const std::string& endpoint);
  // A session on `endpoint` asks to subscribe `filter`.
  fg_status authorizeSubscribe(const std::string& endpoint, uint64_t session, const std::string& filter,
                               std::string& reason);

  Registry& registry() { return registry_; }
  DeadLetterStore& deadLetters() { return dead_letters_; }
  const RouterCounters& counters() const { return counters_; }
  size_t subscriptionCount() const;

 private:
  using EndpointList = std::vector<std::shared_ptr<RouterEndpoint>>;
  std::shared_ptr<const EndpointList> endpoints() const;
  std::shared_ptr<RouterEndpoint> find(const EndpointList& eps, const std::string& name) const;

  enum class Outcome { NotFinTraffic, Done };
  // Fin traffic (the `soarca` topic or a bound id), parsed; nullptr with `outcome` set when it
  // is not fin traffic or was rejected here.
  const fin::ParseResult* finTraffic(RouterEndpoint& src, Envelope& m, std::optional<FinBinding>& owner,
                                     Outcome& outcome);
  Outcome fromFins(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::ParseResult& parsed,
                   const std::optional<FinBinding>& owner);
  Outcome fromOrchestrator(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::ParseResult& parsed,
                           const std::optional<FinBinding>& owner);
  bool routeStatic(const EndpointList& eps, RouterEndpoint& src, const Envelope& m);
  void handleRegister(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::Routing& r);
  void applyUnregister(const fin::Routing& r);

  // Sends to dst (recording for echo suppression); dead-letters on a full queue.
  void send(RouterEndpoint& dst, OutMessage&& m, const std::string& src_name);
  void sendTo(const EndpointList& eps, const std::string& dst, OutMessage&& m, const std::string& src_name);
  // Dead-letters m; nacks it back to its sender when its message_id was readable.
  void reject(RouterEndpoint& src, const Envelope& m, const std::string& reason, const std::string& detail,
              const fin::Routing* r, const std::string& nack_topic = "");
  void deadLetter(const std::string& src, const Envelope& m, const std::string& reason, const std::string& detail);

  // Reference-counted subscriptions per (endpoint, filter).
  bool acquire(RouterEndpoint& ep, const std::string& filter);
  void release(const std::string& endpoint, const std::string& filter);
  // Subscribes/unsubscribes a binding's topics where the gateway must hear them.
  bool subscribeBinding(const EndpointList& eps, const FinBinding& b);
  void unsubscribeTopics(const EndpointList& eps, const std::string& fins_endpoint, const std::vector<std::string>& topics);
  void unsubscribeBindings(const std::vector<FinBinding>& removed);

  Registry& registry_;
  DeadLetterStore dead_letters_;
  EchoWindow echo_;
  RouterCounters counters_;

  mutable std::mutex config_mu_;
  std::shared_ptr<const EndpointList> endpoints_;
  std::shared_ptr<const std::vector<RouteRule>> routes_;

  struct Sub {
    uint64_t id;
    uint32_t refs;
  };
  mutable std::mutex subs_mu_;
  std::map<std::pair<std::string, std::string>, Sub> subs_;  // (endpoint, filter) -> sub
  std::atomic<uint64_t> next_sub_id_{1};

  // Register message ids the gateway replayed: SOARCA's answers to them are not forwarded.
  std::mutex replay_mu_;
  std::map<std::string, int64_t> replayed_;  // message_id -> expiry (steady ms)
  bool takeReplayed(const std::string& message_id);
};

// "{topic}" in tmpl replaced by topic.
std::string expandTopicTemplate(const std::string& tmpl, const std::string& topic);

}  // namespace fingate
