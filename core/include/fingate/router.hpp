// The fin-aware router (DESIGN §3): learns bindings from register messages, routes Fin
// messages between orchestrator and fins endpoints, applies static routes, suppresses
// echoes and keeps what it cannot route in a bounded dead-letter store.
//
// Threading: route() is called from one lane thread per source endpoint (so registry
// changes made by a message take effect before the next message from that endpoint);
// lanes of different endpoints run concurrently. Every other method is thread-safe.
#pragma once

#include <fingate/plugin.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <fingate/config.hpp>
#include <fingate/message.hpp>
#include <fingate/registry.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace fingate {
namespace fin {
struct ParseResult;
}  // namespace fin

// What the router needs from an endpoint. Implemented by the runtime (a plugin instance with
// its outbound queues) and by tests. Nothing here waits.
class RouterOutput {
 public:
  virtual ~RouterOutput() = default;
  // Takes m for publishing. Never waits; m settles exactly once: delivered, or dead-lettered
  // through Router::deliveryFailed (a full queue, a refusal, a failed delivery).
  virtual void send(OutMessage&& m) = 0;
  // Asks the transport to subscribe; returns at once. A transport with FG_CAP_SUBSCRIBE_ACK
  // settles it later through Router::subscriptionSettled; others are settled by FG_OK here.
  virtual fg_status subscribe(const std::string& filter, uint64_t sub_id) = 0;
  virtual void unsubscribe(uint64_t sub_id) = 0;
  // Runs fn on this endpoint's lane, in order with its inbound messages.
  virtual void post(std::function<void()> fn) = 0;
  // The transport never hands back what the gateway published (no echo window needed).
  virtual bool noLocal() const = 0;
};

struct RouterEndpoint {
  std::string name;
  Role role = Role::Bridge;
  RouterOutput* out = nullptr;
  bool sessions = false;           // a session transport (server side): no echoes, no broker subscriptions
  bool subscribe_ack = false;      // subscriptions are confirmed (or refused) later, by event
  bool compat_python_fin = false;  // repair commands for the Python fin library (fins endpoints)
  // Keeps `out` alive while any router snapshot can reach it (a reload never frees an endpoint
  // a lane is still using).
  std::shared_ptr<void> owner;
};

// A migration between two broker-side fins endpoints (config `migration:`, docs/migration.md):
// the two act as one logical fins endpoint. The active side holds the bindings and gets the
// orchestrator's messages for fins; both sides hear `soarca` and every bound fin's topics, and
// fin traffic from either is accepted. With the mirror on, what the gateway accepts from one
// side, and what it sends to the active side for a fin, is also published on the other side.
struct MigrationPair {
  std::string from, to;
  bool to_active = false;
  bool mirror = false;
  bool configured() const { return !from.empty(); }
  const std::string& active() const { return to_active ? to : from; }
  const std::string& passive() const { return to_active ? from : to; }
  bool has(const std::string& e) const { return configured() && (e == from || e == to); }
  const std::string& other(const std::string& e) const { return e == from ? to : from; }
  // a and b are the same place for bindings: equal, or the two sides of the pair.
  bool samePlace(const std::string& a, const std::string& b) const { return a == b || (has(a) && has(b)); }
};

struct RouteRule {
  std::string from_endpoint;
  std::string from_filter;
  std::string to_endpoint;
  std::string to_template;  // "{topic}" replaced by the inbound topic
};

// A message the gateway could not route or deliver, kept whole (for retry) within a byte budget.
struct DeadLetter {
  uint64_t id = 0;
  int64_t time_ms = 0;
  std::string endpoint;  // where it came from
  std::string topic;
  uint64_t session = 0;
  std::string reason;   // short, stable: a metric label
  std::string detail;   // one human line
  std::string payload;  // whole
  std::vector<std::pair<std::string, std::string>> headers;
  size_t payload_bytes = 0;
  // Retry: re-route it as if `endpoint` had just received it (fin traffic), or, when target is
  // set (a static route's copy), publish it to `target` again.
  std::string target;
};

