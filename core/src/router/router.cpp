#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fingate/clock.hpp>
#include <fingate/fin_codec.hpp>
#include <fingate/fin_compat.hpp>
#include <fingate/plugin_loader.hpp>
#include <fingate/router.hpp>
#include <fingate/topic.hpp>
#include <functional>

namespace fingate {

namespace {
constexpr const char* kSoarca = "soarca";
constexpr size_t kDeliveredIdsPerEndpoint = 4096;  // message ids a fins endpoint may ack on `soarca`

// One reusable parse result per lane thread: no allocation per message once warm.
fin::ParseResult& parseOnce(const Envelope& m) {
  thread_local fin::ParseResult result;
  fin::parseInto(result, m.payload.data(), m.payload.size(), m.payload.capacity());
  return result;
}

// Rate-limits a log line per key to one a second.
bool logAllowed(const std::string& key) {
  static std::mutex mu;
  static std::unordered_map<std::string, int64_t> last;
  std::lock_guard lk(mu);
  int64_t now = steadyMs();
  auto& t = last[key];
  if (now - t < 1000) return false;
  t = now;
  if (last.size() > 4096) last.clear();
  return true;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}
}  // namespace

std::string expandTopicTemplate(const std::string& tmpl, const std::string& topic) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t at = tmpl.find("{topic}", pos);
    if (at == std::string::npos) {
      out.append(tmpl, pos, std::string::npos);
      return out;
    }
    out.append(tmpl, pos, at - pos);
    out += topic;
    pos = at + 7;
  }
}

// ---- DeadLetterStore ------------------------------------------------------------------

uint64_t DeadLetterStore::add(DeadLetter d) {
  std::lock_guard lk(mu_);
  counts_[d.reason]++;
  total_++;
  d.id = next_id_++;
  if (capacity_ == 0 || d.payload.size() > byte_budget_) {
    evicted_++;
    return d.id;
  }
  bytes_ += d.payload.size();
  uint64_t id = d.id;
  items_.push_back(std::move(d));
  while (!items_.empty() && (items_.size() > capacity_ || bytes_ > byte_budget_)) {
    bytes_ -= items_.front().payload.size();
    items_.pop_front();
    evicted_++;
  }
  return id;
}
std::vector<DeadLetter> DeadLetterStore::snapshot() const {
  std::lock_guard lk(mu_);
  return {items_.begin(), items_.end()};
}
std::optional<DeadLetter> DeadLetterStore::take(uint64_t id) {
  std::lock_guard lk(mu_);
  for (auto it = items_.begin(); it != items_.end(); ++it)
    if (it->id == id) {
      DeadLetter d = std::move(*it);
      bytes_ -= d.payload.size();
      items_.erase(it);
      return d;
    }
  return std::nullopt;
}
bool DeadLetterStore::drop(uint64_t id) { return take(id).has_value(); }
size_t DeadLetterStore::dropAll() {
  std::lock_guard lk(mu_);
  size_t n = items_.size();
  items_.clear();
  bytes_ = 0;
  return n;
}
std::map<std::string, uint64_t> DeadLetterStore::countsByReason() const {
  std::lock_guard lk(mu_);
  return counts_;
}
uint64_t DeadLetterStore::total() const {
  std::lock_guard lk(mu_);
  return total_;
}
size_t DeadLetterStore::bytes() const {
  std::lock_guard lk(mu_);
  return bytes_;
}
uint64_t DeadLetterStore::evicted() const {
  std::lock_guard lk(mu_);
  return evicted_;
}

// ---- EchoWindow -----------------------------------------------------------------------

uint64_t EchoWindow::key(const std::string& endpoint, const std::string& topic, const std::string& payload) {
  std::hash<std::string_view> h;
  uint64_t k = h(endpoint);
  k = k * 0x9E3779B97F4A7C15ull ^ h(topic);
  k = k * 0x9E3779B97F4A7C15ull ^ h(payload);
  return k;
}

void EchoWindow::popOldestLocked() {
  auto it = counts_.find(order_.front().second);
  order_.pop_front();
  if (it == counts_.end()) return;
  // Records of one key are interchangeable: the used-up ones leave first.
  if (it->second.consumed)
    it->second.consumed--;
  else if (it->second.live)
    it->second.live--;
  if (!it->second.consumed && !it->second.live) counts_.erase(it);
}

void EchoWindow::expireLocked(int64_t now_ms) {
  while (!order_.empty() && now_ms - order_.front().first > window_ms_) popOldestLocked();
}

void EchoWindow::record(const std::string& endpoint, const std::string& topic, const std::string& payload) {
  uint64_t k = key(endpoint, topic, payload);
  std::lock_guard lk(mu_);
  int64_t now = steadyMs();
  expireLocked(now);
  while (!order_.empty() && order_.size() >= max_entries_) {
    popOldestLocked();
    overflowed_.fetch_add(1, std::memory_order_relaxed);
  }
  counts_[k].live++;
  order_.emplace_back(now, k);
}

bool EchoWindow::consume(const std::string& endpoint, const std::string& topic, const std::string& payload) {
  uint64_t k = key(endpoint, topic, payload);
  std::lock_guard lk(mu_);
  expireLocked(steadyMs());
  auto it = counts_.find(k);
  if (it == counts_.end() || it->second.live == 0) return false;
  it->second.live--;
  it->second.consumed++;
  return true;
}

size_t EchoWindow::size() const {
  std::lock_guard lk(mu_);
  return order_.size();
}

// ---- Router: configuration ---------------------------------------------------------------

Router::Router(Registry& registry, size_t dead_letter_capacity, const Limits& limits)
    : registry_(registry),
      dead_letters_(dead_letter_capacity, limits.dead_letter_bytes),
      echo_(10000, limits.echo_window_entries),
      limits_(limits),
      endpoints_(std::make_shared<EndpointList>()),
      routes_(std::make_shared<std::vector<RouteRule>>()) {
  registry_.setLimits({limits.fins_per_session, limits.fins_per_endpoint});
}

Router::~Router() { registry_.setReplicator({}, {}); }

void Router::setRegistryEndpoint(const std::string& endpoint) {
  {
    std::lock_guard lk(config_mu_);
    if (registry_endpoint_ == endpoint) return;
    registry_endpoint_ = endpoint;
  }
  if (endpoint.empty())
    registry_.setReplicator({}, {});
  else
    registry_.setReplicator([this](const FinBinding& b) { return shareable(b); },
                            [this](const std::string& fin_id, const FinBinding* b) { publishShared(fin_id, b); });
}

