#include "endpoint.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <fingate/clock.hpp>

namespace fingate {

namespace {
// Set on lane threads: only they publish directly (a plugin thread reporting a delivery never
// calls back into a plugin's publish; what it sends goes through the queues).
thread_local bool t_on_lane = false;
}  // namespace

Endpoint::Endpoint(const EndpointConfig& cfg, std::shared_ptr<PluginLibrary> lib, Router& router,
                   const EndpointOptions& opts)
    : cfg_(cfg), router_(router), opts_(opts), inbound_(opts.queue_capacity) {
  caps_ = lib->capabilities();
  no_local_ = (caps_ & FG_CAP_NO_LOCAL) != 0;
  std::vector<std::pair<std::string, std::string>> kv;
  for (auto& o : cfg.options) kv.emplace_back(o.key, o.value);
  instance_ = std::make_unique<PluginInstance>(std::move(lib), *this, kv);
  plugin_acks_ = instance_->hasAck();
}

Endpoint::~Endpoint() { stop(1000); }

void Endpoint::markCurrentThreadAsLane() { t_on_lane = true; }

std::shared_ptr<RouterEndpoint> Endpoint::routerEndpoint() {
  auto r = std::make_shared<RouterEndpoint>();
  r->name = cfg_.name;
  r->role = cfg_.role;
  r->out = this;
  r->sessions = (caps_ & FG_CAP_SESSIONS) != 0;
  r->subscribe_ack = (caps_ & FG_CAP_SUBSCRIBE_ACK) != 0;
  r->compat_python_fin = cfg_.compat == "python-fin";
  r->owner = shared_from_this();
  return r;
}

std::string Endpoint::stateDetail() const {
  std::lock_guard lk(detail_mu_);
  return detail_;
}

size_t Endpoint::outboundDepth() const {
  std::lock_guard lk(publish_mu_);
  size_t n = outbound_.size();
  for (auto& [id, s] : sessions_) n += s.q.size();
  return n;
}

size_t Endpoint::sessionQueues() const {
  std::lock_guard lk(publish_mu_);
  return sessions_.size();
}

void Endpoint::start() {
  if (started_.exchange(true)) return;
  state_ = FG_STATE_STARTING;
  lane_ = std::thread([this] { laneLoop(); });
  dispatcher_ = std::thread([this] { dispatchLoop(); });
  fg_status st = instance_->start();
  if (st != FG_OK) {
    std::string why = stateDetail();
    throw PluginError("endpoint " + cfg_.name + ": plugin " + instance_->library().name() + " failed to start (" +
                      statusName(st) + (why.empty() ? "" : ": " + why) + ")");
  }
}

void Endpoint::requestReplay() {
  if (cfg_.role != Role::Orchestrator || stopping_.load()) return;
  // What is bound now: a register bound later (before the lane gets to this) was forwarded
  // live and must not reach the orchestrator twice.
  inbound_.pushControl(InItem(Replay{router_.boundRegisterIds()}));
}

void Endpoint::post(std::function<void()> fn) {
  if (stopping_.load()) return;
  inbound_.pushControl(InItem(Task{std::move(fn)}));
}

bool Endpoint::drain(std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  if (!inbound_.drain(timeout)) return false;
  while (true) {
    bool empty;
    {
      std::lock_guard lk(publish_mu_);
      empty = outbound_.empty() && !dispatching_ && sessions_.empty();
    }
    if (empty) {
      std::lock_guard lk(inflight_mu_);
      empty = inflight_.empty();
    }
    if (empty) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void Endpoint::stop(uint32_t timeout_ms) {
  if (!started_.load() || stopping_.exchange(true)) return;
  instance_->stop(timeout_ms);
  inbound_.close();
  dispatch_cv_.notify_all();
  if (lane_.joinable()) lane_.join();
  if (dispatcher_.joinable()) dispatcher_.join();
  // What is still queued or in flight will not be delivered by this instance any more.
  std::deque<OutMessage> left;
  {
    std::lock_guard lk(publish_mu_);
    left.swap(outbound_);
    for (auto& [id, s] : sessions_)
      for (auto& m : s.q) left.push_back(std::move(m));
    sessions_.clear();
  }
  {
    std::lock_guard lk(inflight_mu_);
    inflight_.drain([&](OutMessage&& m) { left.push_back(std::move(m)); });
  }
  for (auto& m : left) failed(std::move(m), "endpoint_stopped", "endpoint " + cfg_.name + " stopped before delivery");
  while (auto item = inbound_.tryPop()) {
    // Inbound messages not routed: their sources learn it (tracked ones as dead-lettered).
    if (auto* env = std::get_if<Envelope>(&*item))
      router_.deadLetter(cfg_.name, *env, "endpoint_stopped", "endpoint stopped before routing",
                         FG_OUTCOME_DEAD_LETTERED);
  }
  state_ = FG_STATE_STOPPED;
  stopped_ = true;
}

void Endpoint::laneLoop() {
  t_on_lane = true;
  // Housekeeping (late confirmations, restored-binding backlogs) about every 100 ms, whether the
  // lane is idle or busy: a lane that never empties must still time its parked registers out.
  auto next_tick = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
  while (true) {
    auto item = inbound_.popFor(std::chrono::milliseconds(100));
    if (auto now = std::chrono::steady_clock::now(); now >= next_tick) {
      router_.tick(cfg_.name);
      next_tick = now + std::chrono::milliseconds(100);
    }
    if (!item) {
      if (inbound_.closed()) return;
      continue;
    }
    if (auto* env = std::get_if<Envelope>(&*item)) {
      router_.route(cfg_.name, std::move(*env));
    } else if (auto* sc = std::get_if<SessionClosed>(&*item)) {
      dropSession(sc->session, "session closed");
      router_.sessionClosed(cfg_.name, sc->session);
    } else if (auto* t = std::get_if<Task>(&*item)) {
      t->fn();
    } else if (auto* r = std::get_if<Replay>(&*item)) {
      router_.replayRegisters(cfg_.name, &r->register_ids);
    }
    inbound_.done();
  }
}

void Endpoint::recordLatency(int64_t ingress_ns) {
  if (!ingress_ns) return;
  double s = static_cast<double>(steadyNs() - ingress_ns) / 1e9;
  size_t i = 0;
  while (i < kLatencyBuckets.size() && s > kLatencyBuckets[i]) ++i;
  stats_.latency[i].fetch_add(1, std::memory_order_relaxed);
  stats_.latency_count.fetch_add(1, std::memory_order_relaxed);
  double cur = stats_.latency_sum.load(std::memory_order_relaxed);
  while (!stats_.latency_sum.compare_exchange_weak(cur, cur + s, std::memory_order_relaxed)) {
  }
}

fg_status Endpoint::publishOnce(OutMessage& m) {
  const uint64_t id = next_delivery_.fetch_add(1, std::memory_order_relaxed);
  const int64_t ingress = m.ingress_ns;
  // With FG_CAP_DELIVERY the copy goes into the in-flight map first (on_delivery may come from
  // a plugin thread before publish returns) and is published from there.
  OutMessage* src = &m;
  if (tracksDelivery()) {
    std::lock_guard lk(inflight_mu_);
    src = inflight_.put(id, std::move(m));
  }
  fg_header hs_small[4];
  std::vector<fg_header> hs_big;
  fg_header* hs = hs_small;
  if (src->headers.size() > 4) {
    hs_big.resize(src->headers.size());
    hs = hs_big.data();
  }
  for (size_t i = 0; i < src->headers.size(); ++i)
    hs[i] = fg_header{{src->headers[i].first.data(), src->headers[i].first.size()},
                      {src->headers[i].second.data(), src->headers[i].second.size()}};
  fg_message cm{{src->topic.data(), src->topic.size()},
                {src->payload.data(), src->payload.size()},
                src->headers.empty() ? nullptr : hs,
                src->headers.size(),
                src->timestamp_ms,
                src->session};
  fg_status st = instance_->publish(cm, tracksDelivery() ? id : 0);
  if (tracksDelivery()) {
    if (st != FG_OK) {  // refused: the plugin reports nothing for it; take it back
      std::lock_guard lk(inflight_mu_);
      inflight_.take(id, m);
    }
  } else if (st == FG_OK) {
    stats_.delivered.fetch_add(1, std::memory_order_relaxed);
    m.settle(FG_OUTCOME_DELIVERED);
  }
  if (st == FG_OK) {
    stats_.out.fetch_add(1, std::memory_order_relaxed);
    recordLatency(ingress);
  }
  return st;
}

bool Endpoint::retryable(fg_status st) const {
  return (st == FG_RETRY || st == FG_ERR_UNAVAILABLE) && !stopping_.load();
}

void Endpoint::failed(OutMessage&& m, const std::string& reason, const std::string& detail) {
  stats_.publish_errors.fetch_add(1, std::memory_order_relaxed);
  router_.deliveryFailed(cfg_.name, std::move(m), reason, detail);
}

void Endpoint::dispatchLoop() {
  std::unique_lock lk(publish_mu_);
  uint32_t backoff_ms = 1;
  while (!stopping_.load()) {
    if (!outbound_.empty()) {
      OutMessage m = std::move(outbound_.front());
      outbound_.pop_front();
      dispatching_ = true;
      fg_status st = publishOnce(m);
      if (st == FG_OK) {
        backoff_ms = 1;
      } else if (retryable(st)) {
        // Keep it first in line and wait a little (or until something changes).
        outbound_.push_front(std::move(m));
        dispatching_ = false;
        stats_.backpressure.fetch_add(1, std::memory_order_relaxed);
        dispatch_cv_.wait_for(lk, std::chrono::milliseconds(backoff_ms));
        backoff_ms = std::min<uint32_t>(backoff_ms * 2, 100);
        continue;
      } else {
        lk.unlock();
        failed(std::move(m), "publish_failed", std::string("plugin refused the publish: ") + statusName(st));
        lk.lock();
      }
      dispatching_ = false;
      continue;
    }
    if (!sessions_.empty()) {
      lk.unlock();
      serviceSessions();
      lk.lock();
    }
    if (!sessions_writable_ && outbound_.empty())
      dispatch_cv_.wait_for(lk, std::chrono::milliseconds(sessions_.empty() ? 200 : 10));
  }
}

// ---- per-session queues ------------------------------------------------------------------

void Endpoint::sendSession(OutMessage&& m) {
  std::unique_lock lk(publish_mu_);
  auto it = sessions_.find(m.session);
  if (it == sessions_.end()) {
    fg_status st = publishOnce(m);
    if (st == FG_OK) return;
    if (st != FG_RETRY || stopping_.load()) {
      lk.unlock();
      failed(std::move(m), st == FG_ERR_STATE ? "session_closed" : "publish_failed",
             std::string("session ") + std::to_string(m.session) + ": " + statusName(st));
      return;
    }
    stats_.session_retries.fetch_add(1, std::memory_order_relaxed);
    it = sessions_.emplace(m.session, SessionQueue{}).first;
  }
  SessionQueue& s = it->second;
  if (s.q.size() >= opts_.limits.session_queue_messages ||
      s.bytes + m.payload.size() > opts_.limits.session_queue_bytes) {
    if (!s.full_since_ms) s.full_since_ms = steadyMs();
    router_.limitHit("session_queue");
    uint64_t session = m.session;
    lk.unlock();
    failed(std::move(m), "session_queue_full",
           "session " + std::to_string(session) + " is not reading: its queue of " +
               std::to_string(opts_.limits.session_queue_messages) + " messages / " +
               std::to_string(opts_.limits.session_queue_bytes) + " bytes is full");
    dispatch_cv_.notify_one();
    return;
  }
  s.bytes += m.payload.size();
  s.q.push_back(std::move(m));
  dispatch_cv_.notify_one();
}

void Endpoint::serviceSessions() {
  std::vector<std::pair<uint64_t, std::deque<OutMessage>>> to_close;
  std::vector<std::pair<OutMessage, fg_status>> refused;
  {
    std::unique_lock lk(publish_mu_);
    sessions_writable_ = false;
    const int64_t now = steadyMs();
    // Every waiting session is offered its queue: on FG_EVENT_SESSION_WRITABLE, and every 10 ms
    // (1.0 plugins never send the event; a blocked session just answers FG_RETRY again).
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      SessionQueue& s = it->second;
      while (!s.q.empty()) {
        OutMessage& m = s.q.front();
        size_t n = m.payload.size();
        fg_status st = publishOnce(m);
        if (st == FG_RETRY) break;
        if (st != FG_OK) refused.emplace_back(std::move(m), st);
        s.bytes -= std::min(s.bytes, n);
        s.q.pop_front();
        s.full_since_ms = 0;
      }
      if (s.q.empty()) {
        it = sessions_.erase(it);
        continue;
      }
      bool full = s.q.size() >= opts_.limits.session_queue_messages || s.bytes >= opts_.limits.session_queue_bytes;
      if (full && !s.full_since_ms) s.full_since_ms = now;
      if (s.full_since_ms && now - s.full_since_ms >= static_cast<int64_t>(opts_.limits.slow_consumer_grace_ms)) {
        to_close.emplace_back(it->first, std::move(s.q));
        it = sessions_.erase(it);
        continue;
      }
      ++it;
    }
  }
  for (auto& [m, st] : refused)
    failed(std::move(m), st == FG_ERR_STATE ? "session_closed" : "publish_failed",
           std::string("session ") + std::to_string(m.session) + ": " + statusName(st));
  for (auto& [session, q] : to_close) {
    stats_.slow_consumers.fetch_add(1, std::memory_order_relaxed);
    std::string why = "slow consumer: queue full for " + std::to_string(opts_.limits.slow_consumer_grace_ms) + " ms";
    spdlog::warn("endpoint {}: closing session {}: {} ({} message(s) dead-lettered)", cfg_.name, session, why,
                 q.size());
    instance_->closeSession(session, why.c_str());
    for (auto& m : q) failed(std::move(m), "slow_consumer", "session " + std::to_string(session) + " closed: " + why);
  }
}

void Endpoint::dropSession(uint64_t session, const std::string& reason) {
  std::deque<OutMessage> q;
  {
    std::lock_guard lk(publish_mu_);
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return;
    q.swap(it->second.q);
    sessions_.erase(it);
  }
  for (auto& m : q) failed(std::move(m), "session_closed", "session " + std::to_string(session) + ": " + reason);
}

// ---- PluginHost ------------------------------------------------------------------------

void Endpoint::log(fg_log_level level, std::string_view msg) {
  auto lvl = level <= FG_LOG_TRACE   ? spdlog::level::trace
             : level == FG_LOG_DEBUG ? spdlog::level::debug
             : level == FG_LOG_INFO  ? spdlog::level::info
             : level == FG_LOG_WARN  ? spdlog::level::warn
                                     : spdlog::level::err;
  spdlog::log(lvl, "endpoint {} ({}): {}", cfg_.name, cfg_.plugin, msg);
}

fg_status Endpoint::onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) {
  if (stopping_.load()) return FG_ERR_STATE;
  InItem item(Envelope::fromC(msg, sub_id));
  Envelope& e = std::get<Envelope>(item);
  e.ingress_ns = steadyNs();
  if (token && plugin_acks_) e.tracker = std::make_shared<Tracker>(shared_from_this(), token);
  if (!inbound_.pushOrKeep(item)) {
    // Lost the race for the last slot: the plugin keeps the message, so its token is not ours.
    if (auto& t = std::get<Envelope>(item).tracker) t->disarm();
    stats_.backpressure.fetch_add(1, std::memory_order_relaxed);
    return FG_RETRY;
  }
  stats_.in.fetch_add(1, std::memory_order_relaxed);
  return FG_OK;
}

void Endpoint::outcome(uint64_t token, fg_outcome o) {
  if (o >= 0 && o < 4) stats_.outcomes[static_cast<size_t>(o)].fetch_add(1, std::memory_order_relaxed);
  if (!stopped_.load()) instance_->ack(token, o);
}

void Endpoint::onDelivery(uint64_t delivery_id, fg_delivery status) {
  OutMessage m;
  {
    std::lock_guard lk(inflight_mu_);
    if (!inflight_.take(delivery_id, m)) return;  // unknown or already reported
  }
  if (status == FG_DELIVERY_OK) {
    stats_.delivered.fetch_add(1, std::memory_order_relaxed);
    m.settle(FG_OUTCOME_DELIVERED);
    return;
  }
  if (status == FG_DELIVERY_NO_RECEIVER) {
    stats_.no_receiver.fetch_add(1, std::memory_order_relaxed);
    failed(std::move(m), "no_receiver", "no subscriber or session of endpoint " + cfg_.name + " took it");
    return;
  }
  stats_.delivery_failed.fetch_add(1, std::memory_order_relaxed);
  failed(std::move(m), "delivery_failed", "endpoint " + cfg_.name + " reported the delivery failed");
}

void Endpoint::onEvent(const fg_event& ev) {
  switch (ev.kind) {
    case FG_EVENT_SUBSCRIPTION:
      router_.subscriptionSettled(cfg_.name, ev.sub_id, ev.status, ev.detail ? ev.detail : "");
      break;
    case FG_EVENT_CONNECTION:
      conn_facts_ = true;
      no_local_ = (caps_ & FG_CAP_NO_LOCAL) || (ev.flags & FG_CONN_NO_LOCAL);
      break;
    case FG_EVENT_SESSION_WRITABLE: {
      std::lock_guard lk(publish_mu_);
      if (!sessions_.count(ev.session)) break;
      sessions_writable_ = true;
      dispatch_cv_.notify_one();
      break;
    }
    default:
      break;
  }
}

void Endpoint::onState(fg_state state, std::string_view detail) {
  if (state == FG_STATE_SUBSCRIBED) {  // ABI 1.0: a confirmation, the id as decimal text
    uint64_t id = 0;
    for (char c : detail)
      if (c >= '0' && c <= '9') id = id * 10 + static_cast<uint64_t>(c - '0');
    router_.subscriptionSettled(cfg_.name, id, FG_OK, "");
    return;
  }
  fg_state prev = state_.exchange(state);
  {
    std::lock_guard lk(detail_mu_);
    detail_ = std::string(detail);
  }
  if ((state == FG_STATE_UP || state == FG_STATE_RECONNECTED) && !conn_facts_.load() && !(caps_ & FG_CAP_NO_LOCAL)) {
    // ABI 1.0 transports whose no-local depends on the connection said so in the text.
    no_local_ = detail.find("no-local") != std::string_view::npos;
  }
  if (state == FG_STATE_RECONNECTED) stats_.reconnects.fetch_add(1, std::memory_order_relaxed);
  // SOARCA forgets every fin when it restarts: whenever its side (re)connects, tell it again.
  if ((state == FG_STATE_UP && prev != FG_STATE_UP) || state == FG_STATE_RECONNECTED) requestReplay();
  std::string suffix = detail.empty() ? "" : " (" + std::string(detail) + ")";
  if (state == FG_STATE_FAILED || state == FG_STATE_DOWN)
    spdlog::warn("endpoint {}: {}{}", cfg_.name, stateName(state), suffix);
  else if (state != prev || state == FG_STATE_UP)
    spdlog::info("endpoint {}: {}{}", cfg_.name, stateName(state), suffix);
}

void Endpoint::onSession(uint64_t session, fg_session_event event) {
  if (event == FG_SESSION_OPENED) {
    stats_.sessions_opened.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  stats_.sessions_closed.fetch_add(1, std::memory_order_relaxed);
  // Through the lane, so it takes effect after everything the session sent before closing.
  // A control item: never refused for room, so the plugin thread never waits here.
  if (!stopping_.load()) inbound_.pushControl(InItem(SessionClosed{session}));
}

fg_status Endpoint::authorizeSubscribe(uint64_t session, std::string_view filter, std::string& reason) {
  return router_.authorizeSubscribe(cfg_.name, session, std::string(filter), reason);
}

// ---- RouterOutput ----------------------------------------------------------------------

void Endpoint::send(OutMessage&& m) {
  if (stopping_.load()) {
    failed(std::move(m), "endpoint_stopped", "endpoint " + cfg_.name + " is stopping");
    return;
  }
  if (m.session != 0 && (caps_ & FG_CAP_SESSIONS)) {
    sendSession(std::move(m));
    return;
  }
  std::unique_lock lk(publish_mu_);
  // Nothing queued and the dispatcher idle: hand it to the plugin here (plugin publish never
  // blocks) and save two thread hand-offs. Order holds: a lane publishes directly only when
  // everything queued before has been published. Only lanes do this; plugin threads queue.
  if (t_on_lane && outbound_.empty() && !dispatching_) {
    fg_status st = publishOnce(m);
    if (st == FG_OK) return;
    if (!retryable(st)) {
      lk.unlock();
      failed(std::move(m), "publish_failed", std::string("plugin refused the publish: ") + statusName(st));
      return;
    }
  }
  if (outbound_.size() >= opts_.queue_capacity) {
    lk.unlock();
    router_.limitHit("outbound_queue");
    failed(std::move(m), "queue_full",
           "outbound queue of endpoint " + cfg_.name + " is full (" + std::to_string(opts_.queue_capacity) + ")");
    return;
  }
  outbound_.push_back(std::move(m));
  lk.unlock();
  dispatch_cv_.notify_one();
}

fg_status Endpoint::subscribe(const std::string& filter, uint64_t sub_id) {
  std::lock_guard lk(sub_mu_);
  fg_status st = instance_->subscribe(filter, sub_id);
  if (st != FG_OK) spdlog::warn("endpoint {}: subscribe '{}' failed: {}", cfg_.name, filter, statusName(st));
  return st;
}

void Endpoint::unsubscribe(uint64_t sub_id) {
  std::lock_guard lk(sub_mu_);
  instance_->unsubscribe(sub_id);
}

}  // namespace fingate
