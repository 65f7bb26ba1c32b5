#include "endpoint.hpp"

#include <spdlog/spdlog.h>

#include <chrono>

namespace fingate {

namespace {
int64_t steadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
const char* stateName(fg_state s) {
  switch (s) {
    case FG_STATE_STARTING: return "starting";
    case FG_STATE_UP: return "up";
    case FG_STATE_DOWN: return "down";
    case FG_STATE_FAILED: return "failed";
    case FG_STATE_STOPPED: return "stopped";
    case FG_STATE_SUBSCRIBED: return "subscribed";
    case FG_STATE_RECONNECTED: return "reconnected";
    default: return "unknown";
  }
}
}  // namespace

Endpoint::Endpoint(const EndpointConfig& cfg, std::shared_ptr<PluginLibrary> lib, Router& router,
                   const EndpointOptions& opts)
    : cfg_(cfg), router_(router), opts_(opts), inbound_(opts.queue_capacity), outbound_(opts.queue_capacity) {
  rep_ = std::make_shared<RouterEndpoint>();
  rep_->name = cfg.name;
  rep_->role = cfg.role;
  rep_->out = this;
  rep_->sessions = (lib->capabilities() & FG_CAP_SESSIONS) != 0;
  rep_->no_local = (lib->capabilities() & FG_CAP_NO_LOCAL) != 0;
  rep_->compat_python_fin = cfg.compat == "python-fin";
  std::vector<std::pair<std::string, std::string>> kv;
  for (auto& o : cfg.options) kv.emplace_back(o.key, o.value);
  instance_ = std::make_unique<PluginInstance>(std::move(lib), *this, kv);
}

Endpoint::~Endpoint() { stop(1000); }

std::string Endpoint::stateDetail() const {
  std::lock_guard lk(detail_mu_);
  return detail_;
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
  if (!inbound_.push(InItem(Replay{}), std::chrono::milliseconds(100)))
    spdlog::warn("endpoint {}: register replay skipped: inbound queue full", cfg_.name);
}

bool Endpoint::drain(std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  bool a = inbound_.drain(timeout);
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
  bool b = outbound_.drain(std::max(left, std::chrono::milliseconds(1)));
  return a && b;
}

void Endpoint::stop(uint32_t timeout_ms) {
  if (!started_.load() || stopping_.exchange(true)) return;
  instance_->stop(timeout_ms);
  inbound_.close();
  outbound_.close();
  if (lane_.joinable()) lane_.join();
  if (dispatcher_.joinable()) dispatcher_.join();
  state_ = FG_STATE_STOPPED;
}

void Endpoint::laneLoop() {
  while (auto item = inbound_.pop()) {
    if (auto* env = std::get_if<Envelope>(&*item)) {
      router_.route(cfg_.name, std::move(*env));
    } else if (auto* sc = std::get_if<SessionClosed>(&*item)) {
      router_.sessionClosed(cfg_.name, sc->session);
    } else {
      router_.replayRegisters(cfg_.name);
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

fg_status Endpoint::publishOnce(const OutMessage& m) {
  std::vector<fg_header> hs;  // no allocation without headers (the common case)
  hs.reserve(m.headers.size());
  for (auto& [k, v] : m.headers) hs.push_back(fg_header{{k.data(), k.size()}, {v.data(), v.size()}});
  fg_message cm{{m.topic.data(), m.topic.size()},
                {m.payload.data(), m.payload.size()},
                hs.empty() ? nullptr : hs.data(),
                hs.size(),
                m.timestamp_ms,
                m.session};
  fg_status st = instance_->publish(cm, next_delivery_++);
  if (st == FG_OK) {
    stats_.out.fetch_add(1, std::memory_order_relaxed);
    recordLatency(m.ingress_ns);
  }
  return st;
}

bool Endpoint::retryable(fg_status st) const {
  return (st == FG_RETRY || st == FG_ERR_UNAVAILABLE) && !stopping_.load();
}

void Endpoint::publishFailed(const OutMessage& m, fg_status st) {
  stats_.publish_errors.fetch_add(1, std::memory_order_relaxed);
  DeadLetter d;
  d.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  d.endpoint = cfg_.name;
  d.topic = m.topic;
  d.session = m.session;
  d.reason = "publish_failed";
  d.detail = std::string("plugin refused the publish: ") + statusName(st);
  d.payload_bytes = m.payload.size();
  d.payload = m.payload.substr(0, 4096);
  router_.deadLetters().add(std::move(d));
  spdlog::warn("endpoint {}: publish to '{}' failed: {}", cfg_.name, m.topic, statusName(st));
}

void Endpoint::dispatchLoop() {
  while (auto m = outbound_.pop()) {
    std::unique_lock pl(publish_mu_);
    uint32_t backoff_ms = 1;
    while (true) {
      fg_status st = publishOnce(*m);
      if (st == FG_OK) break;
      if (!retryable(st)) {
        publishFailed(*m, st);
        break;
      }
      stats_.backpressure.fetch_add(1, std::memory_order_relaxed);
      pl.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(backoff_ms));
      pl.lock();
      backoff_ms = std::min<uint32_t>(backoff_ms * 2, 100);
    }
    pl.unlock();
    outbound_.done();
  }
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

fg_status Endpoint::onMessage(uint64_t sub_id, const fg_message& msg) {
  if (stopping_.load()) return FG_ERR_STATE;
  Envelope e = Envelope::fromC(msg, sub_id);
  e.ingress_ns = steadyNs();
  if (!inbound_.push(InItem(std::move(e)))) {
    stats_.backpressure.fetch_add(1, std::memory_order_relaxed);
    return FG_RETRY;
  }
  stats_.in.fetch_add(1, std::memory_order_relaxed);
  return FG_OK;
}

void Endpoint::onDelivery(uint64_t, fg_delivery status) {
  if (status == FG_DELIVERY_OK) stats_.delivered.fetch_add(1, std::memory_order_relaxed);
  else stats_.delivery_failed.fetch_add(1, std::memory_order_relaxed);
}

void Endpoint::onState(fg_state state, std::string_view detail) {
  if (state == FG_STATE_SUBSCRIBED) {
    uint64_t id = 0;
    for (char c : detail)
      if (c >= '0' && c <= '9') id = id * 10 + static_cast<uint64_t>(c - '0');
    {
      std::lock_guard lk(confirm_mu_);
      confirmed_.insert(id);
    }
    confirm_cv_.notify_all();
    return;
  }
  fg_state prev = state_.exchange(state);
  {
    std::lock_guard lk(detail_mu_);
    detail_ = std::string(detail);
  }
  if (state == FG_STATE_UP || state == FG_STATE_RECONNECTED) {
    // Transports whose no-local depends on the connection say so in the detail text.
    if (!(instance_->library().capabilities() & FG_CAP_NO_LOCAL))
      rep_->no_local = detail.find("no-local") != std::string_view::npos;
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
  while (!inbound_.push(InItem(SessionClosed{session}), std::chrono::milliseconds(100)))
    if (stopping_.load()) return;
}

fg_status Endpoint::authorizeSubscribe(uint64_t session, std::string_view filter, std::string& reason) {
  return router_.authorizeSubscribe(cfg_.name, session, std::string(filter), reason);
}

// ---- RouterOutput ----------------------------------------------------------------------

bool Endpoint::send(OutMessage&& m) {
  if (stopping_.load()) return false;
  // A full queue first holds the router lane back (bounded by send_wait_ms): back-pressure
  // towards the source. If it is still full, this endpoint is overflowing: until it has
  // drained to half, further messages for it are refused at once (dead-lettered and counted
  // by the router) so that one stuck endpoint cannot stall the lane for every other target.
  if (overflow_.load(std::memory_order_relaxed)) {
    if (outbound_.size() > outbound_.capacity() / 2) return false;
    overflow_ = false;
    spdlog::info("endpoint {}: outbound queue drained, accepting again", cfg_.name);
  }
  // Nothing queued for this endpoint and its dispatcher idle: hand the message to the plugin
  // here, on the router lane (plugin publish never blocks), and save two thread hand-offs.
  // Per-source order holds: a lane publishes directly only when everything it queued before
  // has been published. FG_RETRY goes the queued way; a refusal is dead-lettered here, as
  // the dispatcher would.
  if (!overflow_.load(std::memory_order_relaxed)) {
    std::unique_lock pl(publish_mu_, std::try_to_lock);
    if (pl.owns_lock() && outbound_.idle()) {
      fg_status st = publishOnce(m);
      if (st == FG_OK) return true;
      if (!retryable(st)) {
        publishFailed(m, st);
        return true;  // handled: counted and dead-lettered by this endpoint
      }
    }
  }
  if (outbound_.push(std::move(m), std::chrono::milliseconds(opts_.send_wait_ms))) return true;
  if (!overflow_.exchange(true))
    spdlog::warn("endpoint {}: outbound queue full for {} ms; dead-lettering its messages until it drains",
                 cfg_.name, opts_.send_wait_ms);
  return false;
}

bool Endpoint::subscribe(const std::string& filter, uint64_t sub_id) {
  fg_status st;
  {
    std::lock_guard lk(sub_mu_);
    st = instance_->subscribe(filter, sub_id);
  }
  if (st != FG_OK) {
    spdlog::warn("endpoint {}: subscribe '{}' failed: {}", cfg_.name, filter, statusName(st));
    return false;
  }
  if (!(instance_->library().capabilities() & FG_CAP_SUBSCRIBE_ACK)) return true;
  std::unique_lock lk(confirm_mu_);
  bool ok = confirm_cv_.wait_for(lk, std::chrono::milliseconds(opts_.subscribe_timeout_ms),
                                 [&] { return confirmed_.count(sub_id) != 0 || stopping_.load(); });
  confirmed_.erase(sub_id);
  return ok && !stopping_.load();
}

void Endpoint::unsubscribe(uint64_t sub_id) {
  std::lock_guard lk(sub_mu_);
  instance_->unsubscribe(sub_id);
}

}  // namespace fingate