size_t Router::setMigration(const MigrationPair& m) {
  MigrationPair before;
  {
    std::lock_guard lk(config_mu_);
    before = migration_;
    if (m.from != migration_.from || m.to != migration_.to) {
      std::lock_guard sl(sightings_mu_);
      sightings_.clear();
    }
    migration_ = m;
    migration_on_.store(m.configured(), std::memory_order_release);
  }
  // The pair ended (or changed): the other side's hold on each fin's topics goes with it.
  if (before.configured() && (before.from != m.from || before.to != m.to))
    for (auto& b : registry_.snapshot()) {
      if (!before.has(b.endpoint)) continue;
      const std::string& partner = before.other(b.endpoint);
      if (m.samePlace(partner, b.endpoint)) continue;
      for (auto& t : Registry::topicsOf(b)) release(partner, t);
    }
  if (!m.configured()) {
    registry_.redirect("", "");
    return 0;
  }
  return registry_.redirect(m.passive(), m.active());
}

void Router::sighted(const MigrationPair& mig, const std::string& side, const std::string& fin_id) {
  if (!mig.has(side)) return;
  const int64_t now = wallMs();
  std::lock_guard lk(sightings_mu_);
  if (sightings_.size() >= 100000 && !sightings_.count(fin_id)) return;  // bounded: one entry per bound fin
  auto& s = sightings_[fin_id];
  (side == mig.from ? s.from_ms : s.to_ms) = now;
}

std::map<std::string, Router::Sighting> Router::migrationSightings() const {
  std::lock_guard lk(sightings_mu_);
  return sightings_;
}

MigrationPair Router::migration() const {
  if (!migration_on_.load(std::memory_order_acquire)) return {};  // the common case: no lock, no copy
  std::lock_guard lk(config_mu_);
  return migration_;
}

std::string Router::registryEndpoint() const {
  std::lock_guard lk(config_mu_);
  return registry_endpoint_;
}

// ---- shared registry ---------------------------------------------------------------------------

// Only bindings any instance can use are shared: those of broker-side fins endpoints (a session
// binding names a client connected to this instance alone).
bool Router::shareable(const FinBinding& b) const {
  if (b.remote || b.restored) return false;
  auto eps = endpoints();
  auto ep = find(*eps, b.endpoint);
  return ep && ep->role == Role::Fins && !ep->sessions;
}

void Router::publishShared(const std::string& fin_id, const FinBinding* b) {
  auto eps = endpoints();
  auto ep = find(*eps, registryEndpoint());
  if (!ep) return;
  OutMessage o;
  o.topic = kBindingsPrefix + fin_id;
  if (b) o.payload = bindingRecord(*b);  // empty = removed (a tombstone)
  o.timestamp_ms = wallMs();
  o.origin = ep->name;
  counters_.registry_published++;
  ep->out->send(std::move(o));
}

void Router::applyShared(const EndpointList& eps, RouterEndpoint& src, Envelope& m) {
  const std::string fin_id = m.topic.substr(std::strlen(kBindingsPrefix));
  auto ignored = [&](const std::string& why) {
    counters_.registry_ignored++;
    if (logAllowed("registry_ignored"))
      spdlog::warn("shared registry: record of fin '{}' not applied: {}", fin_id.substr(0, 200), why);
  };
  if (m.payload.empty()) {
    auto removed = registry_.dropRemote(fin_id);
    unsubscribeBindings(removed);
    counters_.registry_applied++;
    if (m.tracker) m.tracker->raise(FG_OUTCOME_DELIVERED);
    return;
  }
  std::string error;
  auto b = bindingFromRecord(m.payload, error);
  if (b && b->fin_id != fin_id) error = "its fin_id '" + b->fin_id.substr(0, 200) + "' is not the one in its topic";
  if (b && error.empty()) {
    error = fin::validateId(b->fin_id);
    for (auto& c : b->capabilities)
      if (error.empty()) error = fin::validateId(c);
  }
  if (!b || !error.empty()) {
    ignored("unreadable: " + error);
    deadLetter(src.name, m, "invalid_message", "shared registry record: " + error);
    return;
  }
  auto target = find(eps, b->endpoint);
  if (!target || target->role != Role::Fins || target->sessions) {
    ignored("endpoint '" + b->endpoint +
            "' is not a broker-side fins endpoint here (is every instance on the same config?)");
    if (m.tracker) m.tracker->raise(FG_OUTCOME_FILTERED);
    return;
  }
  BindResult res = registry_.adopt(*b);
  if (!res.error.empty()) {
    ignored(res.detail);
    if (m.tracker) m.tracker->raise(FG_OUTCOME_FILTERED);
    return;
  }
  std::vector<std::pair<std::string, uint64_t>> wait;  // nothing waits on these
  subscribeBinding(eps, *b, res.prev.get(), wait);
  if (!res.gone.empty()) unsubscribeTopics(eps, res.prev ? res.prev->endpoint : b->endpoint, res.gone);
  counters_.registry_applied++;
  if (m.tracker) m.tracker->raise(FG_OUTCOME_DELIVERED);
}

void Router::setLimits(const Limits& limits) {
  {
    std::lock_guard lk(config_mu_);
    limits_ = limits;
  }
  echo_.setMaxEntries(limits.echo_window_entries);
  registry_.setLimits({limits.fins_per_session, limits.fins_per_endpoint});
}

void Router::setEndpoints(std::vector<std::shared_ptr<RouterEndpoint>> endpoints) {
  auto p = std::make_shared<const EndpointList>(std::move(endpoints));
  std::lock_guard lk(config_mu_);
  endpoints_ = std::move(p);
}

void Router::setRoutes(std::vector<RouteRule> routes) {
  auto p = std::make_shared<const std::vector<RouteRule>>(std::move(routes));
  std::lock_guard lk(config_mu_);
  routes_ = std::move(p);
}

std::shared_ptr<const Router::EndpointList> Router::endpoints() const {
  std::lock_guard lk(config_mu_);
  return endpoints_;
}

std::shared_ptr<RouterEndpoint> Router::find(const EndpointList& eps, const std::string& name) const {
  for (auto& e : eps)
    if (e->name == name) return e;
  return nullptr;
}

size_t Router::subscriptionCount() const {
  std::lock_guard lk(subs_mu_);
  return subs_.size();
}

size_t Router::pendingRegisters() const {
  std::lock_guard lk(pend_mu_);
  return pending_.size();
}

void Router::limitHit(const std::string& limit) {
  {
    std::lock_guard lk(limits_mu_);
    limit_hits_[limit]++;
  }
  if (logAllowed("limit:" + limit)) spdlog::warn("limit hit: {}", limit);
}

std::map<std::string, uint64_t> Router::limitHits() const {
  std::lock_guard lk(limits_mu_);
  return limit_hits_;
}

// ---- subscriptions -------------------------------------------------------------------------