// Bounded store of the most recent dead letters (by count and by total payload bytes), with
// totals per reason.
class DeadLetterStore {
 public:
  DeadLetterStore(size_t capacity, size_t byte_budget) : capacity_(capacity), byte_budget_(byte_budget) {}
  uint64_t add(DeadLetter d);
  std::vector<DeadLetter> snapshot() const;
  std::optional<DeadLetter> take(uint64_t id);  // removes and returns it
  bool drop(uint64_t id);
  size_t dropAll();
  std::map<std::string, uint64_t> countsByReason() const;
  uint64_t total() const;
  size_t bytes() const;
  uint64_t evicted() const;

 private:
  mutable std::mutex mu_;
  size_t capacity_, byte_budget_;
  std::deque<DeadLetter> items_;
  size_t bytes_ = 0;
  uint64_t next_id_ = 1, evicted_ = 0;
  std::map<std::string, uint64_t> counts_;
  uint64_t total_ = 0;
};

// Records what the gateway published on endpoints that echo (no no-local), so the echo is
// recognised: key (endpoint, topic, hash of payload bytes); each publish absorbs one echo.
// O(1) per record/consume; at most max_entries records (the oldest go first, counted).
class EchoWindow {
 public:
  explicit EchoWindow(int64_t window_ms = 10000, size_t max_entries = 65536)
      : window_ms_(window_ms), max_entries_(max_entries) {}
  void record(const std::string& endpoint, const std::string& topic, const std::string& payload);
  // True (and the record used up) when this inbound message is an echo of our own publish.
  bool consume(const std::string& endpoint, const std::string& topic, const std::string& payload);
  size_t size() const;
  uint64_t overflowed() const { return overflowed_.load(); }
  void setMaxEntries(size_t n) {
    std::lock_guard lk(mu_);
    max_entries_ = n;
  }

 private:
  static uint64_t key(const std::string& endpoint, const std::string& topic, const std::string& payload);
  void expireLocked(int64_t now_ms);
  void popOldestLocked();
  int64_t window_ms_;
  size_t max_entries_;
  mutable std::mutex mu_;
  struct Count {
    uint32_t live = 0;      // records not used up yet
    uint32_t consumed = 0;  // used-up records still in order_ (they expire first)
  };
  std::unordered_map<uint64_t, Count> counts_;
  std::deque<std::pair<int64_t, uint64_t>> order_;  // (time, key) in publish order
  std::atomic<uint64_t> overflowed_{0};
};

struct RouterCounters {
  std::atomic<uint64_t> routed{0};
  std::atomic<uint64_t> echoes_suppressed{0};
  std::atomic<uint64_t> registers{0};
  std::atomic<uint64_t> nacks_sent{0};
  std::atomic<uint64_t> subscribe_timeouts{0};
  std::atomic<uint64_t> subscribe_refused{0};
  std::atomic<uint64_t> registers_waiting{0};           // registers that had to wait for subscriptions
  std::atomic<uint64_t> compat_auth_removed{0};         // empty authentication objects removed
  std::atomic<uint64_t> compat_variables_completed{0};  // variables given the fields Go omits
  std::atomic<uint64_t> compat_nacks_to_acks{0};        // "already registered" nacks turned into acks
  std::atomic<uint64_t> registers_replayed{0};
  std::atomic<uint64_t> replay_replies_swallowed{0};
  std::atomic<uint64_t> restored_claimed{0};
  std::atomic<uint64_t> dead_letter_retries{0};
  // Shared registry (cluster.registry_endpoint).
  std::atomic<uint64_t> registry_published{0};  // records and tombstones this instance published
  std::atomic<uint64_t> registry_applied{0};    // other instances' records and tombstones applied
  std::atomic<uint64_t> registry_ignored{0};    // records not applied (unknown endpoint, conflict, bad)
  // Migration mirror: copies published to each side of the pair, and copies dead-lettered.
  std::atomic<uint64_t> mirrored_to_from{0};
  std::atomic<uint64_t> mirrored_to_to{0};
  std::atomic<uint64_t> mirror_failed{0};
};

