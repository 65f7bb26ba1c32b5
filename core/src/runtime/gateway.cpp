#include <dirent.h>
#include <fingate/fin_codec.hpp>
#include <fingate/gateway.hpp>
#include <fingate/plugin_loader.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <map>
#include <sstream>

#include "admin.hpp"
#include "endpoint.hpp"

namespace fingate {

namespace {

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (auto& s : v) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

// A host for instances created only to check a config (validate): it never starts them.
class NullHost : public PluginHost {
 public:
  void log(fg_log_level, std::string_view) override {}
  fg_status onMessage(uint64_t, const fg_message&) override { return FG_ERR_STATE; }
};

using LibCache = std::map<std::string, std::shared_ptr<PluginLibrary>>;

std::shared_ptr<PluginLibrary> loadFor(const Config& cfg, const std::string& dir, const EndpointConfig& e,
                                       LibCache& cache) {
  auto it = cache.find(e.plugin);
  if (it != cache.end()) return it->second;
  std::shared_ptr<PluginLibrary> lib;
  try {
    lib = PluginLibrary::load(pluginPath(dir, e.plugin), e.plugin);
  } catch (const PluginError& err) {
    throw ConfigError(cfg.file, e.plugin_mark,
                      "endpoints." + e.name + ".plugin: cannot use plugin '" + e.plugin + "': " + err.what());
  }
  for (auto& o : e.options)
    if (!lib->acceptsKey(o.key))
      throw ConfigError(cfg.file, o.mark,
                        "endpoints." + e.name + "." + o.key + ": unknown key for plugin '" + e.plugin +
                            "' (accepted: plugin, role, required, " + join(lib->configKeys()) + ")");
  cache[e.plugin] = lib;
  return lib;
}

void checkKeys(const Config& cfg, const EndpointConfig& e, const PluginLibrary& lib) {
  for (auto& o : e.options)
    if (!lib.acceptsKey(o.key))
      throw ConfigError(cfg.file, o.mark,
                        "endpoints." + e.name + "." + o.key + ": unknown key for plugin '" + e.plugin +
                            "' (accepted: plugin, role, required, " + join(lib.configKeys()) + ")");
}

// Turns a plugin's create() error "<key>: message" into file:line:col of that key.
[[noreturn]] void rethrowCreateError(const Config& cfg, const EndpointConfig& e, const PluginError& err) {
  std::string msg = err.what();
  auto colon = msg.find(": ");
  if (colon != std::string::npos) {
    std::string key = msg.substr(0, colon);
    for (auto& o : e.options)
      if (o.key == key) throw ConfigError(cfg.file, o.mark, "endpoints." + e.name + "." + msg);
  }
  throw ConfigError(cfg.file, e.mark, "endpoints." + e.name + ": " + msg);
}

std::string rfc3339(int64_t unix_s) {
  std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 99;
    if (n == 99 || i + n >= s.size() + (n ? 0 : 1)) {
      if (n == 99 || i + n > s.size() - 1 + 1) return false;
    }
    for (size_t k = 1; k <= n; ++k)
      if (i + k >= s.size() || (static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n + 1;
  }
  return true;
}

std::string base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  while (i + 2 < in.size()) {
    uint32_t v = static_cast<unsigned char>(in[i]) << 16 | static_cast<unsigned char>(in[i + 1]) << 8 |
                 static_cast<unsigned char>(in[i + 2]);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += t[v & 63];
    i += 3;
  }
  if (i < in.size()) {
    uint32_t v = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

void jstr(std::string& out, std::string_view s) {
  out += '"';
  fin::appendJsonEscaped(out, s);
  out += '"';
}

std::string label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

std::string resolvePluginsDir(const Config& cfg) {
  if (!cfg.plugins_dir.empty()) return cfg.plugins_dir;
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "plugins";
  return (exe.parent_path() / ".." / "plugins").lexically_normal().string();
}

void validateConfig(const Config& cfg) {
  std::string dir = resolvePluginsDir(cfg);
  LibCache libs;
  NullHost host;
  for (auto& e : cfg.endpoints) {
    auto lib = loadFor(cfg, dir, e, libs);
    checkKeys(cfg, e, *lib);
    std::vector<std::pair<std::string, std::string>> kv;
    for (auto& o : e.options) kv.emplace_back(o.key, o.value);
    try {
      PluginInstance probe(lib, host, kv);
    } catch (const PluginError& err) {
      rethrowCreateError(cfg, e, err);
    }
  }
}

std::vector<PluginInfo> listPlugins(const std::string& dir) {
  std::vector<PluginInfo> out;
  std::error_code ec;
  std::vector<std::string> files;
  for (auto& f : std::filesystem::directory_iterator(dir, ec)) {
    std::string n = f.path().filename().string();
    if (n.rfind("libfingate-", 0) == 0 && n.size() > 14 && n.substr(n.size() - 3) == ".so") files.push_back(n);
  }
  std::sort(files.begin(), files.end());
  for (auto& n : files) {
    PluginInfo info;
    info.name = n.substr(11, n.size() - 14);
    info.path = dir + "/" + n;
    try {
      auto lib = PluginLibrary::load(info.path, info.name);
      info.version = lib->version();
      info.keys = lib->configKeys();
      info.capabilities = lib->capabilities();
    } catch (const PluginError& e) {
      info.error = e.what();
    }
    out.push_back(std::move(info));
  }
  return out;
}

// ---- Gateway ---------------------------------------------------------------------------

Gateway::Gateway(Config cfg) : cfg_(std::move(cfg)) {
  router_ = std::make_unique<Router>(registry_, cfg_.dead_letter_capacity);
  if (!cfg_.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(cfg_.state_dir, ec);
    if (ec) throw ConfigError(cfg_.file, {}, "state_dir: cannot create " + cfg_.state_dir + ": " + ec.message());
    registry_.setStateFile(cfg_.state_dir + "/bindings.json");
    registry_.load();
    if (registry_.size()) spdlog::info("restored {} fin binding(s) from {}", registry_.size(), registry_.stateFile());
  }
  endpoints_ = buildEndpoints(cfg_, {});
  router_->setRoutes(routesOf(cfg_));
  publishEndpoints();
}

Gateway::~Gateway() { stop(); }

std::vector<RouteRule> Gateway::routesOf(const Config& cfg) {
  std::vector<RouteRule> out;
  for (auto& r : cfg.routes) out.push_back(RouteRule{r.from_endpoint, r.from_topic, r.to_endpoint, r.to_topic});
  return out;
}

std::vector<std::shared_ptr<Endpoint>> Gateway::buildEndpoints(const Config& cfg, const std::vector<std::string>& only) {
  std::string dir = resolvePluginsDir(cfg);
  LibCache libs;
  EndpointOptions opts;
  opts.queue_capacity = cfg.queue_capacity;
  opts.subscribe_timeout_ms = cfg.subscribe_timeout_ms;
  std::vector<std::shared_ptr<Endpoint>> out;
  for (auto& e : cfg.endpoints) {
    if (!only.empty() && std::find(only.begin(), only.end(), e.name) == only.end()) continue;
    auto lib = loadFor(cfg, dir, e, libs);
    checkKeys(cfg, e, *lib);
    try {
      out.push_back(std::make_shared<Endpoint>(e, lib, *router_, opts));
    } catch (const PluginError& err) {
      rethrowCreateError(cfg, e, err);
    }
  }
  return out;
}

void Gateway::publishEndpoints() {
  std::vector<std::shared_ptr<RouterEndpoint>> reps;
  for (auto& e : endpoints_) reps.push_back(e->routerEndpoint());
  router_->setEndpoints(std::move(reps));
}

void Gateway::start() {
  std::lock_guard lk(mu_);
  if (started_) return;
  for (auto& e : endpoints_) e->start();
  router_->subscribeBase();
  if (!cfg_.admin.listen.empty()) {
    admin_ = std::make_unique<AdminServer>(*this, cfg_.admin.listen);
    admin_->start();
  }
  started_ = true;
  replay_stop_ = false;
  replay_thread_ = std::thread([this] { replayLoop(); });
  spdlog::info("fingate running: {} endpoint(s), {} route(s), {} binding(s)", endpoints_.size(), cfg_.routes.size(),
               registry_.size());
}

void Gateway::stop() {
  {
    std::lock_guard rl(replay_mu_);
    replay_stop_ = true;
  }
  replay_cv_.notify_all();
  if (replay_thread_.joinable()) replay_thread_.join();
  std::lock_guard lk(mu_);
  if (!started_) {
    endpoints_.clear();
    return;
  }
  started_ = false;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.drain_timeout_ms);
  bool drained = true;
  for (auto& e : endpoints_) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    drained &= e->drain(std::max(left, std::chrono::milliseconds(1)));
  }
  if (!drained) spdlog::warn("stop: in-flight messages not drained within {} ms", cfg_.drain_timeout_ms);
  for (auto& e : endpoints_) e->stop(1000);
  if (admin_) admin_->stop();
  admin_.reset();
  endpoints_.clear();
  spdlog::info("fingate stopped");
}

void Gateway::replayLoop() {
  // Lock order: never hold replay_mu_ while taking mu_ (stop() joins this thread).
  while (true) {
    uint32_t every_s;
    {
      std::lock_guard g(mu_);
      every_s = cfg_.register_replay_s;
    }
    {
      std::unique_lock lk(replay_mu_);
      auto wait = every_s ? std::chrono::seconds(every_s) : std::chrono::seconds(5);  // off: look again after a reload
      if (replay_cv_.wait_for(lk, wait, [&] { return replay_stop_; })) return;
    }
    if (every_s == 0) continue;
    std::lock_guard g(mu_);
    if (!started_) return;
    for (auto& e : endpoints_) e->requestReplay();
  }
}

bool Gateway::reload(const Config& next, std::string& error) {
  try {
    validateConfig(next);
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
  std::lock_guard lk(mu_);
  auto same = [](const EndpointConfig& a, const EndpointConfig& b) {
    if (a.plugin != b.plugin || a.role != b.role || a.required != b.required || a.compat != b.compat ||
        a.options.size() != b.options.size())
      return false;
    for (size_t i = 0; i < a.options.size(); ++i)
      if (a.options[i].key != b.options[i].key || a.options[i].value != b.options[i].value) return false;
    return true;
  };
  std::vector<std::string> keep, add;
  for (auto& ne : next.endpoints) {
    auto it = std::find_if(endpoints_.begin(), endpoints_.end(), [&](auto& e) { return e->name() == ne.name; });
    if (it != endpoints_.end() && same((*it)->config(), ne)) keep.push_back(ne.name);
    else add.push_back(ne.name);
  }
  std::vector<std::shared_ptr<Endpoint>> fresh;
  try {
    if (!add.empty()) fresh = buildEndpoints(next, add);
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
  // Stop what goes, start what comes.
  std::vector<std::shared_ptr<Endpoint>> kept;
  for (auto& e : endpoints_) {
    if (std::find(keep.begin(), keep.end(), e->name()) != keep.end()) {
      kept.push_back(e);
    } else {
      e->drain(std::chrono::milliseconds(cfg_.drain_timeout_ms));
      e->stop(1000);
      router_->endpointRemoved(e->name());
      spdlog::info("reload: endpoint {} stopped", e->name());
    }
  }
  endpoints_ = kept;
  for (auto& e : fresh) endpoints_.push_back(e);
  publishEndpoints();
  router_->setRoutes(routesOf(next));
  for (auto& e : fresh) {
    try {
      e->start();
      spdlog::info("reload: endpoint {} started", e->name());
    } catch (const std::exception& ex) {
      spdlog::error("reload: {}", ex.what());
    }
  }
  router_->subscribeBase();
  std::string old_admin = cfg_.admin.listen;
  cfg_ = next;
  if (started_ && old_admin != next.admin.listen) {
    if (admin_) admin_->stop();
    admin_.reset();
    if (!next.admin.listen.empty()) {
      admin_ = std::make_unique<AdminServer>(*this, next.admin.listen);
      try {
        admin_->start();
      } catch (const std::exception& ex) {
        spdlog::error("reload: {}", ex.what());
      }
    }
  }
  spdlog::info("reload: applied {} ({} endpoint(s) kept, {} started)", next.file, keep.size(), fresh.size());
  return true;
}

int Gateway::adminPort() const {
  std::lock_guard lk(mu_);
  return admin_ ? admin_->port() : 0;
}

bool Gateway::ready(std::string& why) const {
  std::lock_guard lk(mu_);
  if (!started_) {
    why = "not started";
    return false;
  }
  std::vector<std::string> down;
  for (auto& e : endpoints_)
    if (e->config().required && !e->up()) {
      std::string d = e->stateDetail();
      down.push_back(e->name() + (d.empty() ? "" : " (" + d + ")"));
    }
  if (down.empty()) return true;
  why = "endpoint(s) not up: " + join(down);
  return false;
}

std::string Gateway::metricsText() const {
  std::lock_guard lk(mu_);
  std::ostringstream o;
  auto head = [&](const char* name, const char* type, const char* help) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
  };
  auto perEp = [&](const char* name, const char* type, const char* help, auto&& value) {
    head(name, type, help);
    for (auto& e : endpoints_) o << name << "{endpoint=\"" << label(e->name()) << "\"} " << value(*e) << '\n';
  };
  perEp("fingate_messages_in_total", "counter", "Messages received from the endpoint.",
        [](const Endpoint& e) { return e.stats().in.load(); });
  perEp("fingate_messages_out_total", "counter", "Messages handed to the endpoint's transport.",
        [](const Endpoint& e) { return e.stats().out.load(); });
  perEp("fingate_publish_errors_total", "counter", "Publishes the transport refused for good.",
        [](const Endpoint& e) { return e.stats().publish_errors.load(); });
  head("fingate_deliveries_total", "counter", "Delivery reports from the transport, by status.");
  for (auto& e : endpoints_) {
    o << "fingate_deliveries_total{endpoint=\"" << label(e->name()) << "\",status=\"ok\"} " << e->stats().delivered
      << '\n';
    o << "fingate_deliveries_total{endpoint=\"" << label(e->name()) << "\",status=\"failed\"} "
      << e->stats().delivery_failed << '\n';
  }
  perEp("fingate_backpressure_total", "counter", "Times a queue was full and the source was held back.",
        [](const Endpoint& e) { return e.stats().backpressure.load(); });
  perEp("fingate_reconnects_total", "counter", "Reconnections of the endpoint's transport.",
        [](const Endpoint& e) { return e.stats().reconnects.load(); });
  perEp("fingate_endpoint_up", "gauge", "1 when the endpoint is connected/listening.",
        [](const Endpoint& e) { return e.up() ? 1 : 0; });
  perEp("fingate_sessions_open", "gauge", "Open client sessions (session transports).", [](const Endpoint& e) {
    return e.stats().sessions_opened.load() - e.stats().sessions_closed.load();
  });
  head("fingate_queue_depth", "gauge", "Messages waiting in the endpoint's queues.");
  for (auto& e : endpoints_) {
    o << "fingate_queue_depth{endpoint=\"" << label(e->name()) << "\",direction=\"in\"} " << e->inboundDepth() << '\n';
    o << "fingate_queue_depth{endpoint=\"" << label(e->name()) << "\",direction=\"out\"} " << e->outboundDepth()
      << '\n';
  }
  head("fingate_route_latency_seconds", "histogram",
       "Time from receipt by the gateway to the hand-over to the target transport.");
  for (auto& e : endpoints_) {
    auto& s = e->stats();
    uint64_t cum = 0;
    std::string ep = label(e->name());
    for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
      cum += s.latency[i].load();
      o << "fingate_route_latency_seconds_bucket{endpoint=\"" << ep << "\",le=\"" << kLatencyBuckets[i] << "\"} "
        << cum << '\n';
    }
    cum += s.latency[kLatencyBuckets.size()].load();
    o << "fingate_route_latency_seconds_bucket{endpoint=\"" << ep << "\",le=\"+Inf\"} " << cum << '\n';
    o << "fingate_route_latency_seconds_sum{endpoint=\"" << ep << "\"} " << s.latency_sum.load() << '\n';
    o << "fingate_route_latency_seconds_count{endpoint=\"" << ep << "\"} " << s.latency_count.load() << '\n';
  }
  head("fingate_dead_letters_total", "counter", "Messages not routed (dropped into the dead-letter store), by reason.");
  for (auto& [reason, n] : router_->deadLetters().countsByReason())
    o << "fingate_dead_letters_total{reason=\"" << label(reason) << "\"} " << n << '\n';
  auto& c = router_->counters();
  head("fingate_routed_total", "counter", "Messages the router queued for a target endpoint.");
  o << "fingate_routed_total " << c.routed.load() << '\n';
  head("fingate_echoes_suppressed_total", "counter", "Own publishes heard back and not re-routed.");
  o << "fingate_echoes_suppressed_total " << c.echoes_suppressed.load() << '\n';
  head("fingate_registers_total", "counter", "Register messages seen from fins.");
  o << "fingate_registers_total " << c.registers.load() << '\n';
  head("fingate_nacks_sent_total", "counter", "Nacks the gateway itself sent for rejected messages.");
  o << "fingate_nacks_sent_total " << c.nacks_sent.load() << '\n';
  head("fingate_subscribe_timeouts_total", "counter", "Subscriptions not confirmed within subscribe_timeout_ms.");
  o << "fingate_subscribe_timeouts_total " << c.subscribe_timeouts.load() << '\n';
  head("fingate_compat_repairs_total", "counter", "Compatibility repairs between SOARCA and Python fins, by kind.");
  o << "fingate_compat_repairs_total{kind=\"auth_removed\"} " << c.compat_auth_removed.load() << '\n';
  o << "fingate_compat_repairs_total{kind=\"variables_completed\"} " << c.compat_variables_completed.load() << '\n';
  o << "fingate_compat_repairs_total{kind=\"nack_to_ack\"} " << c.compat_nacks_to_acks.load() << '\n';
  head("fingate_registers_replayed_total", "counter", "Stored registers re-sent to orchestrator endpoints.");
  o << "fingate_registers_replayed_total " << c.registers_replayed.load() << '\n';
  head("fingate_replay_replies_swallowed_total", "counter", "Orchestrator answers to replayed registers not forwarded.");
  o << "fingate_replay_replies_swallowed_total " << c.replay_replies_swallowed.load() << '\n';
  head("fingate_bindings", "gauge", "Fins currently bound.");
  o << "fingate_bindings " << registry_.size() << '\n';
  head("fingate_subscriptions", "gauge", "Transport subscriptions the router holds.");
  o << "fingate_subscriptions " << router_->subscriptionCount() << '\n';
  return o.str();
}

std::string Gateway::finsJson() const {
  std::string j = "{\"fins\":[";
  bool first = true;
  for (auto& b : registry_.snapshot()) {
    if (!first) j += ',';
    first = false;
    j += "{\"fin_id\":";
    jstr(j, b.fin_id);
    j += ",\"endpoint\":";
    jstr(j, b.endpoint);
    j += ",\"session\":" + std::to_string(b.session) + ",\"capabilities\":[";
    for (size_t i = 0; i < b.capabilities.size(); ++i) {
      if (i) j += ',';
      jstr(j, b.capabilities[i]);
    }
    j += "],\"acked\":";
    j += b.acked ? "true" : "false";
    j += ",\"registered_at\":";
    jstr(j, rfc3339(b.registered_at));
    j += ",\"restored\":";
    j += b.restored ? "true" : "false";
    j += '}';
  }
  j += "]}\n";
  return j;
}

std::string Gateway::deadLettersJson() const {
  auto& dl = router_->deadLetters();
  std::string j = "{\"total\":" + std::to_string(dl.total()) + ",\"by_reason\":{";
  bool first = true;
  for (auto& [r, n] : dl.countsByReason()) {
    if (!first) j += ',';
    first = false;
    jstr(j, r);
    j += ':' + std::to_string(n);
  }
  j += "},\"dead_letters\":[";
  first = true;
  for (auto& d : dl.snapshot()) {
    if (!first) j += ',';
    first = false;
    j += "{\"time_ms\":" + std::to_string(d.time_ms) + ",\"endpoint\":";
    jstr(j, d.endpoint);
    j += ",\"topic\":";
    jstr(j, validUtf8(d.topic) ? d.topic : base64(d.topic));
    j += ",\"session\":" + std::to_string(d.session) + ",\"reason\":";
    jstr(j, d.reason);
    j += ",\"detail\":";
    jstr(j, validUtf8(d.detail) ? d.detail : base64(d.detail));
    j += ",\"payload_bytes\":" + std::to_string(d.payload_bytes);
    if (validUtf8(d.payload)) {
      j += ",\"payload\":";
      jstr(j, d.payload);
    } else {
      j += ",\"payload_base64\":";
      jstr(j, base64(d.payload));
    }
    j += '}';
  }
  j += "]}\n";
  return j;
}

std::string Gateway::endpointsJson() const {
  std::lock_guard lk(mu_);
  static const char* states[] = {"starting", "up", "down", "failed", "stopped", "subscribed", "up"};
  std::string j = "{\"endpoints\":[";
  bool first = true;
  for (auto& e : endpoints_) {
    if (!first) j += ',';
    first = false;
    j += "{\"name\":";
    jstr(j, e->name());
    j += ",\"plugin\":";
    jstr(j, e->config().plugin);
    j += ",\"role\":";
    jstr(j, toString(e->config().role));
    fg_state s = e->state();
    j += ",\"state\":";
    jstr(j, s >= 0 && s <= 6 ? states[s] : "unknown");
    j += ",\"detail\":";
    jstr(j, e->stateDetail());
    j += '}';
  }
  j += "]}\n";
  return j;
}

}  // namespace fingate