uint64_t Router::acquire(RouterEndpoint& ep, const std::string& filter) {
  uint64_t id;
  {
    std::lock_guard lk(subs_mu_);
    auto key = std::make_pair(ep.name, filter);
    auto it = subs_.find(key);
    if (it != subs_.end()) {
      it->second.refs++;
      return it->second.id;
    }
    id = next_sub_id_++;
    subs_[key] = Sub{id, 1, ep.subscribe_ack ? SubState::Pending : SubState::Confirmed, ""};
    sub_keys_[id] = key;
  }
  fg_status st = ep.out->subscribe(filter, id);
  if (st != FG_OK) subscriptionSettled(ep.name, id, st, std::string("subscribe returned ") + statusName(st));
  return id;
}

void Router::release(const std::string& endpoint, const std::string& filter) {
  uint64_t id = 0;
  {
    std::lock_guard lk(subs_mu_);
    auto it = subs_.find({endpoint, filter});
    if (it == subs_.end()) return;
    if (--it->second.refs > 0) return;
    id = it->second.id;
    sub_keys_.erase(id);
    subs_.erase(it);
  }
  auto eps = endpoints();
  if (auto ep = find(*eps, endpoint)) ep->out->unsubscribe(id);
}

void Router::subscriptionSettled(const std::string& endpoint, uint64_t sub_id, fg_status status,
                                 const std::string& detail) {
  std::vector<std::pair<std::string, uint64_t>> ready;  // (source endpoint, pending id)
  std::string filter;
  {
    std::lock_guard pl(pend_mu_);
    {
      std::lock_guard sl(subs_mu_);
      auto k = sub_keys_.find(sub_id);
      if (k == sub_keys_.end()) return;  // released meanwhile
      filter = k->second.second;
      auto it = subs_.find(k->second);
      if (it != subs_.end()) {
        it->second.state = status == FG_OK ? SubState::Confirmed : SubState::Refused;
        it->second.detail = detail;
      }
    }
    auto w = waiters_.find(sub_id);
    if (w != waiters_.end()) {
      for (uint64_t pid : w->second) {
        auto p = pending_.find(pid);
        if (p == pending_.end()) continue;
        p->second.waiting.erase(sub_id);
        if (status != FG_OK) {
          p->second.refused = true;
          p->second.refused_detail = "subscription to '" + filter.substr(0, 200) + "' on " + endpoint + " refused" +
                                     (detail.empty() ? "" : ": " + detail);
        }
        if ((p->second.waiting.empty() || p->second.refused) && !p->second.posted) {
          p->second.posted = true;
          ready.emplace_back(p->second.src, pid);
        }
      }
      waiters_.erase(w);
    }
  }
  if (status != FG_OK) {
    counters_.subscribe_refused++;
    spdlog::warn("endpoint {}: subscription to '{}' refused{}", endpoint, filter.substr(0, 200),
                 detail.empty() ? "" : ": " + detail);
  }
  if (ready.empty()) return;
  auto eps = endpoints();
  for (auto& [src, pid] : ready) {
    auto ep = find(*eps, src);
    if (ep) ep->out->post([this, pid = pid] { resumePending(pid, false); });
  }
}

void Router::subscribeBase() {
  auto eps = endpoints();
  std::shared_ptr<const std::vector<RouteRule>> routes;
  {
    std::lock_guard lk(config_mu_);
    routes = routes_;
  }
  // What the gateway always holds, taken once per (endpoint, filter): a reload that keeps an
  // endpoint does not take its base subscriptions again.
  auto base = [&](RouterEndpoint& e, const std::string& filter) {
    {
      std::lock_guard lk(subs_mu_);
      if (subs_.count({e.name, filter})) return;
    }
    acquire(e, filter);
  };
  for (auto& e : *eps)
    if (e->role == Role::Orchestrator || (e->role == Role::Fins && !e->sessions)) base(*e, kSoarca);
  for (auto& r : *routes)
    if (auto e = find(*eps, r.from_endpoint)) base(*e, r.from_filter);
  if (auto e = find(*eps, registryEndpoint())) base(*e, std::string(kBindingsPrefix) + "#");
  const MigrationPair mig = migration();
  for (auto& b : registry_.snapshot())
    for (auto& e : *eps) {
      bool here = e->role == Role::Orchestrator || (mig.samePlace(e->name, b.endpoint) && !e->sessions);
      if (here)
        for (auto& t : Registry::topicsOf(b)) base(*e, t);
    }
}

void Router::subscribeBinding(const EndpointList& eps, const FinBinding& b, const FinBinding* prev,
                              std::vector<std::pair<std::string, uint64_t>>& wait) {
  std::vector<std::string> held;  // what prev held and b keeps (released: see the caller's `gone`)
  if (prev) held = Registry::topicsOf(*prev);
  // Both sides of a migration pair hear the fin's topics (its fins may be on either broker).
  const MigrationPair mig = migration();
  for (auto& e : eps) {
    const bool orchestrator = e->role == Role::Orchestrator;
    const bool fins_broker = mig.samePlace(e->name, b.endpoint) && !e->sessions && e->role != Role::Orchestrator;
    if (!orchestrator && !fins_broker) continue;
    // The fin moved between broker endpoints: the old endpoint's hold goes, the new one starts.
    const bool same_place = prev && (orchestrator || mig.samePlace(prev->endpoint, b.endpoint));
    for (auto& t : Registry::topicsOf(b)) {
      if (same_place && contains(held, t)) continue;
      uint64_t id = acquire(*e, t);
      if (e->subscribe_ack) wait.emplace_back(e->name, id);
    }
  }
  if (prev && !mig.samePlace(prev->endpoint, b.endpoint)) {
    for (auto& e : eps) {
      if (e->sessions || e->role == Role::Orchestrator || !mig.samePlace(e->name, prev->endpoint)) continue;
      for (auto& t : held)
        if (contains(Registry::topicsOf(b), t)) release(e->name, t);
    }
  }
}

void Router::unsubscribeTopics(const EndpointList& eps, const std::string& fins_endpoint,
                               const std::vector<std::string>& topics) {
  const MigrationPair mig = migration();
  for (auto& e : eps) {
    bool here = e->role == Role::Orchestrator || (mig.samePlace(e->name, fins_endpoint) && !e->sessions);
    if (!here) continue;
    for (auto& t : topics) release(e->name, t);
  }
}

void Router::unsubscribeBindings(const std::vector<FinBinding>& removed) {
  if (removed.empty()) return;
  auto eps = endpoints();
  for (auto& b : removed) unsubscribeTopics(*eps, b.endpoint, Registry::topicsOf(b));
}

// ---- sending, outcomes, dead letters ---------------------------------------------------------

namespace {
// What every copy of m carries besides its bytes: where it came from and its tracker.
void fillFrom(OutMessage& o, const Envelope& m, uint64_t session, const std::string& src_name, TrackerRef tracker) {
  o.session = session;
  o.timestamp_ms = m.timestamp_ms;
  o.ingress_ns = m.ingress_ns;
  o.origin = src_name;
  o.origin_session = m.session;
  if (tracker) {
    o.tracker = std::move(tracker);
    o.tracker->copyAdded();
  }
}
}  // namespace