// Topic prefix of the shared binding registry's records ("$fingate/bindings/<fin_id>").
inline constexpr const char* kBindingsPrefix = "$fingate/bindings/";

class Router {
 public:
  Router(Registry& registry, size_t dead_letter_capacity, const Limits& limits = Limits{});
  ~Router();

  // Replaces the endpoint set / the static routes (copy-on-write; safe while routing).
  void setEndpoints(std::vector<std::shared_ptr<RouterEndpoint>> endpoints);
  void setRoutes(std::vector<RouteRule> routes);
  void setLimits(const Limits& limits);
  void setSubscribeTimeout(uint32_t ms) { subscribe_timeout_ms_ = ms; }
  // The endpoint that carries the shared binding registry ("" = none): this instance's
  // bindings of broker-side fins endpoints are published there, other instances' are applied.
  void setRegistryEndpoint(const std::string& endpoint);
  // The migration pair (an unconfigured one = none). Bindings of the passive side move to the
  // active one, and from now on a binding made for either side is made for the active one, in
  // one step with the registry (Registry::redirect). Returns how many bindings moved.
  size_t setMigration(const MigrationPair& m);
  MigrationPair migration() const;
  // When each fin was last heard on each side of the migration pair (wall clock ms, 0 = never),
  // from the fin traffic the gateway accepted there: tells which fins still speak on the old
  // broker. Cleared when the pair changes.
  struct Sighting {
    int64_t from_ms = 0, to_ms = 0;
  };
  std::map<std::string, Sighting> migrationSightings() const;

  // Makes the subscriptions the gateway always needs: `soarca` on orchestrator and fins
  // endpoints, every static route's filter, and the topics of restored bindings. Idempotent:
  // what is already held is not taken again (reload).
  void subscribeBase();

  // Routes one inbound message from endpoint `src`. Never throws, never waits.
  void route(const std::string& src, Envelope&& m);
  // Lane housekeeping (about every 100 ms per lane): registers whose confirmations are late,
  // commands waiting for a restored binding past their TTL.
  void tick(const std::string& src);

  // Re-sends the stored register of every bound fin to orchestrator endpoint `orchestrator`
  // (all orchestrator endpoints when empty) and swallows the replies to those replays.
  // Called from that endpoint's lane when it (re)connects, and on the replay interval.
  // `only`: the register message ids to replay (those bound when the replay was asked for, see
  // boundRegisterIds); nullptr = every binding now. A register bound after the request went
  // out live already and is not sent twice.
  void replayRegisters(const std::string& orchestrator, const std::set<std::string>* only = nullptr);
  std::set<std::string> boundRegisterIds() const;

  // A client session of `endpoint` closed: its bindings go.
  void sessionClosed(const std::string& endpoint, uint64_t session);
  // An endpoint goes away (reload): its bindings and subscriptions go.
  // keep_bindings: the endpoint is replaced by a new instance of the same plugin and role;
  // its bindings stay and subscribeBase() takes their subscriptions on the new instance.
  void endpointRemoved(const std::string& endpoint, bool keep_bindings = false);
  // A session on `endpoint` asks to subscribe `filter`.
  fg_status authorizeSubscribe(const std::string& endpoint, uint64_t session, const std::string& filter,
                               std::string& reason);
  // A transport settled subscription sub_id (status FG_OK = confirmed). Any thread.
  void subscriptionSettled(const std::string& endpoint, uint64_t sub_id, fg_status status, const std::string& detail);

  // Outcomes: m from `src` is dead-lettered (its tracker learns `o`).
  void deadLetter(const std::string& src, const Envelope& m, const std::string& reason, const std::string& detail,
                  fg_outcome o = FG_OUTCOME_DEAD_LETTERED);
  // A copy handed to endpoint `endpoint` will not be delivered: dead letter (whole), a nack to
  // the orchestrator when it is a command, and its tracker settles as dead-lettered. Any thread.
  void deliveryFailed(const std::string& endpoint, OutMessage&& m, const std::string& reason,
                      const std::string& detail);
  void limitHit(const std::string& limit);
  std::map<std::string, uint64_t> limitHits() const;

