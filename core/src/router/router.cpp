#include <fingate/fin_codec.hpp>
#include <fingate/fin_compat.hpp>
#include <fingate/router.hpp>
#include <fingate/topic.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <functional>

namespace fingate {

namespace {
constexpr const char* kSoarca = "soarca";
constexpr size_t kDeadLetterPayloadMax = 4096;

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
int64_t steadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

OutMessage copyOut(const Envelope& m, std::string topic, uint64_t session) {
  OutMessage o;
  o.topic = std::move(topic);
  o.payload = m.payload;
  o.headers = m.headers;
  o.session = session;
  o.timestamp_ms = m.timestamp_ms;
  o.ingress_ns = m.ingress_ns;
  return o;
}

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

void DeadLetterStore::add(DeadLetter d) {
  std::lock_guard lk(mu_);
  counts_[d.reason]++;
  total_++;
  if (capacity_ == 0) return;
  if (items_.size() >= capacity_) items_.pop_front();
  items_.push_back(std::move(d));
}
std::vector<DeadLetter> DeadLetterStore::snapshot() const {
  std::lock_guard lk(mu_);
  return {items_.begin(), items_.end()};
}
std::map<std::string, uint64_t> DeadLetterStore::countsByReason() const {
  std::lock_guard lk(mu_);
  return counts_;
}
uint64_t DeadLetterStore::total() const {
  std::lock_guard lk(mu_);
  return total_;
}

// ---- EchoWindow -----------------------------------------------------------------------

uint64_t EchoWindow::key(const std::string& endpoint, const std::string& topic, const std::string& payload) {
  std::hash<std::string_view> h;
  uint64_t k = h(endpoint);
  k = k * 0x9E3779B97F4A7C15ull ^ h(topic);
  k = k * 0x9E3779B97F4A7C15ull ^ h(payload);
  return k;
}

void EchoWindow::expireLocked(int64_t now_ms) {
  while (!order_.empty() && now_ms - order_.front().first > window_ms_) {
    auto it = counts_.find(order_.front().second);
    if (it != counts_.end() && --it->second == 0) counts_.erase(it);
    order_.pop_front();
  }
}

void EchoWindow::record(const std::string& endpoint, const std::string& topic, const std::string& payload) {
  uint64_t k = key(endpoint, topic, payload);
  std::lock_guard lk(mu_);
  int64_t now = steadyMs();
  expireLocked(now);
  counts_[k]++;
  order_.emplace_back(now, k);
}

bool EchoWindow::consume(const std::string& endpoint, const std::string& topic, const std::string& payload) {
  uint64_t k = key(endpoint, topic, payload);
  std::lock_guard lk(mu_);
  expireLocked(steadyMs());
  auto it = counts_.find(k);
  if (it == counts_.end()) return false;
  // Use up the oldest record of this key.
  for (auto o = order_.begin(); o != order_.end(); ++o)
    if (o->second == k) {
      order_.erase(o);
      break;
    }
  if (--it->second == 0) counts_.erase(it);
  return true;
}

size_t EchoWindow::size() const {
  std::lock_guard lk(mu_);
  return order_.size();
}

// ---- Router ---------------------------------------------------------------------------

Router::Router(Registry& registry, size_t dead_letter_capacity)
    : registry_(registry),
      dead_letters_(dead_letter_capacity),
      endpoints_(std::make_shared<EndpointList>()),
      routes_(std::make_shared<std::vector<RouteRule>>()) {}

Router::~Router() = default;

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

bool Router::acquire(RouterEndpoint& ep, const std::string& filter) {
  uint64_t id;
  {
    std::lock_guard lk(subs_mu_);
    auto key = std::make_pair(ep.name, filter);
    auto it = subs_.find(key);
    if (it != subs_.end()) {
      it->second.refs++;
      return true;
    }
    id = next_sub_id_++;
    subs_[key] = Sub{id, 1};
  }
  bool ok = ep.out->subscribe(filter, id);
  if (!ok) {
    counters_.subscribe_timeouts++;
    spdlog::warn("endpoint {}: subscription to '{}' not confirmed in time; continuing", ep.name, filter);
  }
  return ok;
}

void Router::release(const std::string& endpoint, const std::string& filter) {
  uint64_t id = 0;
  {
    std::lock_guard lk(subs_mu_);
    auto it = subs_.find({endpoint, filter});
    if (it == subs_.end()) return;
    if (--it->second.refs > 0) return;
    id = it->second.id;
    subs_.erase(it);
  }
  auto eps = endpoints();
  if (auto ep = find(*eps, endpoint)) ep->out->unsubscribe(id);
}

void Router::subscribeBase() {
  auto eps = endpoints();
  for (auto& e : *eps)
    if (e->role == Role::Orchestrator || (e->role == Role::Fins && !e->sessions)) acquire(*e, kSoarca);
  std::shared_ptr<const std::vector<RouteRule>> routes;
  {
    std::lock_guard lk(config_mu_);
    routes = routes_;
  }
  for (auto& r : *routes)
    if (auto e = find(*eps, r.from_endpoint)) acquire(*e, r.from_filter);
  for (auto& b : registry_.snapshot()) subscribeBinding(*eps, b);
}

bool Router::subscribeBinding(const EndpointList& eps, const FinBinding& b) {
  bool all_ok = true;
  auto topics = Registry::topicsOf(b);
  for (auto& e : eps) {
    bool here = e->role == Role::Orchestrator || (e->name == b.endpoint && !e->sessions);
    if (!here) continue;
    for (auto& t : topics) all_ok &= acquire(*e, t);
  }
  return all_ok;
}

void Router::unsubscribeTopics(const EndpointList& eps, const std::string& fins_endpoint,
                               const std::vector<std::string>& topics) {
  for (auto& e : eps) {
    bool here = e->role == Role::Orchestrator || (e->name == fins_endpoint && !e->sessions);
    if (!here) continue;
    for (auto& t : topics) release(e->name, t);
  }
}

void Router::unsubscribeBindings(const std::vector<FinBinding>& removed) {
  if (removed.empty()) return;
  auto eps = endpoints();
  for (auto& b : removed) unsubscribeTopics(*eps, b.endpoint, Registry::topicsOf(b));
}

void Router::send(RouterEndpoint& dst, OutMessage&& m, const std::string& src_name) {
  if (!dst.sessions && !dst.no_local.load(std::memory_order_relaxed)) echo_.record(dst.name, m.topic, m.payload);
  std::string topic = m.topic;
  std::string payload_copy;
  if (!dst.out->send(std::move(m))) {
    Envelope e;
    e.topic = topic;
    deadLetter(src_name, e, "queue_full", "outbound queue of endpoint " + dst.name + " stayed full");
    return;
  }
  counters_.routed.fetch_add(1, std::memory_order_relaxed);
}

void Router::sendTo(const EndpointList& eps, const std::string& dst, OutMessage&& m, const std::string& src_name) {
  auto ep = find(eps, dst);
  if (!ep) {
    Envelope e;
    e.topic = m.topic;
    e.assignPayload(m.payload);
    deadLetter(src_name, e, "no_endpoint", "target endpoint '" + dst + "' does not exist");
    return;
  }
  send(*ep, std::move(m), src_name);
}

void Router::deadLetter(const std::string& src, const Envelope& m, const std::string& reason,
                        const std::string& detail) {
  DeadLetter d;
  d.time_ms = nowMs();
  d.endpoint = src;
  d.topic = m.topic;
  d.session = m.session;
  d.reason = reason;
  d.detail = detail;
  d.payload_bytes = m.payload.size();
  d.payload = m.payload.substr(0, kDeadLetterPayloadMax);
  if (logAllowed(reason + src))
    spdlog::warn("dead letter from {} topic '{}': {} ({})", src, m.topic, reason, detail);
  dead_letters_.add(std::move(d));
}

void Router::reject(RouterEndpoint& src, const Envelope& m, const std::string& reason, const std::string& detail,
                    const fin::Routing* r, const std::string& nack_topic) {
  deadLetter(src.name, m, reason, detail);
  if (r && r->message_id_readable && r->type != fin::MsgType::Nack && r->type != fin::MsgType::Ack) {
    OutMessage o;
    o.topic = nack_topic.empty() ? m.topic : nack_topic;
    o.payload = fin::makeNack(r->message_id);
    o.session = m.session;
    counters_.nacks_sent++;
    send(src, std::move(o), src.name);
  }
}

void Router::route(const std::string& src_name, Envelope&& m) {
  try {
    auto eps = endpoints();
    auto src = find(*eps, src_name);
    if (!src) return;
    if (!src->sessions && !src->no_local.load(std::memory_order_relaxed) &&
        echo_.consume(src->name, m.topic, m.payload)) {
      counters_.echoes_suppressed++;
      return;
    }
    Outcome o = Outcome::NotFinTraffic;
    if (src->role == Role::Fins || src->role == Role::Orchestrator) {
      std::optional<FinBinding> owner;
      if (const fin::ParseResult* parsed = finTraffic(*src, m, owner, o))
        o = src->role == Role::Fins ? fromFins(*eps, *src, m, *parsed, owner)
                                    : fromOrchestrator(*eps, *src, m, *parsed, owner);
    }
    if (o == Outcome::Done) return;
    if (!routeStatic(*eps, *src, m))
      deadLetter(src->name, m, "unroutable", "no binding or route for this topic");
  } catch (const std::exception& e) {
    spdlog::error("router: unexpected error routing from {}: {}", src_name, e.what());
  }
}

bool Router::routeStatic(const EndpointList& eps, RouterEndpoint& src, const Envelope& m) {
  std::shared_ptr<const std::vector<RouteRule>> routes;
  {
    std::lock_guard lk(config_mu_);
    routes = routes_;
  }
  bool any = false;
  for (auto& r : *routes) {
    if (r.from_endpoint != src.name || !topicMatches(r.from_filter, m.topic)) continue;
    any = true;
    std::string t = expandTopicTemplate(r.to_template, m.topic);
    sendTo(eps, r.to_endpoint, copyOut(m, std::move(t), 0), src.name);
  }
  return any;
}

const fin::ParseResult* Router::finTraffic(RouterEndpoint& src, Envelope& m, std::optional<FinBinding>& owner,
                                           Outcome& outcome) {
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

Router::Outcome Router::fromFins(const EndpointList& eps, RouterEndpoint& src, Envelope& m,
                                 const fin::ParseResult& parsed, const std::optional<FinBinding>& owner) {
  const bool is_soarca = m.topic == kSoarca;
  if (is_soarca) {
    if (parsed.msg.type == fin::MsgType::Register) {
      handleRegister(eps, src, m, parsed.msg);
      return Outcome::Done;
    }
    // Anything else a fin says on `soarca` (e.g. the ack of an unregister) goes to SOARCA.
    bool any = false;
    for (auto& e : eps)
      if (e->role == Role::Orchestrator) {
        send(*e, copyOut(m, m.topic, 0), src.name);
        any = true;
      }
    if (!any) deadLetter(src.name, m, "no_orchestrator", "no orchestrator endpoint is configured");
    return Outcome::Done;
  }
  // A fin topic: only its owner may speak there.
  if (owner->endpoint != src.name || (!owner->restored && src.sessions && owner->session != m.session)) {
    reject(src, m, "foreign_topic", "topic '" + m.topic + "' is bound to another fin session", &parsed.msg);
    return Outcome::Done;
  }
  bool any = false;
  for (auto& e : eps)
    if (e->role == Role::Orchestrator) {
      send(*e, copyOut(m, m.topic, 0), src.name);
      any = true;
    }
  if (!any) deadLetter(src.name, m, "no_orchestrator", "no orchestrator endpoint is configured");
  return Outcome::Done;
}

void Router::handleRegister(const EndpointList& eps, RouterEndpoint& src, Envelope& m, const fin::Routing& r) {
  counters_.registers++;
  std::string bad = fin::validateId(r.fin_id);
  if (!bad.empty()) {
    reject(src, m, "invalid_id", "fin_id: " + bad, &r, kSoarca);
    return;
  }
  for (auto& c : r.capability_ids) {
    bad = fin::validateId(c);
    if (!bad.empty()) {
      reject(src, m, "invalid_id", "capability_id '" + c.substr(0, 64) + "': " + bad, &r, r.fin_id);
      return;
    }
  }
  FinBinding b;
  b.fin_id = r.fin_id;
  b.endpoint = src.name;
  b.session = src.sessions ? m.session : 0;
  b.capabilities = r.capability_ids;
  b.registered_at = nowMs() / 1000;
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
  std::string conflict = registry_.ownerConflict(b);
  if (!conflict.empty()) {
    reject(src, m, "capability_conflict", "'" + conflict + "' is bound to another live fin session", &r, r.fin_id);
    return;
  }
  bool has_orchestrator = std::any_of(eps.begin(), eps.end(), [](auto& e) { return e->role == Role::Orchestrator; });
  if (!has_orchestrator) {
    deadLetter(src.name, m, "no_orchestrator", "no orchestrator endpoint is configured");
    return;
  }
  // Bind, subscribe everywhere the answers will come from, and only then forward.
  auto prev = registry_.lookup(r.fin_id);
  auto gone = registry_.bind(b);
  if (!gone.empty()) unsubscribeTopics(eps, prev ? prev->endpoint : b.endpoint, gone);
  if (!prev) subscribeBinding(eps, b);
  else {
    // Re-register: acquire only what the previous binding did not already hold.
    FinBinding delta = b;
    auto old_topics = Registry::topicsOf(*prev);
    delta.capabilities.clear();
    for (auto& c : b.capabilities)
      if (std::find(old_topics.begin(), old_topics.end(), c) == old_topics.end()) delta.capabilities.push_back(c);
    if (prev->endpoint != b.endpoint) subscribeBinding(eps, b);
    else if (!delta.capabilities.empty()) {
      for (auto& e : eps) {
        bool here = e->role == Role::Orchestrator || (e->name == b.endpoint && !e->sessions);
        if (here)
          for (auto& c : delta.capabilities) acquire(*e, c);
      }
    }
  }
  for (auto& e : eps)
    if (e->role == Role::Orchestrator) send(*e, copyOut(m, kSoarca, 0), src.name);
}

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
                                         const fin::ParseResult& parsed, const std::optional<FinBinding>& owner) {
  const bool is_soarca = m.topic == kSoarca;
  const fin::Routing& r = parsed.msg;
  if (is_soarca) {
    // A register on the orchestrator's side is a fin living there, talking to SOARCA directly:
    // none of the gateway's fins needs it.
    if (r.type == fin::MsgType::Register) return Outcome::Done;
    if (r.type == fin::MsgType::Unregister) applyUnregister(r);
    bool any = false;
    for (auto& e : eps)
      if (e->role == Role::Fins) {
        send(*e, copyOut(m, m.topic, 0), src.name);
        any = true;
      }
    if (!any) deadLetter(src.name, m, "no_fins", "no fins endpoint is configured");
    return Outcome::Done;
  }
  uint64_t session = owner->restored ? 0 : owner->session;
  bool register_answer = m.topic == owner->fin_id && (r.type == fin::MsgType::Ack || r.type == fin::MsgType::Nack);
  if (register_answer && takeReplayed(r.message_id)) {
    // SOARCA's answer to a register the gateway replayed: the fin never asked, so it never hears it.
    counters_.replay_replies_swallowed++;
    if (r.type == fin::MsgType::Ack) registry_.commit(owner->fin_id, r.message_id);
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
      OutMessage o = copyOut(m, m.topic, session);
      o.payload = fin::makeAck(r.message_id);
      sendTo(eps, owner->endpoint, std::move(o), src.name);
      return Outcome::Done;
    } else {
      sendTo(eps, owner->endpoint, copyOut(m, m.topic, session), src.name);
      if (auto undone = registry_.undo(owner->fin_id, r.message_id)) unsubscribeBindings({*undone});
      return Outcome::Done;
    }
  }
  // To the fin that owns the topic, on its own session.
  OutMessage out = copyOut(m, m.topic, session);
  if (r.type == fin::MsgType::Command) {
    auto dst = find(eps, owner->endpoint);
    fin::RepairStats st;
    std::string repaired;
    if (dst && dst->compat_python_fin && fin::repairCommandForPythonFin(m.payload, repaired, st)) {
      out.payload = std::move(repaired);
      counters_.compat_auth_removed += static_cast<uint64_t>(st.auth_removed);
      counters_.compat_variables_completed += static_cast<uint64_t>(st.variables_completed);
    }
  }
  sendTo(eps, owner->endpoint, std::move(out), src.name);
  return Outcome::Done;
}

bool Router::takeReplayed(const std::string& message_id) {
  std::lock_guard lk(replay_mu_);
  int64_t now = steadyMs();
  for (auto it = replayed_.begin(); it != replayed_.end();) {
    if (it->second < now) it = replayed_.erase(it);
    else ++it;
  }
  return replayed_.erase(message_id) != 0;
}

void Router::replayRegisters(const std::string& orchestrator) {
  auto eps = endpoints();
  auto bindings = registry_.snapshot();
  if (bindings.empty()) return;
  size_t n = 0;
  for (auto& b : bindings) {
    if (b.register_payload.empty() || b.register_message_id.empty()) continue;
    for (auto& e : *eps) {
      if (e->role != Role::Orchestrator || (!orchestrator.empty() && e->name != orchestrator)) continue;
      {
        std::lock_guard lk(replay_mu_);
        replayed_[b.register_message_id] = steadyMs() + 60000;
      }
      OutMessage o;
      o.topic = kSoarca;
      o.payload = b.register_payload;
      send(*e, std::move(o), e->name);
      counters_.registers_replayed++;
      ++n;
    }
  }
  if (n) spdlog::info("replayed {} stored register(s) to {}", n, orchestrator.empty() ? "the orchestrators" : orchestrator);
}

void Router::sessionClosed(const std::string& endpoint, uint64_t session) {
  unsubscribeBindings(registry_.removeSession(endpoint, session));
}

void Router::endpointRemoved(const std::string& endpoint) {
  unsubscribeBindings(registry_.removeEndpoint(endpoint));
  std::lock_guard lk(subs_mu_);
  for (auto it = subs_.begin(); it != subs_.end();) {
    if (it->first.first == endpoint) it = subs_.erase(it);
    else ++it;
  }
}

fg_status Router::authorizeSubscribe(const std::string& endpoint, uint64_t session, const std::string& filter,
                                     std::string& reason) {
  auto eps = endpoints();
  auto ep = find(*eps, endpoint);
  if (!ep || ep->role != Role::Fins) return FG_OK;
  if (hasWildcard(filter)) {
    reason = "wildcard subscriptions are not allowed on a fins endpoint";
    return FG_ERR_STATE;
  }
  if (auto owner = registry_.lookup(filter)) {
    if (!owner->restored && (owner->endpoint != endpoint || owner->session != session)) {
      reason = "'" + filter + "' is bound to another fin session";
      return FG_ERR_STATE;
    }
  }
  return FG_OK;
}

}  // namespace fingate