OutMessage Router::moveOut(Envelope& m, uint64_t session, const std::string& src_name) const {
  OutMessage o;
  o.topic = m.topic;
  o.payload = std::move(m.payload);
  o.headers = std::move(m.headers);
  fillFrom(o, m, session, src_name, std::move(m.tracker));
  return o;
}

OutMessage Router::copyOut(const Envelope& m, std::string topic, uint64_t session, const std::string& src_name) const {
  OutMessage o;
  o.topic = std::move(topic);
  o.payload = m.payload;
  o.headers = m.headers;
  fillFrom(o, m, session, src_name, m.tracker);
  return o;
}

void Router::send(RouterEndpoint& dst, OutMessage&& m) {
  if (!dst.sessions && !dst.out->noLocal()) echo_.record(dst.name, m.topic, m.payload);
  counters_.routed.fetch_add(1, std::memory_order_relaxed);
  dst.out->send(std::move(m));
}

void Router::mirrorTo(const EndpointList& eps, const MigrationPair& mig, const std::string& target, OutMessage&& c) {
  c.mirror_copy = true;
  c.session = 0;
  c.nack_id.clear();  // SOARCA learns about the fin's own copy, never about the mirror's
  (target == mig.from ? counters_.mirrored_to_from : counters_.mirrored_to_to).fetch_add(1, std::memory_order_relaxed);
  sendTo(eps, target, std::move(c));
}

void Router::mirror(const EndpointList& eps, const MigrationPair& mig, const std::string& side, const OutMessage& m) {
  if (!mig.mirror || !mig.has(side)) return;
  OutMessage c;
  c.topic = m.topic;
  c.payload = m.payload;
  c.headers = m.headers;
  c.timestamp_ms = m.timestamp_ms;
  c.ingress_ns = m.ingress_ns;
  c.origin = m.origin;
  c.origin_session = m.origin_session;
  if (m.tracker) {
    c.tracker = m.tracker;
    c.tracker->copyAdded();
  }
  mirrorTo(eps, mig, mig.other(side), std::move(c));
}

void Router::mirror(const EndpointList& eps, const MigrationPair& mig, RouterEndpoint& src, const Envelope& m) {
  if (!mig.mirror || !mig.has(src.name)) return;
  mirrorTo(eps, mig, mig.other(src.name), copyOut(m, m.topic, 0, src.name));
}

void Router::sendTo(const EndpointList& eps, const std::string& dst, OutMessage&& m) {
  auto ep = find(eps, dst);
  if (!ep) {
    deliveryFailed(dst, std::move(m), "no_endpoint", "target endpoint '" + dst + "' does not exist");
    return;
  }
  send(*ep, std::move(m));
}

void Router::deadLetter(const std::string& src, const Envelope& m, const std::string& reason, const std::string& detail,
                        fg_outcome o) {
  if (m.tracker) m.tracker->raise(o);
  DeadLetter d;
  d.time_ms = wallMs();
  d.endpoint = src;
  d.topic = m.topic;
  d.session = m.session;
  d.reason = reason;
  d.detail = detail;
  d.payload_bytes = m.payload.size();
  d.payload = m.payload;
  d.headers = m.headers;
  if (logAllowed(reason + src))
    spdlog::warn("dead letter from {} topic '{}': {} ({})", src, m.topic.substr(0, 200), reason, detail);
  dead_letters_.add(std::move(d));
}

void Router::deliveryFailed(const std::string& endpoint, OutMessage&& m, const std::string& reason,
                            const std::string& detail) {
  DeadLetter d;
  d.time_ms = wallMs();
  d.endpoint = m.origin.empty() ? endpoint : m.origin;
  d.topic = m.topic;
  d.session = m.origin_session;
  d.reason = reason;
  d.detail = detail;
  d.payload_bytes = m.payload.size();
  d.payload = std::move(m.payload);
  d.headers = std::move(m.headers);
  if (m.static_copy || m.mirror_copy || m.origin.empty()) d.target = endpoint;
  if (m.mirror_copy) {
    counters_.mirror_failed++;
    d.detail = "mirror copy: " + d.detail;
  }
  if (logAllowed(reason + endpoint))
    spdlog::warn("dead letter for {} topic '{}': {} ({})", endpoint, m.topic.substr(0, 200), reason, detail);
  dead_letters_.add(std::move(d));
  // A command SOARCA sent and no fin will see: fail the step now rather than at its timeout.
  if (m.nack_on_failure()) sendNack(m.nack_endpoint, m.topic, m.origin_session, m.nack_id);
  m.settle(FG_OUTCOME_DEAD_LETTERED);
}

void Router::sendNack(const std::string& endpoint, const std::string& topic, uint64_t session,
                      const std::string& message_id) {
  auto eps = endpoints();
  auto ep = find(*eps, endpoint);
  if (!ep) return;
  OutMessage o;
  o.topic = topic;
  o.payload = fin::makeNack(message_id);
  o.session = ep->sessions ? session : 0;
  counters_.nacks_sent++;
  mirror(*eps, migration(), endpoint, o);  // the other side of a migration sees the same answer
  send(*ep, std::move(o));
}

void Router::reject(RouterEndpoint& src, const Envelope& m, const std::string& reason, const std::string& detail,
                    const fin::Routing* r, const std::string& nack_topic) {
  deadLetter(src.name, m, reason, detail, FG_OUTCOME_REFUSED);
  if (r && r->message_id_readable && r->type != fin::MsgType::Nack && r->type != fin::MsgType::Ack)
    sendNack(src.name, nack_topic.empty() ? m.topic : nack_topic, m.session, r->message_id);
}

bool Router::retryDeadLetter(uint64_t id, std::string& error) {
  auto d = dead_letters_.take(id);
  if (!d) {
    error = "no dead letter with id " + std::to_string(id) + " (it may have been retried, dropped or evicted)";
    return false;
  }
  auto eps = endpoints();
  const std::string& via = d->target.empty() ? d->endpoint : d->target;
  auto ep = find(*eps, via);
  if (!ep) {
    error = "endpoint '" + via + "' does not exist any more";
    dead_letters_.add(std::move(*d));
    return false;
  }
  counters_.dead_letter_retries++;
  if (!d->target.empty()) {
    OutMessage o;
    o.topic = d->topic;
    o.payload = std::move(d->payload);
    o.headers = std::move(d->headers);
    o.static_copy = true;
    send(*ep, std::move(o));
    return true;
  }
  // Routed again from its source endpoint's lane, as if it had just arrived.
  auto env = std::make_shared<Envelope>();
  env->topic = d->topic;
  env->assignPayload(d->payload);
  env->headers = std::move(d->headers);
  env->session = d->session;
  std::string src = d->endpoint;
  ep->out->post([this, env, src] { route(src, std::move(*env)); });
  return true;
}

