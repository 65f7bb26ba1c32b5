#include <dirent.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <fingate/clock.hpp>
#include <fingate/fin_codec.hpp>
#include <fingate/gateway.hpp>
#include <fingate/json.hpp>
#include <fingate/topic.hpp>
#include <fstream>
#include <fingate/plugin_loader.hpp>
#include <map>
#include <sstream>

#include "admin.hpp"
#include "endpoint.hpp"
#include "redact.hpp"

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
  fg_status onMessage(uint64_t, const fg_message&, uint64_t) override { return FG_ERR_STATE; }
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
  checkConfigForRun(cfg);  // listeners, TLS files, state_dir, credentials in URLs (binds nothing)
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
    // A migration moves broker-side bindings: a session transport's bindings belong to client
    // connections of this gateway, which a cutover cannot move.
    const auto& m = cfg.migration;
    if ((e.name == m.from || e.name == m.to) && (lib->capabilities() & FG_CAP_SESSIONS))
      throw ConfigError(cfg.file, e.name == m.from ? m.from_mark : m.to_mark,
                        "migration." + std::string(e.name == m.from ? "from" : "to") + ": endpoint '" + e.name +
                            "' uses plugin '" + e.plugin +
                            "', a session transport (clients connect to the gateway); a migration moves fins "
                            "between broker endpoints (mqtt, kafka)");
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
  router_ = std::make_unique<Router>(registry_, cfg_.dead_letter_capacity, cfg_.limits);
  router_->setSubscribeTimeout(cfg_.subscribe_timeout_ms);
  if (!cfg_.state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(cfg_.state_dir, ec);
    if (ec) throw ConfigError(cfg_.file, {}, "state_dir: cannot create " + cfg_.state_dir + ": " + ec.message());
    registry_.setStateFile(cfg_.state_dir + "/bindings.json", cfg_.limits.state_write_delay_ms);
    registry_.load([this](const std::string& name) {
      for (auto& e : cfg_.endpoints)
        if (e.name == name) return e.role == Role::Fins;
      return false;
    });
    if (registry_.size()) spdlog::info("restored {} fin binding(s) from {}", registry_.size(), registry_.stateFile());
  }
  if (cfg_.migration.configured()) {
    loadMigrationState(cfg_.migration);  // an admin switch made before a restart stays
    size_t moved = router_->setMigration(pairOf(cfg_.migration));
    spdlog::info("migration {} -> {}: active side {}, mirror {}{}", cfg_.migration.from, cfg_.migration.to,
                 pairOf(cfg_.migration).active(), cfg_.migration.mirror ? "on" : "off",
                 moved ? " (" + std::to_string(moved) + " restored binding(s) moved to it)" : "");
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

std::vector<std::shared_ptr<Endpoint>> Gateway::buildEndpoints(const Config& cfg,
                                                               const std::vector<std::string>& only) {
  std::string dir = resolvePluginsDir(cfg);
  LibCache libs;
  EndpointOptions opts;
  opts.queue_capacity = cfg.queue_capacity;
  opts.limits = cfg.limits;
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
  std::unique_lock lk(mu_);
  if (started_) return;
  // The admin listener first: /healthz and /readyz answer while endpoints wait for a broker,
  // and a taken admin port fails the start before any endpoint opens.
  if (!cfg_.admin.listen.empty() && !admin_) {
    admin_ = std::make_unique<AdminServer>(*this, cfg_.admin);
    admin_->start();
  }
  lk.unlock();  // the admin views take mu_; endpoints_ only changes on this thread
  try {
    for (auto& e : endpoints_) e->start();
    router_->setRegistryEndpoint(cfg_.cluster.registry_endpoint);
    router_->subscribeBase();
  } catch (...) {
    lk.lock();
    auto admin = std::move(admin_);
    lk.unlock();
    if (admin) admin->stop();
    throw;
  }
  lk.lock();
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
  // Stopped (and joined) after mu_ is released: a request in progress may be waiting for mu_.
  std::unique_ptr<AdminServer> admin;
  std::lock_guard lk(mu_);
  admin = std::move(admin_);
  if (admin) admin->shutdown();
  if (!started_) {
    router_->setEndpoints({});
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
  for (auto& e : graveyard_) e->stop(1000);
  // Nothing can reach the endpoints any more: free them here, on this thread.
  router_->setEndpoints({});
  endpoints_.clear();
  graveyard_.clear();
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

bool Gateway::reload(const Config& next, std::string& error) { return apply(next, false, error); }

bool Gateway::apply(const Config& given, bool migration_from_next, std::string& error) {
  Config effective = given;
  if (!migration_from_next && effective.migration.configured()) {
    // The file names the pair; where it stands (active side, mirror) is the admin API's, kept
    // while the file names the same pair (and across restarts in the state directory).
    MigrationConfig running;
    {
      std::lock_guard lk(mu_);
      running = cfg_.migration;
    }
    if (running.from == effective.migration.from && running.to == effective.migration.to) {
      effective.migration.to_active = running.to_active;
      effective.migration.mirror = running.mirror;
    } else {
      loadMigrationState(effective.migration);
    }
  }
  const Config& next = effective;
  // An admin migration action changes only the migration state of the running config, whose
  // endpoints were validated when it was loaded: no plugin is probed again for it.
  if (!migration_from_next) {
    try {
      validateConfig(next);
    } catch (const std::exception& e) {
      error = e.what();
      return false;
    }
  }
  // The new admin address is bound before anything changes (a clash refuses the reload and the
  // old listener stays); the listener no longer used stops after mu_ is released.
  AdminReload admin_change(*this, admin_.get(), next.admin);
  if (started_ && !admin_change.prepare(error)) return false;
  // One reload at a time; mu_ is held only for the swaps, so the admin API answers meanwhile.
  std::lock_guard rl(reload_mu_);
  auto same = [](const EndpointConfig& a, const EndpointConfig& b) {
    if (a.plugin != b.plugin || a.role != b.role || a.required != b.required || a.compat != b.compat ||
        a.options.size() != b.options.size())
      return false;
    for (size_t i = 0; i < a.options.size(); ++i)
      if (a.options[i].key != b.options[i].key || a.options[i].value != b.options[i].value) return false;
    return true;
  };
  std::vector<std::shared_ptr<Endpoint>> current;
  {
    std::lock_guard lk(mu_);
    current = endpoints_;
  }
  std::vector<std::string> keep, add;
  std::vector<std::shared_ptr<Endpoint>> kept, gone;
  // Changed endpoints of the same plugin and role keep their bindings (a restarted session
  // transport loses its sessions, and with them their bindings; restored ones stay).
  std::vector<std::string> rebind;
  for (auto& ne : next.endpoints) {
    auto it = std::find_if(current.begin(), current.end(), [&](auto& e) { return e->name() == ne.name; });
    if (it != current.end() && same((*it)->config(), ne)) {
      keep.push_back(ne.name);
    } else {
      add.push_back(ne.name);
      if (it != current.end() && (*it)->config().plugin == ne.plugin && (*it)->config().role == ne.role)
        rebind.push_back(ne.name);
    }
  }
  for (auto& e : current) {
    if (std::find(keep.begin(), keep.end(), e->name()) != keep.end())
      kept.push_back(e);
    else
      gone.push_back(e);
  }
  std::vector<std::shared_ptr<Endpoint>> fresh;
  try {
    if (!add.empty()) fresh = buildEndpoints(next, add);
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
  // 1. The router takes the new table first: no lane routes to a removed endpoint after this,
  //    and those still routing hold it alive through their snapshot (RouterEndpoint::owner).
  std::vector<std::shared_ptr<Endpoint>> next_eps = kept;
  for (auto& e : fresh) next_eps.push_back(e);
  {
    std::lock_guard lk(mu_);
    endpoints_ = next_eps;
    publishEndpoints();
  }
  router_->setRoutes(routesOf(next));
  router_->setLimits(next.limits);
  router_->setSubscribeTimeout(next.subscribe_timeout_ms);
  router_->setRegistryEndpoint(next.cluster.registry_endpoint);
  {
    const MigrationPair before = router_->migration(), after = pairOf(next.migration);
    last_moved_ = router_->setMigration(after);
    if (after.configured() && (before.active() != after.active() || before.mirror != after.mirror ||
                               before.from != after.from || before.to != after.to)) {
      spdlog::info("migration {} -> {}: active side {}, mirror {} ({} binding(s) moved)", after.from, after.to,
                   after.active(), after.mirror ? "on" : "off", last_moved_.load());
      if (before.active() != after.active()) {
        std::lock_guard ml(mig_mu_);
        switched_at_ms_ = wallMs();
        ++switches_;
      }
    } else if (!after.configured() && before.configured()) {
      spdlog::info("migration {} -> {}: ended (no migration block any more)", before.from, before.to);
    }
    if (after.configured()) saveMigrationState(next.migration);
  }
  // 2. Then what goes drains and stops. Freed later, on this thread, once nothing else holds it.
  for (auto& e : gone) {
    e->drain(std::chrono::milliseconds(std::min<uint32_t>(cfg_.drain_timeout_ms, 2000)));
    e->stop(1000);
    if (std::find(rebind.begin(), rebind.end(), e->name()) != rebind.end()) {
      // Same plugin and role: bindings stay; live sessions of the old instance are gone.
      router_->endpointRemoved(e->name(), /*keep_bindings=*/true);
    } else {
      router_->endpointRemoved(e->name());
    }
    spdlog::info("reload: endpoint {} stopped", e->name());
    graveyard_.push_back(e);
  }
  gone.clear();
  for (auto& e : fresh) {
    try {
      e->start();
      spdlog::info("reload: endpoint {} started", e->name());
    } catch (const std::exception& ex) {
      spdlog::error("reload: {}", ex.what());
    }
  }
  router_->subscribeBase();
  {
    std::lock_guard lk(mu_);
    cfg_ = next;
  }
  admin_change.commit(admin_);
  collectGraveyard();
  spdlog::info("reload: applied {} ({} endpoint(s) kept, {} started)", next.file, keep.size(), fresh.size());
  return true;
}

void Gateway::collectGraveyard() {
  // An endpoint is destroyed here, on the main thread, once the graveyard holds its last
  // reference (never on a lane or a plugin thread that happened to drop it).
  std::erase_if(graveyard_, [](const std::shared_ptr<Endpoint>& e) { return e.use_count() == 1; });
}

int Gateway::adminPort() const {
  std::lock_guard lk(mu_);
  return admin_ ? admin_->port() : 0;
}

bool Gateway::ready(std::string& why) const {
  std::lock_guard lk(mu_);
  std::vector<std::string> down;
  for (auto& e : endpoints_)
    if (e->config().required && !e->up()) {
      std::string d = redactText(e->stateDetail());  // a plugin's detail may hold a URL with credentials
      down.push_back(e->name() + (d.empty() ? "" : " (" + d + ")"));
    }
  if (!started_) {  // the admin listener answers while the endpoints start
    why = endpoints_.empty() ? "not started"
          : down.empty()     ? "starting"
                             : "starting: endpoint(s) not up: " + join(down);
    return false;
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
    o << "fingate_deliveries_total{endpoint=\"" << label(e->name()) << "\",status=\"no_receiver\"} "
      << e->stats().no_receiver << '\n';
  }
  head("fingate_outcomes_total", "counter",
       "Final outcomes of messages whose source asked for them (ABI 1.1 tokens), by source endpoint.");
  for (auto& e : endpoints_) {
    static const char* names[] = {"delivered", "dead_lettered", "refused", "filtered"};
    for (size_t i = 0; i < 4; ++i)
      o << "fingate_outcomes_total{endpoint=\"" << label(e->name()) << "\",outcome=\"" << names[i] << "\"} "
        << e->stats().outcomes[i].load() << '\n';
  }
  perEp("fingate_slow_consumers_total", "counter", "Sessions closed because their queue stayed full.",
        [](const Endpoint& e) { return e.stats().slow_consumers.load(); });
  perEp("fingate_session_queues", "gauge", "Sessions with messages waiting in their own queue.",
        [](const Endpoint& e) { return e.sessionQueues(); });
  perEp("fingate_backpressure_total", "counter", "Times a queue was full and the source was held back.",
        [](const Endpoint& e) { return e.stats().backpressure.load(); });
  perEp("fingate_reconnects_total", "counter", "Reconnections of the endpoint's transport.",
        [](const Endpoint& e) { return e.stats().reconnects.load(); });
  perEp("fingate_endpoint_up", "gauge", "1 when the endpoint is connected/listening.",
        [](const Endpoint& e) { return e.up() ? 1 : 0; });
  perEp("fingate_sessions_open", "gauge", "Open client sessions (session transports).",
        [](const Endpoint& e) { return e.stats().sessions_opened.load() - e.stats().sessions_closed.load(); });
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
      o << "fingate_route_latency_seconds_bucket{endpoint=\"" << ep << "\",le=\"" << kLatencyBuckets[i] << "\"} " << cum
        << '\n';
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
  head("fingate_replay_replies_swallowed_total", "counter",
       "Orchestrator answers to replayed registers not forwarded.");
  o << "fingate_replay_replies_swallowed_total " << c.replay_replies_swallowed.load() << '\n';
  head("fingate_limit_hits_total", "counter", "Times a configured limit refused something, by limit.");
  for (auto& [limit, n] : router_->limitHits())
    o << "fingate_limit_hits_total{limit=\"" << label(limit) << "\"} " << n << '\n';
  head("fingate_dead_letter_bytes", "gauge", "Payload bytes kept in the dead-letter store.");
  o << "fingate_dead_letter_bytes " << router_->deadLetters().bytes() << '\n';
  head("fingate_dead_letters_evicted_total", "counter",
       "Dead letters dropped from the store to keep it within its budget.");
  o << "fingate_dead_letters_evicted_total " << router_->deadLetters().evicted() << '\n';
  head("fingate_dead_letter_retries_total", "counter", "Dead letters re-published through the admin API.");
  o << "fingate_dead_letter_retries_total " << c.dead_letter_retries.load() << '\n';
  head("fingate_pending_registers", "gauge", "Registers waiting for their subscriptions to be confirmed.");
  o << "fingate_pending_registers " << router_->pendingRegisters() << '\n';
  head("fingate_subscribe_refused_total", "counter", "Subscriptions a transport refused.");
  o << "fingate_subscribe_refused_total " << c.subscribe_refused.load() << '\n';
  head("fingate_echo_window_entries", "gauge", "Own publishes remembered for echo suppression.");
  o << "fingate_echo_window_entries " << router_->echoWindowSize() << '\n';
  head("fingate_echo_window_overflow_total", "counter", "Echo records dropped because the window was full.");
  o << "fingate_echo_window_overflow_total " << router_->echoWindowOverflow() << '\n';
  head("fingate_restored_claimed_total", "counter", "Restored bindings claimed by a register from a live session.");
  o << "fingate_restored_claimed_total " << c.restored_claimed.load() << '\n';
  head("fingate_shared_registry_records_total", "counter",
       "Shared binding registry records: published by this instance, applied from others, ignored.");
  o << "fingate_shared_registry_records_total{op=\"published\"} " << c.registry_published.load() << '\n';
  o << "fingate_shared_registry_records_total{op=\"applied\"} " << c.registry_applied.load() << '\n';
  o << "fingate_shared_registry_records_total{op=\"ignored\"} " << c.registry_ignored.load() << '\n';
  head("fingate_state_writes_total", "counter", "Writes of the state file (changes are coalesced).");
  o << "fingate_state_writes_total " << registry_.writes() << '\n';
  head("fingate_bindings", "gauge", "Fins currently bound.");
  o << "fingate_bindings " << registry_.size() << '\n';
  head("fingate_subscriptions", "gauge", "Transport subscriptions the router holds.");
  o << "fingate_subscriptions " << router_->subscriptionCount() << '\n';
  if (cfg_.migration.configured()) {
    const auto& m = cfg_.migration;
    head("fingate_migration_mirrored_total", "counter", "Copies the migration mirror published, by the side they went to.");
    o << "fingate_migration_mirrored_total{endpoint=\"" << label(m.from) << "\"} " << c.mirrored_to_from.load() << '\n';
    o << "fingate_migration_mirrored_total{endpoint=\"" << label(m.to) << "\"} " << c.mirrored_to_to.load() << '\n';
    head("fingate_migration_mirror_failed_total", "counter", "Mirror copies that were dead-lettered.");
    o << "fingate_migration_mirror_failed_total " << c.mirror_failed.load() << '\n';
    head("fingate_migration_active", "gauge", "1 for the active side of the migration, 0 for the passive one.");
    o << "fingate_migration_active{endpoint=\"" << label(m.from) << "\"} " << (m.to_active ? 0 : 1) << '\n';
    o << "fingate_migration_active{endpoint=\"" << label(m.to) << "\"} " << (m.to_active ? 1 : 0) << '\n';
  }
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
    j += ",\"remote\":";
    j += b.remote ? "true" : "false";
    j += '}';
  }
  j += "]}\n";
  return j;
}

std::string Gateway::deadLettersJson() const {
  auto& dl = router_->deadLetters();
  std::string j = "{\"total\":" + std::to_string(dl.total()) + ",\"stored_bytes\":" + std::to_string(dl.bytes()) +
                  ",\"evicted\":" + std::to_string(dl.evicted()) + ",\"by_reason\":{";
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
    j += "{\"id\":" + std::to_string(d.id) + ",\"time_ms\":" + std::to_string(d.time_ms) + ",\"endpoint\":";
    jstr(j, d.endpoint);
    j += ",\"topic\":";
    jstr(j, isValidUtf8(d.topic) ? d.topic : base64(d.topic));
    j += ",\"session\":" + std::to_string(d.session) + ",\"reason\":";
    jstr(j, d.reason);
    j += ",\"detail\":";
    std::string detail = redactText(d.detail);
    jstr(j, isValidUtf8(detail) ? detail : base64(detail));
    j += ",\"payload_bytes\":" + std::to_string(d.payload_bytes);
    if (!d.target.empty()) {
      j += ",\"target\":";
      jstr(j, d.target);
    }
    // Shown redacted (credentials of commands, secret-named keys, URL user-info); the stored
    // message stays whole.
    std::string payload = redactText(redactJsonSecrets(d.payload));
    if (isValidUtf8(payload)) {
      j += ",\"payload\":";
      jstr(j, payload);
    } else {
      j += ",\"payload_base64\":";
      jstr(j, base64(payload));
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
    jstr(j, redactText(e->stateDetail()));
    j += '}';
  }
  j += "]}\n";
  return j;
}

// ---- migration (docs/migration.md) ------------------------------------------------------------

namespace {
std::string errorJson(const std::string& message) {
  std::string j = "{\"error\":";
  jstr(j, message);
  return j + "}\n";
}
bool unsignedParam(const std::map<std::string, std::string>& p, const char* key, uint64_t& out) {
  auto it = p.find(key);
  if (it == p.end()) return true;  // optional: 0
  if (it->second.empty() || it->second.size() > 19 || it->second.find_first_not_of("0123456789") != std::string::npos)
    return false;
  out = std::stoull(it->second);
  return true;
}
}  // namespace

MigrationPair Gateway::pairOf(const MigrationConfig& m) {
  MigrationPair p;
  if (!m.configured()) return p;
  p.from = m.from;
  p.to = m.to;
  p.to_active = m.to_active;
  p.mirror = m.mirror;
  return p;
}

std::string Gateway::migrationStateFile() const {
  return cfg_.state_dir.empty() ? "" : cfg_.state_dir + "/migration.json";
}

void Gateway::saveMigrationState(const MigrationConfig& m) const {
  const std::string path = migrationStateFile();
  if (path.empty()) return;
  std::string j = "{\"from\":";
  jstr(j, m.from);
  j += ",\"to\":";
  jstr(j, m.to);
  j += ",\"active\":";
  jstr(j, m.to_active ? m.to : m.from);
  j += std::string(",\"mirror\":") + (m.mirror ? "true" : "false") + "}\n";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << j;
    f.flush();
    if (!f) {
      spdlog::error("migration: cannot write {}: the switch holds until a restart only", tmp);
      return;
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) spdlog::error("migration: cannot rename {} to {}: {}", tmp, path, ec.message());
}

void Gateway::loadMigrationState(MigrationConfig& m) const {
  const std::string path = migrationStateFile();
  if (path.empty() || !std::filesystem::exists(path)) return;
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string error;
  auto j = parseJson(ss.str(), error);
  if (!j || j->type != Json::Type::Object) {
    spdlog::warn("migration: {} is not readable ({}); the config file's state applies", path, error);
    return;
  }
  if (j->str("from") != m.from || j->str("to") != m.to) return;  // another pair: the file's state applies
  const std::string active = j->str("active");
  if (active != m.from && active != m.to) return;
  m.to_active = active == m.to;
  m.mirror = j->flag("mirror", m.mirror);
}

bool Gateway::cutoverAllowed(const MigrationConfig& m, std::string& why) const {
  if (m.to_active) {
    why = "already cut over: the active side is " + m.to + " (fingate migrate rollback switches back)";
    return false;
  }
  if (!m.mirror) {
    why = "the mirror is off: fins still on " + m.from +
          " would get nothing after a cutover (turn it on with fingate migrate mirror, then verify)";
    return false;
  }
  if (!verify_) {
    why = "no verify report yet: run fingate migrate verify";
    return false;
  }
  if (!verify_->parity) {
    why = "the last verify found differences (fingate migrate verify --json names them); verify again once they are "
          "explained";
    return false;
  }
  if (verify_->switches_at != switches_ || verify_->active != m.from) {
    why = "the last verify was made before the last switch: verify again";
    return false;
  }
  const int64_t age_s = (steadyMs() - verify_->at_steady) / 1000;
  if (age_s > static_cast<int64_t>(m.verify_max_age_s)) {
    why = "the last verify is " + std::to_string(age_s) + " s old (migration.verify_max_age_s is " +
          std::to_string(m.verify_max_age_s) + "): verify again";
    return false;
  }
  const uint64_t failed = router_->counters().mirror_failed.load();
  if (failed > verify_->mirror_failed_at) {
    why = std::to_string(failed - verify_->mirror_failed_at) +
          " mirror copies failed since the last verify (GET /v1/dead-letters shows them): verify again";
    return false;
  }
  return true;
}

std::string Gateway::migrationJson(int& status) const {
  MigrationConfig m;
  {
    std::lock_guard lk(mu_);
    m = cfg_.migration;
  }
  if (!m.configured()) {
    status = 404;
    return errorJson("no migration configured (add a migration: block to the config)");
  }
  status = 200;
  const MigrationPair p = pairOf(m);
  size_t on_from = 0, on_to = 0;
  for (auto& b : registry_.snapshot()) {
    if (b.endpoint == m.from) ++on_from;
    if (b.endpoint == m.to) ++on_to;
  }
  const auto& c = router_->counters();
  std::string j = "{\"from\":";
  jstr(j, m.from);
  j += ",\"to\":";
  jstr(j, m.to);
  j += ",\"active\":";
  jstr(j, p.active());
  j += ",\"passive\":";
  jstr(j, p.passive());
  j += std::string(",\"mirror\":") + (m.mirror ? "true" : "false");
  j += ",\"mirrored\":{";
  jstr(j, m.from);
  j += ":" + std::to_string(c.mirrored_to_from.load()) + ",";
  jstr(j, m.to);
  j += ":" + std::to_string(c.mirrored_to_to.load()) + "}";
  j += ",\"mirror_failed\":" + std::to_string(c.mirror_failed.load());
  j += ",\"bindings\":{";
  jstr(j, m.from);
  j += ":" + std::to_string(on_from) + ",";
  jstr(j, m.to);
  j += ":" + std::to_string(on_to) + "}";
  // Where each fin of the pair was last heard: who still speaks on which broker.
  j += ",\"fins\":[";
  const auto seen = router_->migrationSightings();
  bool first = true;
  auto when = [&](int64_t ms) {
    if (!ms) return std::string("\"\"");
    std::string t;
    jstr(t, rfc3339(ms / 1000));
    return t;
  };
  for (auto& b : registry_.snapshot()) {
    if (b.endpoint != m.from && b.endpoint != m.to) continue;
    auto it = seen.find(b.fin_id);
    const Router::Sighting s = it == seen.end() ? Router::Sighting{} : it->second;
    j += first ? "" : ",";
    first = false;
    j += "{\"fin_id\":";
    jstr(j, b.fin_id);
    j += ",\"endpoint\":";
    jstr(j, b.endpoint);
    j += ",\"last_seen\":{";
    jstr(j, m.from);
    j += ":" + when(s.from_ms) + ",";
    jstr(j, m.to);
    j += ":" + when(s.to_ms) + "},\"last_seen_age_s\":{";
    const int64_t now = wallMs();
    jstr(j, m.from);
    j += ":" + (s.from_ms ? std::to_string((now - s.from_ms) / 1000) : std::string("null")) + ",";
    jstr(j, m.to);
    j += ":" + (s.to_ms ? std::to_string((now - s.to_ms) / 1000) : std::string("null")) + "}}";
  }
  j += "]";
  std::lock_guard ml(mig_mu_);
  j += ",\"switched_at\":";
  jstr(j, switched_at_ms_ ? rfc3339(switched_at_ms_ / 1000) : "");
  j += ",\"verify\":";
  if (!verify_) {
    j += "null";
  } else {
    j += std::string("{\"parity\":") + (verify_->parity ? "true" : "false") + ",\"at\":";
    jstr(j, rfc3339(verify_->at_ms / 1000));
    j += ",\"age_s\":" + std::to_string((steadyMs() - verify_->at_steady) / 1000) + ",\"active\":";
    jstr(j, verify_->active);
    j += ",\"messages\":" + std::to_string(verify_->messages) + ",\"topics\":" + std::to_string(verify_->topics);
    j += ",\"report\":" + (verify_->body.empty() ? std::string("null") : verify_->body) + "}";
  }
  std::string why;
  const bool allowed = cutoverAllowed(m, why);
  j += std::string(",\"cutover_allowed\":") + (allowed ? "true" : "false") + ",\"cutover_refused_because\":";
  jstr(j, why);
  j += "}\n";
  return j;
}

int Gateway::migrationAction(const std::string& action, const std::map<std::string, std::string>& params,
                             const std::string& body, std::string& reply) {
  std::lock_guard al(mig_action_mu_);
  Config cur;
  {
    std::lock_guard lk(mu_);
    cur = cfg_;
  }
  if (!cur.migration.configured()) {
    reply = errorJson("no migration configured (add a migration: block to the config)");
    return 404;
  }
  auto switchTo = [&](Config next, const char* what) {
    std::string error;
    if (!apply(next, true, error)) {
      reply = errorJson(std::string(what) + " refused by the reload: " + error);
      return 409;
    }
    return 200;
  };
  if (action == "mirror") {
    auto it = params.find("enabled");
    if (it == params.end() || (it->second != "true" && it->second != "false")) {
      reply = errorJson("give enabled=true or enabled=false");
      return 400;
    }
    Config next = cur;
    next.migration.mirror = it->second == "true";
    if (next.migration.mirror != cur.migration.mirror && switchTo(next, "mirror") != 200) return 409;
    reply = std::string("{\"mirror\":") + (next.migration.mirror ? "true" : "false") + "}\n";
    return 200;
  }
  if (action == "verify") {
    auto it = params.find("parity");
    VerifyReport r;
    if (it == params.end() || (it->second != "true" && it->second != "false") ||
        !unsignedParam(params, "messages", r.messages) || !unsignedParam(params, "topics", r.topics)) {
      reply = errorJson("give parity=true|false (and messages=N, topics=N) with the report as the body");
      return 400;
    }
    if (!body.empty()) {
      std::string error;
      auto j = parseJson(body, error);
      if (!j || j->type != Json::Type::Object) {
        reply = errorJson("the report is not a JSON object: " + error);
        return 400;
      }
    }
    r.parity = it->second == "true";
    r.at_ms = wallMs();
    r.at_steady = steadyMs();
    r.active = pairOf(cur.migration).active();
    r.mirror_failed_at = router_->counters().mirror_failed.load();
    r.body = body;
    while (!r.body.empty() && (r.body.back() == '\n' || r.body.back() == ' ')) r.body.pop_back();
    spdlog::info("migration: verify report stored: {} ({} message(s), {} topic(s))",
                 r.parity ? "parity" : "DIFFERENCES", r.messages, r.topics);
    {
      std::lock_guard ml(mig_mu_);
      r.switches_at = switches_;
      verify_ = std::move(r);
    }
    reply = "{\"stored\":true}\n";
    return 200;
  }
  if (action == "cutover" || action == "rollback") {
    const bool cutover = action == "cutover";
    if (cutover) {
      std::string why;
      bool ok;
      {
        std::lock_guard ml(mig_mu_);
        ok = cutoverAllowed(cur.migration, why);
      }
      if (!ok) {
        spdlog::warn("migration: cutover refused: {}", why);
        reply = errorJson("cutover refused: " + why);
        return 409;
      }
    } else if (!cur.migration.to_active) {
      reply = errorJson("nothing to roll back: the active side is already " + cur.migration.from);
      return 409;
    }
    Config next = cur;
    next.migration.to_active = cutover;
    if (switchTo(next, action.c_str()) != 200) return 409;
    std::string j = "{\"active\":";
    jstr(j, cutover ? cur.migration.to : cur.migration.from);
    reply = j + ",\"moved\":" + std::to_string(last_moved_.load()) + "}\n";
    return 200;
  }
  reply = errorJson("unknown migration action '" + action + "' (mirror, verify, cutover, rollback)");
  return 404;
}

}  // namespace fingate