  // Admin: re-publish / drop dead letters.
  bool retryDeadLetter(uint64_t id, std::string& error);

  Registry& registry() { return registry_; }
  DeadLetterStore& deadLetters() { return dead_letters_; }
  const RouterCounters& counters() const { return counters_; }
  size_t subscriptionCount() const;
  size_t pendingRegisters() const;
  size_t echoWindowSize() const { return echo_.size(); }
  uint64_t echoWindowOverflow() const { return echo_.overflowed(); }

 private:
  using EndpointList = std::vector<std::shared_ptr<RouterEndpoint>>;
  std::shared_ptr<const EndpointList> endpoints() const;
  std::shared_ptr<RouterEndpoint> find(const EndpointList& eps, const std::string& name) const;

  enum class Outcome { NotFinTraffic, Done };
  const fin::ParseResult* finTraffic(RouterEndpoint& src, Envelope& m, BindingPtr& owner, Outcome& outcome);
  Outcome fromFins(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::ParseResult& parsed,
                   const BindingPtr& owner);
  Outcome fromOrchestrator(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::ParseResult& parsed,
                           const BindingPtr& owner);
  // What a fins-side sender says on `soarca`, other than a register: allowed or refused.
  bool finMaySay(const MigrationPair& mig, RouterEndpoint& src, const Envelope& m, const fin::Routing& r,
                 std::string& why);
  bool routeStatic(const EndpointList& eps, RouterEndpoint& src, Envelope& m);
  void handleRegister(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::Routing& r);
  void forwardRegister(const EndpointList& eps, const std::string& src_name, Envelope& m);
  void applyUnregister(const fin::Routing& r);
  void applyShared(const EndpointList& eps, RouterEndpoint& src, Envelope& m);
  void publishShared(const std::string& fin_id, const FinBinding* b);
  bool shareable(const FinBinding& b) const;
  std::string registryEndpoint() const;

  // Hands a copy to dst (recording it for echo suppression where echoes come back).
  void send(RouterEndpoint& dst, OutMessage&& m);
  void sendTo(const EndpointList& eps, const std::string& dst, OutMessage&& m);
  // The mirror's copy of m (sent to, or come from, `side`) for the other side of the pair, when
  // the mirror is on and side is in the pair. Same topic and bytes, m's tracker, never nacked.
  void mirror(const EndpointList& eps, const MigrationPair& mig, const std::string& side, const OutMessage& m);
  void mirror(const EndpointList& eps, const MigrationPair& mig, RouterEndpoint& src, const Envelope& m);
  void mirrorTo(const EndpointList& eps, const MigrationPair& mig, const std::string& target, OutMessage&& c);
  // Fin traffic accepted from src: to every orchestrator endpoint (and the mirror).
  void toOrchestrators(const EndpointList& eps, const MigrationPair& mig, RouterEndpoint& src, const Envelope& m);
  // The orchestrator's message for a fin: to the endpoint holding its binding (and the mirror).
  void toFin(const EndpointList& eps, const MigrationPair& mig, const std::string& dst, OutMessage&& m);
  OutMessage copyOut(const Envelope& m, std::string topic, uint64_t session, const std::string& src_name) const;
  OutMessage moveOut(Envelope& m, uint64_t session, const std::string& src_name) const;  // same topic, m emptied
  // Dead-letters m (refused by the rules); nacks it back to its sender when its message_id was readable.
  void reject(RouterEndpoint& src, const Envelope& m, const std::string& reason, const std::string& detail,
              const fin::Routing* r, const std::string& nack_topic = "");
  void sendNack(const std::string& endpoint, const std::string& topic, uint64_t session, const std::string& message_id);

  // Reference-counted subscriptions per (endpoint, filter). acquire returns the sub id.
  uint64_t acquire(RouterEndpoint& ep, const std::string& filter);
  void release(const std::string& endpoint, const std::string& filter);
  // Subscribes a binding's topics where the gateway must hear them; the ids it must wait for.
  void subscribeBinding(const EndpointList& eps, const FinBinding& b, const FinBinding* prev,
                        std::vector<std::pair<std::string, uint64_t>>& wait);
  void unsubscribeTopics(const EndpointList& eps, const std::string& fins_endpoint,
                         const std::vector<std::string>& topics);
  void unsubscribeBindings(const std::vector<FinBinding>& removed);