// ---- routing ---------------------------------------------------------------------------------

void Router::route(const std::string& src_name, Envelope&& m) {
  try {
    auto eps = endpoints();
    auto src = find(*eps, src_name);
    if (!src) {
      deadLetter(src_name, m, "no_endpoint", "source endpoint is gone");
      return;
    }
    if (m.topic.rfind(kBindingsPrefix, 0) == 0 && src_name == registryEndpoint()) {
      applyShared(*eps, *src, m);
      return;
    }
    if (!src->sessions && !src->out->noLocal() && echo_.consume(src->name, m.topic, m.payload)) {
      counters_.echoes_suppressed++;
      return;  // filtered
    }
    if (parkFollower(src_name, m)) return;
    Outcome o = Outcome::NotFinTraffic;
    if (src->role == Role::Fins || src->role == Role::Orchestrator) {
      BindingPtr owner;
      if (const fin::ParseResult* parsed = finTraffic(*src, m, owner, o))
        o = src->role == Role::Fins ? fromFins(*eps, *src, m, *parsed, owner)
                                    : fromOrchestrator(*eps, *src, m, *parsed, owner);
    }
    if (o == Outcome::Done) return;
    if (routeStatic(*eps, *src, m)) return;
    deadLetter(src->name, m, "unroutable", "no binding or route for this topic");
    if (src->role == Role::Orchestrator) {
      // SOARCA's command for a fin that is not (or no longer) bound: nack it now, so the step
      // fails at once instead of at its timeout.
      const fin::ParseResult& p = parseOnce(m);
      if (p.msg.type == fin::MsgType::Command && p.msg.message_id_readable)
        sendNack(src->name, m.topic, m.session, p.msg.message_id);
    }
  } catch (const std::exception& e) {
    spdlog::error("router: unexpected error routing from {}: {}", src_name, e.what());
    deadLetter(src_name, m, "internal_error", e.what());
  }
}

bool Router::routeStatic(const EndpointList& eps, RouterEndpoint& src, Envelope& m) {
  std::shared_ptr<const std::vector<RouteRule>> routes;
  {
    std::lock_guard lk(config_mu_);
    routes = routes_;
  }
  bool any = false;
  for (auto& r : *routes) {
    if (r.from_endpoint != src.name || !topicMatches(r.from_filter, m.topic)) continue;
    any = true;
    OutMessage o = copyOut(m, expandTopicTemplate(r.to_template, m.topic), 0, src.name);
    o.static_copy = true;
    sendTo(eps, r.to_endpoint, std::move(o));
  }
  return any;
}

const fin::ParseResult* Router::finTraffic(RouterEndpoint& src, Envelope& m, BindingPtr& owner, Outcome& outcome) {
  if (m.topic != kSoarca) {
    owner = registry_.lookup(m.topic);
    if (!owner) {
      outcome = Outcome::NotFinTraffic;
      return nullptr;
    }
  }
  fin::ParseResult& parsed = parseOnce(m);
  if (!parsed.ok) {
    reject(src, m, "invalid_message", parsed.error, &parsed.msg);
    outcome = Outcome::Done;
    return nullptr;
  }
  return &parsed;
}

void Router::rememberDelivered(const std::string& endpoint, uint64_t session, const std::string& message_id) {
  if (message_id.empty()) return;
  std::lock_guard lk(delivered_mu_);
  auto& q = delivered_ids_[endpoint];
  if (q.size() >= kDeliveredIdsPerEndpoint) q.pop_front();
  q.emplace_back(session, message_id);
}

bool Router::wasDelivered(const std::string& endpoint, uint64_t session, const std::string& message_id) {
  std::lock_guard lk(delivered_mu_);
  auto it = delivered_ids_.find(endpoint);
  if (it == delivered_ids_.end()) return false;
  for (auto& [s, id] : it->second)
    if (id == message_id && (s == 0 || s == session)) return true;
  return false;
}

bool Router::finMaySay(const MigrationPair& mig, RouterEndpoint& src, const Envelope& m, const fin::Routing& r,
                       std::string& why) {
  auto owns = [&](const std::string& id) {
    auto b = registry_.lookup(id);
    if (!b || !mig.samePlace(b->endpoint, src.name)) return false;
    return !src.sessions || (!b->restored && b->session == m.session);
  };
  switch (r.type) {
    case fin::MsgType::Unregister:
      if (r.all) {
        why = "a fin may not unregister all fins";
        return false;
      }
      if (r.fin_id.empty() && r.capability_id.empty()) {
        why = "an unregister names no fin or capability";
        return false;
      }
      if ((!r.fin_id.empty() && !owns(r.fin_id)) || (!r.capability_id.empty() && !owns(r.capability_id))) {
        why = "an unregister of ids this sender does not own";
        return false;
      }
      return true;
    case fin::MsgType::Ack:
    case fin::MsgType::Nack:
      if (wasDelivered(src.name, m.session, r.message_id)) return true;
      why = std::string("an ") + std::string(fin::toString(r.type)) +
            " of a message that was not delivered to this sender";
      return false;
    default:
      why = "a " + std::string(fin::toString(r.type)) + " is not allowed on 'soarca' from a fins endpoint";
      return false;
  }
}

Router::Outcome Router::fromFins(const EndpointList& eps, RouterEndpoint& src, Envelope& m,
                                 const fin::ParseResult& parsed, const BindingPtr& owner) {
  const bool is_soarca = m.topic == kSoarca;
  const MigrationPair mig = migration();  // once per message (no lock without a migration)
  if (is_soarca) {
    if (parsed.msg.type == fin::MsgType::Register) {
      handleRegister(eps, src, m, parsed.msg);
      return Outcome::Done;
    }
    // What else a fin may say on `soarca`: an unregister of its own ids, an ack/nack of what it got.
    std::string why;
    if (!finMaySay(mig, src, m, parsed.msg, why)) {
      reject(src, m, "not_allowed", why, &parsed.msg, kSoarca);
      return Outcome::Done;
    }
    toOrchestrators(eps, mig, src, m);
    return Outcome::Done;
  }
  // A fin topic: only its owner may speak there (a restored binding: once a session claimed it).
  // Both sides of a migration pair are the owner's place.
  if (!mig.samePlace(owner->endpoint, src.name) || (src.sessions && (owner->restored || owner->session != m.session))) {
    reject(src, m, "foreign_topic",
           owner->restored && owner->endpoint == src.name
               ? "topic '" + m.topic + "' belongs to a restored binding that no session has claimed by a register yet"
               : "topic '" + m.topic + "' is bound to another fin session",
           &parsed.msg);
    return Outcome::Done;
  }
  sighted(mig, src.name, owner->fin_id);
  toOrchestrators(eps, mig, src, m);
  return Outcome::Done;
}

void Router::toOrchestrators(const EndpointList& eps, const MigrationPair& mig, RouterEndpoint& src,
                             const Envelope& m) {
  bool any = false;
  for (auto& e : eps)
    if (e->role == Role::Orchestrator) {
      send(*e, copyOut(m, m.topic, 0, src.name));
      any = true;
    }
  if (!any) {
    deadLetter(src.name, m, "no_orchestrator", "no orchestrator endpoint is configured");
    return;
  }
  mirror(eps, mig, src, m);
}

void Router::handleRegister(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::Routing& r) {
  counters_.registers++;
  std::string bad = fin::validateId(r.fin_id);
  if (!bad.empty()) {
    reject(src, m, "invalid_id", "fin_id: " + bad, &r, kSoarca);
    return;
  }
  uint32_t max_caps, max_pending;
  {
    std::lock_guard lk(config_mu_);
    max_caps = limits_.capabilities_per_register;
    max_pending = limits_.pending_registers;
  }
  if (r.capability_ids.size() > max_caps) {
    limitHit("capabilities_per_register");
    reject(src, m, "limit_capabilities_per_register",
           std::to_string(r.capability_ids.size()) +
               " capabilities in one register (limits.capabilities_per_register is " + std::to_string(max_caps) + ")",
           &r, r.fin_id);
    return;
  }
  for (auto& c : r.capability_ids) {
    bad = fin::validateId(c);
    if (!bad.empty()) {
      reject(src, m, "invalid_id", "capability_id '" + c.substr(0, 64) + "': " + bad, &r, r.fin_id);
      return;
    }
  }
  bool has_orchestrator = std::any_of(eps.begin(), eps.end(), [](auto& e) { return e->role == Role::Orchestrator; });
  if (!has_orchestrator) {
    deadLetter(src.name, m, "no_orchestrator", "no orchestrator endpoint is configured");
    return;
  }
  FinBinding b;
  b.fin_id = r.fin_id;
  b.endpoint = src.name;
  const MigrationPair mig = migration();
  if (mig.has(src.name)) b.endpoint = mig.active();  // one logical endpoint
  b.session = src.sessions ? m.session : 0;
  b.capabilities = r.capability_ids;
  b.registered_at = wallMs() / 1000;
  b.register_message_id = r.message_id;
  b.register_payload = m.payload;
  if (auto prev = registry_.lookup(r.fin_id); prev && prev->acked && prev->endpoint == b.endpoint) {
    // The same fin and capability ids as a binding SOARCA already acked (a restarted fin, or
    // the same register re-sent): keep the ack. SOARCA will answer "already registered" with
    // a nack, which the gateway then turns into an ack for the fin.
    auto a = prev->capabilities, c = b.capabilities;
    std::sort(a.begin(), a.end());
    std::sort(c.begin(), c.end());
    if (a == c) b.acked = true;
  }
  // Check and bind in one step.
  BindResult res = registry_.bind(b);
  if (!res.error.empty()) {
    if (res.error.rfind("limit_", 0) == 0) limitHit(res.error.substr(6));
    reject(src, m, res.error, res.detail, &r, r.fin_id);
    return;
  }
  sighted(mig, src.name, b.fin_id);
  if (res.prev && res.prev->restored) {
    counters_.restored_claimed++;
    spdlog::info("fin '{}': restored binding claimed by a register from {} (session {})", b.fin_id.substr(0, 200),
                 src.name, b.session);
  }
  if (!res.gone.empty()) unsubscribeTopics(eps, res.prev ? res.prev->endpoint : b.endpoint, res.gone);
  // Subscribe everywhere the answers will come from; forward once confirmed (parked, not waited for).
  std::vector<std::pair<std::string, uint64_t>> wait;
  subscribeBinding(eps, b, res.prev.get(), wait);
  std::set<uint64_t> waiting;
  std::string refused;
  {
    std::unique_lock pl(pend_mu_);
    {
      std::lock_guard sl(subs_mu_);
      for (auto& [ep, id] : wait) {
        auto k = sub_keys_.find(id);
        if (k == sub_keys_.end()) continue;
        auto& s = subs_.at(k->second);
        if (s.state == SubState::Pending)
          waiting.insert(id);
        else if (s.state == SubState::Refused && refused.empty())
          refused = "subscription to '" + k->second.second.substr(0, 200) + "' on " + ep + " refused" +
                    (s.detail.empty() ? "" : ": " + s.detail);
      }
    }
    if (refused.empty() && !waiting.empty()) {
      if (pending_.size() >= max_pending) {
        refused = "too many registers waiting for subscriptions (limits.pending_registers is " +
                  std::to_string(max_pending) + ")";
        pl.unlock();
        limitHit("pending_registers");
        reject(src, m, "limit_pending_registers", refused, &r, r.fin_id);
        if (auto u = registry_.undo(r.fin_id, r.message_id)) unsubscribeBindings({*u});
        return;
      }
      uint32_t timeout = subscribe_timeout_ms_.load();
      PendingRegister p;
      p.id = next_pending_++;
      p.src = src.name;
      p.reg = std::move(m);
      p.fin_id = r.fin_id;
      p.message_id = r.message_id;
      p.topics = Registry::topicsOf(b);
      p.waiting = waiting;
      p.deadline_ms = steadyMs() + timeout;
      for (auto id : waiting) waiters_[id].push_back(p.id);
      for (auto& t : p.topics) pending_topics_[t] = p.id;
      counters_.registers_waiting++;
      pending_.emplace(p.id, std::move(p));
      pending_count_.store(pending_.size(), std::memory_order_release);
      return;
    }
  }
  if (!refused.empty()) {
    counters_.subscribe_refused++;
    reject(src, m, "subscribe_refused", refused, &r, r.fin_id);
    if (auto u = registry_.undo(r.fin_id, r.message_id)) unsubscribeBindings({*u});
    return;
  }
  forwardRegister(eps, src.name, m);
  flushBacklog(b.fin_id);
}

void Router::forwardRegister(const EndpointList& eps, const std::string& src_name, Envelope& m) {
  for (auto& e : eps)
    if (e->role == Role::Orchestrator) send(*e, copyOut(m, kSoarca, 0, src_name));
  if (auto src = find(eps, src_name)) mirror(eps, migration(), *src, m);
}

bool Router::parkFollower(const std::string& src, Envelope& m) {
  if (pending_count_.load(std::memory_order_acquire) == 0) return false;  // the common case: no lock
  std::lock_guard lk(pend_mu_);
  if (pending_topics_.empty()) return false;
  auto it = pending_topics_.find(m.topic);
  if (it == pending_topics_.end()) return false;
  auto p = pending_.find(it->second);
  if (p == pending_.end() || p->second.src != src) return false;
  uint32_t max_followers;
  {
    std::lock_guard cl(config_mu_);
    max_followers = limits_.pending_followers;
  }
  if (p->second.followers.size() >= max_followers) return false;  // routed now (it may be refused there)
  p->second.followers.push_back(std::move(m));
  return true;
}