  // Registers waiting for their subscriptions (subscribe before forward, without waiting).
  struct PendingRegister {
    uint64_t id = 0;
    std::string src;
    Envelope reg;
    std::string fin_id, message_id;
    std::vector<std::string> topics;
    std::set<uint64_t> waiting;  // sub ids not settled yet
    bool refused = false;
    std::string refused_detail;
    int64_t deadline_ms = 0;
    std::deque<Envelope> followers;  // the same endpoint's later traffic on the fin's topics
    bool posted = false;
  };
  void resumePending(uint64_t id, bool timed_out);
  bool parkFollower(const std::string& src, Envelope& m);

  // Commands for a restored binding on a session transport, until a session claims it.
  struct Backlogged {
    std::string src;
    Envelope m;
    std::string message_id;
    int64_t expires_ms;
  };
  void backlog(const std::string& src, const std::string& fin_id, Envelope&& m, const fin::Routing& r);
  void flushBacklog(const std::string& fin_id);
  void expireBacklog();

  Registry& registry_;
  DeadLetterStore dead_letters_;
  EchoWindow echo_;
  RouterCounters counters_;
  Limits limits_;
  std::atomic<uint32_t> subscribe_timeout_ms_{5000};

  mutable std::mutex config_mu_;
  std::shared_ptr<const EndpointList> endpoints_;
  std::shared_ptr<const std::vector<RouteRule>> routes_;
  std::string registry_endpoint_;
  MigrationPair migration_;
  std::atomic<bool> migration_on_{false};
  void sighted(const MigrationPair& mig, const std::string& side, const std::string& fin_id);
  mutable std::mutex sightings_mu_;
  std::map<std::string, Sighting> sightings_;

  enum class SubState { Pending, Confirmed, Refused };
  struct Sub {
    uint64_t id;
    uint32_t refs;
    SubState state;
    std::string detail;
  };
  mutable std::mutex subs_mu_;
  std::map<std::pair<std::string, std::string>, Sub> subs_;  // (endpoint, filter) -> sub
  std::unordered_map<uint64_t, std::pair<std::string, std::string>> sub_keys_;
  std::atomic<uint64_t> next_sub_id_{1};

  mutable std::mutex pend_mu_;  // lock order: pend_mu_ before subs_mu_
  std::map<uint64_t, PendingRegister> pending_;
  std::unordered_map<std::string, uint64_t> pending_topics_;     // fin/capability id -> pending id
  std::unordered_map<uint64_t, std::vector<uint64_t>> waiters_;  // sub id -> pending ids
  uint64_t next_pending_ = 1;
  std::atomic<size_t> pending_count_{0};  // pending_.size(), read without the lock

  std::mutex backlog_mu_;
  std::unordered_map<std::string, std::deque<Backlogged>> backlog_;  // fin id -> commands
  size_t backlog_count_ = 0;

  // Message ids delivered to fins endpoints (per endpoint+session; session 0 = any session of
  // a broker endpoint, or a broadcast): a fin may ack/nack only those on `soarca`.
  std::mutex delivered_mu_;
  std::unordered_map<std::string, std::deque<std::pair<uint64_t, std::string>>> delivered_ids_;
  void rememberDelivered(const std::string& endpoint, uint64_t session, const std::string& message_id);
  bool wasDelivered(const std::string& endpoint, uint64_t session, const std::string& message_id);

  mutable std::mutex limits_mu_;
  std::map<std::string, uint64_t> limit_hits_;

  // Register message ids the gateway replayed: SOARCA's answers to them are not forwarded.
  std::mutex replay_mu_;
  std::map<std::string, int64_t> replayed_;  // message_id -> expiry (steady ms)
  bool takeReplayed(const std::string& message_id);
};

// "{topic}" in tmpl replaced by topic.
std::string expandTopicTemplate(const std::string& tmpl, const std::string& topic);

}  // namespace fingate