void Router::resumePending(uint64_t id, bool timed_out) {
  PendingRegister p;
  {
    std::lock_guard lk(pend_mu_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;
    p = std::move(it->second);
    pending_.erase(it);
    pending_count_.store(pending_.size(), std::memory_order_release);
    for (auto& t : p.topics) {
      auto pt = pending_topics_.find(t);
      if (pt != pending_topics_.end() && pt->second == id) pending_topics_.erase(pt);
    }
    for (auto sid : p.waiting) {
      auto w = waiters_.find(sid);
      if (w == waiters_.end()) continue;
      std::erase(w->second, id);
      if (w->second.empty()) waiters_.erase(w);
    }
  }
  auto eps = endpoints();
  auto src = find(*eps, p.src);
  if (p.refused) {
    if (src) {
      fin::Routing r;
      r.type = fin::MsgType::Register;
      r.message_id = p.message_id;
      r.message_id_readable = true;
      reject(*src, p.reg, "subscribe_refused", p.refused_detail, &r, p.fin_id);
    } else {
      deadLetter(p.src, p.reg, "subscribe_refused", p.refused_detail, FG_OUTCOME_REFUSED);
    }
    if (auto u = registry_.undo(p.fin_id, p.message_id)) unsubscribeBindings({*u});
  } else {
    if (timed_out) {
      counters_.subscribe_timeouts++;
      spdlog::warn("fin '{}': subscriptions not confirmed within {} ms; forwarding its register anyway",
                   p.fin_id.substr(0, 200), subscribe_timeout_ms_.load());
    }
    forwardRegister(*eps, p.src, p.reg);
    flushBacklog(p.fin_id);
  }
  for (auto& f : p.followers) route(p.src, std::move(f));
}

void Router::tick(const std::string& src) {
  std::vector<uint64_t> late;
  {
    std::lock_guard lk(pend_mu_);
    int64_t now = steadyMs();
    for (auto& [id, p] : pending_)
      if (p.src == src && !p.posted && now >= p.deadline_ms) {
        p.posted = true;
        late.push_back(id);
      }
  }
  for (auto id : late) resumePending(id, true);
  expireBacklog();
}

// ---- restored bindings on session transports ---------------------------------------------------

void Router::backlog(const std::string& src, const std::string& fin_id, Envelope&& m, const fin::Routing& r) {
  uint32_t max, ttl;
  {
    std::lock_guard lk(config_mu_);
    max = limits_.restored_backlog;
    ttl = limits_.restored_backlog_ttl_ms;
  }
  std::unique_lock lk(backlog_mu_);
  if (backlog_count_ >= max) {
    lk.unlock();
    limitHit("restored_backlog");
    auto eps = endpoints();
    if (auto ep = find(*eps, src))
      reject(*ep, m, "restored_unclaimed",
             "fin '" + fin_id.substr(0, 200) +
                 "' was restored from the state file and has not registered again; the backlog "
                 "(limits.restored_backlog) is full",
             &r);
    return;
  }
  backlog_count_++;
  backlog_[fin_id].push_back(
      Backlogged{src, std::move(m), r.message_id_readable ? r.message_id : "", steadyMs() + ttl});
}

void Router::flushBacklog(const std::string& fin_id) {
  std::deque<Backlogged> q;
  {
    std::lock_guard lk(backlog_mu_);
    if (backlog_.empty()) return;
    auto it = backlog_.find(fin_id);
    if (it == backlog_.end()) return;
    q.swap(it->second);
    backlog_.erase(it);
    backlog_count_ -= q.size();
  }
  for (auto& b : q) route(b.src, std::move(b.m));
}

void Router::expireBacklog() {
  std::vector<Backlogged> expired;
  {
    std::lock_guard lk(backlog_mu_);
    if (backlog_.empty()) return;
    int64_t now = steadyMs();
    for (auto it = backlog_.begin(); it != backlog_.end();) {
      auto& q = it->second;
      while (!q.empty() && q.front().expires_ms <= now) {
        expired.push_back(std::move(q.front()));
        q.pop_front();
        backlog_count_--;
      }
      if (q.empty())
        it = backlog_.erase(it);
      else
        ++it;
    }
  }
  for (auto& b : expired) {
    deadLetter(b.src, b.m, "restored_unclaimed",
               "its fin was restored from the state file and did not register again in time");
    if (!b.message_id.empty()) sendNack(b.src, b.m.topic, b.m.session, b.message_id);
  }
}

// ---- from the orchestrator side ---------------------------------------------------------------

void Router::applyUnregister(const fin::Routing& r) {
  std::vector<FinBinding> removed;
  if (r.all) {
    removed = registry_.removeAll();
  } else {
    if (!r.capability_id.empty()) {
      bool fin_removed = false;
      if (auto after = registry_.removeCapability(r.capability_id, &fin_removed)) {
        auto eps = endpoints();
        unsubscribeTopics(*eps, after->endpoint, {r.capability_id});
        if (fin_removed) unsubscribeTopics(*eps, after->endpoint, {after->fin_id});
      }
    }
    if (!r.fin_id.empty()) removed = registry_.removeFin(r.fin_id);
  }
  unsubscribeBindings(removed);
}

Router::Outcome Router::fromOrchestrator(const EndpointList& eps, RouterEndpoint& src, Envelope& m,
                                         const fin::ParseResult& parsed, const BindingPtr& owner) {
  const bool is_soarca = m.topic == kSoarca;
  const fin::Routing& r = parsed.msg;
  const MigrationPair mig = migration();
  if (is_soarca) {
    // A register on the orchestrator's side is a fin living there, talking to SOARCA directly:
    // none of the gateway's fins needs it (filtered).
    if (r.type == fin::MsgType::Register) return Outcome::Done;
    if (r.type == fin::MsgType::Unregister) applyUnregister(r);
    bool any = false;
    for (auto& e : eps)
      if (e->role == Role::Fins) {
        if (r.message_id_readable) rememberDelivered(e->name, 0, r.message_id);
        send(*e, copyOut(m, m.topic, 0, src.name));
        any = true;
      }
    if (!any) deadLetter(src.name, m, "no_fins", "no fins endpoint is configured");
    return Outcome::Done;
  }
  auto dst = find(eps, owner->endpoint);
  uint64_t session = owner->restored ? 0 : owner->session;
  bool register_answer = m.topic == owner->fin_id && (r.type == fin::MsgType::Ack || r.type == fin::MsgType::Nack);
  if (register_answer && takeReplayed(r.message_id)) {
    // SOARCA's answer to a register the gateway replayed: the fin never asked, so it never hears it.
    counters_.replay_replies_swallowed++;
    if (r.type == fin::MsgType::Ack) registry_.commit(owner->fin_id, r.message_id);
    return Outcome::Done;
  }
  // A restored binding on a session transport delivers nothing until a session claims it.
  if (owner->restored && dst && dst->sessions) {
    if (r.type == fin::MsgType::Command) {
      backlog(src.name, owner->fin_id, std::move(m), r);
    } else {
      deadLetter(src.name, m, "restored_unclaimed",
                 "fin '" + owner->fin_id.substr(0, 200) + "' was restored and no session has claimed it yet");
    }
    return Outcome::Done;
  }
  if (register_answer && r.message_id == owner->register_message_id) {
    // SOARCA's answer to the fin's register commits or undoes the provisional binding.
    if (r.type == fin::MsgType::Ack) {
      registry_.commit(owner->fin_id, r.message_id);
    } else if (owner->acked) {
      // "Already registered": SOARCA acked these very ids before. The Python fin crashes on
      // this nack, and the fin is in fact registered: tell it so.
      counters_.compat_nacks_to_acks++;
      OutMessage o = copyOut(m, m.topic, session, src.name);
      o.payload = fin::makeAck(r.message_id);
      toFin(eps, mig, owner->endpoint, std::move(o));
      return Outcome::Done;
    } else {
      toFin(eps, mig, owner->endpoint, copyOut(m, m.topic, session, src.name));
      if (auto undone = registry_.undo(owner->fin_id, r.message_id)) unsubscribeBindings({*undone});
      return Outcome::Done;
    }
  }
  // To the fin that owns the topic, on its own session. The envelope's last use: moved, not copied.
  fin::RepairStats st;
  std::string repaired;
  const bool repair = r.type == fin::MsgType::Command && dst && dst->compat_python_fin &&
                      fin::repairCommandForPythonFin(m.payload, repaired, st);
  const std::string owner_ep = owner->endpoint;
  OutMessage out = moveOut(m, session, src.name);
  if (r.type == fin::MsgType::Command) {
    if (r.message_id_readable) {
      out.nack_id = r.message_id;
      out.nack_endpoint = src.name;
    }
    if (repair) {
      out.payload = std::move(repaired);
      counters_.compat_auth_removed += static_cast<uint64_t>(st.auth_removed);
      counters_.compat_variables_completed += static_cast<uint64_t>(st.variables_completed);
    }
  }
  toFin(eps, mig, owner_ep, std::move(out));
  return Outcome::Done;
}

void Router::toFin(const EndpointList& eps, const MigrationPair& mig, const std::string& dst, OutMessage&& m) {
  mirror(eps, mig, dst, m);  // the copy first: m is moved next
  sendTo(eps, dst, std::move(m));
}

bool Router::takeReplayed(const std::string& message_id) {
  std::lock_guard lk(replay_mu_);
  int64_t now = steadyMs();
  for (auto it = replayed_.begin(); it != replayed_.end();) {
    if (it->second < now)
      it = replayed_.erase(it);
    else
      ++it;
  }
  return replayed_.erase(message_id) != 0;
}

std::set<std::string> Router::boundRegisterIds() const {
  std::set<std::string> ids;
  for (auto& b : registry_.snapshot())
    if (!b.register_message_id.empty()) ids.insert(b.register_message_id);
  return ids;
}

void Router::replayRegisters(const std::string& orchestrator, const std::set<std::string>* only) {
  auto eps = endpoints();
  auto bindings = registry_.snapshot();
  if (bindings.empty()) return;
  size_t n = 0;
  for (auto& b : bindings) {
    if (b.register_payload.empty() || b.register_message_id.empty()) continue;
    if (only && !only->count(b.register_message_id)) continue;
    for (auto& e : *eps) {
      if (e->role != Role::Orchestrator || (!orchestrator.empty() && e->name != orchestrator)) continue;
      // Acked before: SOARCA's answer is for the gateway only. Never acked (its register may
      // never have reached an orchestrator): the answer goes to the fin as usual.
      if (b.acked) {
        std::lock_guard lk(replay_mu_);
        replayed_[b.register_message_id] = steadyMs() + 60000;
      }
      OutMessage o;
      o.topic = kSoarca;
      o.payload = b.register_payload;
      o.origin = b.endpoint;
      send(*e, std::move(o));
      counters_.registers_replayed++;
      ++n;
    }
  }
  if (n)
    spdlog::info("replayed {} stored register(s) to {}", n, orchestrator.empty() ? "the orchestrators" : orchestrator);
}

void Router::sessionClosed(const std::string& endpoint, uint64_t session) {
  unsubscribeBindings(registry_.removeSession(endpoint, session));
}

void Router::endpointRemoved(const std::string& endpoint, bool keep_bindings) {
  if (!keep_bindings) unsubscribeBindings(registry_.removeEndpoint(endpoint));
  // A new instance replaces it: its live sessions are gone with the old one, the rest stays.
  else
    unsubscribeBindings(registry_.removeIf(
        [&](const FinBinding& b) { return b.endpoint == endpoint && b.session != 0 && !b.restored; }));
  std::lock_guard lk(subs_mu_);
  for (auto it = subs_.begin(); it != subs_.end();) {
    if (it->first.first == endpoint) {
      sub_keys_.erase(it->second.id);
      it = subs_.erase(it);
    } else {
      ++it;
    }
  }
}

fg_status Router::authorizeSubscribe(const std::string& endpoint, uint64_t session, const std::string& filter,
                                     std::string& reason) {
  auto eps = endpoints();
  auto ep = find(*eps, endpoint);
  if (!ep) return FG_OK;
  if (ep->role == Role::Orchestrator) {
    // An orchestrator client that listens on `soarca` hears every bound fin's register again
    // (a fin that registered before any orchestrator was there is not lost).
    if (filter == kSoarca && ep->sessions && registry_.size())
      ep->out->post([this, name = ep->name, ids = boundRegisterIds()] { replayRegisters(name, &ids); });
    return FG_OK;
  }
  if (ep->role != Role::Fins) return FG_OK;
  if (hasWildcard(filter)) {
    reason = "wildcard subscriptions are not allowed on a fins endpoint";
    return FG_ERR_STATE;
  }
  if (auto owner = registry_.lookup(filter)) {
    if (owner->restored) {
      reason = "'" + filter + "' belongs to a restored binding: register the fin again to claim it";
      return FG_ERR_STATE;
    }
    if (owner->endpoint != endpoint || owner->session != session) {
      reason = "'" + filter + "' is bound to another fin session";
      return FG_ERR_STATE;
    }
  }
  return FG_OK;
}

}  // namespace fingate
