// Shared by the client tools (cli_host.hpp): errors, signals, the plugin host, the acker and the
// endpoint's resolution, loading, start and wait.
#include "cli_host.hpp"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fingate/gateway.hpp>
#include <sstream>

#include "redact.hpp"

namespace fingate::cli {

namespace {

std::mutex g_err_mu;
bool g_progress_shown = false;  // a progress line is on stderr (guarded by g_err_mu)

const char* levelName(fg_log_level l) {
  switch (l) {
    case FG_LOG_TRACE:
      return "trace";
    case FG_LOG_DEBUG:
      return "debug";
    case FG_LOG_INFO:
      return "info";
    case FG_LOG_WARN:
      return "warning";
    default:
      return "error";
  }
}

std::vector<std::string> availablePlugins(const std::string& dir) {
  std::vector<std::string> names;
  for (auto& p : listPlugins(dir))
    if (p.error.empty()) names.push_back(p.name);
  return names;
}

}  // namespace

// ---- errors ----------------------------------------------------------------------------

[[noreturn]] void fail(int code, std::string message) { throw Failure{code, std::move(message)}; }

void errLine(const std::string& text) {
  std::lock_guard lk(g_err_mu);
  std::string clean = redactText(text);
  if (g_progress_shown) {  // the line goes above the progress line, which is drawn again later
    std::fputs("\r\033[K", stderr);
    g_progress_shown = false;
  }
  std::fprintf(stderr, "%s\n", clean.c_str());
  std::fflush(stderr);
}

void drawProgressLine(const std::string& line) {
  std::lock_guard lk(g_err_mu);
  std::fprintf(stderr, "\r\033[K%s", line.c_str());
  std::fflush(stderr);
  g_progress_shown = true;
}

void clearProgressLine() {
  std::lock_guard lk(g_err_mu);
  if (!g_progress_shown) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  g_progress_shown = false;
}

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

std::string secondsText(double s) {
  std::ostringstream o;
  o << s << " s";
  return o.str();
}

// ---- signals ---------------------------------------------------------------------------

Signals::Signals(std::function<void()> on_signal) : on_signal_(std::move(on_signal)) {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGUSR2);  // our own wake-up at the end
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a closed stdout or socket is an error value, not a death
  thread_ = std::thread([this] { run(); });
}

Signals::~Signals() {
  quit_ = true;
  pthread_kill(thread_.native_handle(), SIGUSR2);
  thread_.join();
}

void Signals::run() {
  int seen = 0;
  while (true) {
    int sig = 0;
    if (sigwait(&set_, &sig) != 0) continue;
    if (quit_) return;
    if (sig == SIGUSR2) continue;
    if (++seen > 1) _exit(130);
    on_signal_();
  }
}

// ---- the host of one instance ----------------------------------------------------------

void CliHost::log(fg_log_level level, std::string_view msg) {
  if (level >= FG_LOG_WARN) {
    std::lock_guard lk(mu);
    last_problem = std::string(msg);
  }
  if (debug_) errLine("debug: " + prefix_ + "plugin " + levelName(level) + ": " + std::string(msg));
}

fg_status CliHost::onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) {
  {
    // A message came: the connection works, whatever state the plugin reported so far (a
    // server may send everything and close before the client's own "up" handshake ends).
    std::lock_guard lk(mu);
    received = true;
  }
  cv.notify_all();
  return message_ ? message_(sub_id, msg, token) : FG_ERR_STATE;
}

void CliHost::onEvent(const fg_event& ev) {
  const std::string detail = ev.detail ? ev.detail : "";
  if (ev.kind == FG_EVENT_SUBSCRIPTION) {
    settle(ev.sub_id, ev.status, detail);
  } else if (ev.kind == FG_EVENT_SESSION_WRITABLE) {
    hint();
  } else if (ev.kind == FG_EVENT_CONNECTION && debug_) {
    errLine("debug: " + prefix_ + "connection facts:" + ((ev.flags & FG_CONN_NO_LOCAL) ? " no-local" : " none"));
  }
}

void CliHost::onDelivery(uint64_t delivery_id, fg_delivery status) {
  {
    std::lock_guard lk(mu);
    deliveries.emplace_back(delivery_id, status);
  }
  cv.notify_all();
}

void CliHost::onState(fg_state state, std::string_view detail_view) {
  std::string detail(detail_view);
  if (state == FG_STATE_SUBSCRIBED) {  // a 1.0 plugin's confirmation: detail = the decimal sub id
    char* end = nullptr;
    const unsigned long long id = std::strtoull(detail.c_str(), &end, 10);
    if (end && *end == '\0' && !detail.empty()) settle(id, FG_OK, "");
    return;
  }
  bool lost = false;
  {
    std::lock_guard lk(mu);
    last_state = state;
    last_detail = detail;
    switch (state) {
      case FG_STATE_UP:
      case FG_STATE_RECONNECTED:
        up = true;
        ever_up = true;
        break;
      case FG_STATE_DOWN:
      case FG_STATE_FAILED:
        lost = up;
        up = false;
        if (!ever_up && !received) refused = true;
        break;
      case FG_STATE_STOPPED:
        up = false;
        break;
      default:
        break;
    }
  }
  cv.notify_all();
  if (debug_)
    errLine("debug: " + prefix_ + "endpoint " + stateName(state) + (detail.empty() ? "" : ": " + detail));
  else if (lost)
    errLine("warning: " + prefix_ + "connection lost (" + detail + "); the plugin reconnects");
}

void CliHost::onSession(uint64_t session, fg_session_event event) {
  if (debug_)
    errLine("debug: " + prefix_ + "session " + std::to_string(session) +
            (event == FG_SESSION_OPENED ? " opened" : " closed"));
  hint();
}

fg_status CliHost::authorizeSubscribe(uint64_t session, std::string_view filter, std::string&) {
  if (debug_)
    errLine("debug: " + prefix_ + "session " + std::to_string(session) + " subscribed to '" + std::string(filter) +
            "'");
  hint();
  return FG_OK;  // the client tools have no bindings to protect
}

void CliHost::interrupt() {
  {
    std::lock_guard lk(mu);
    interrupted = true;
  }
  cv.notify_all();
}

void CliHost::settle(uint64_t sub_id, fg_status status, const std::string& detail) {
  {
    std::lock_guard lk(mu);
    settled[sub_id] = Settled{status, detail};
  }
  cv.notify_all();
}

void CliHost::hint() {
  {
    std::lock_guard lk(mu);
    ++hints;
  }
  cv.notify_all();
}

// ---- the acker -------------------------------------------------------------------------

Acker::Acker(PluginInstance& inst) : inst_(inst), thread_([this] { run(); }) {}

void Acker::push(uint64_t token, fg_outcome outcome) {
  {
    std::lock_guard lk(mu_);
    queue_.emplace_back(token, outcome);
  }
  cv_.notify_all();
}

void Acker::finish() {
  {
    std::lock_guard lk(mu_);
    if (done_) return;
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Acker::run() {
  std::unique_lock lk(mu_);
  while (true) {
    cv_.wait(lk, [&] { return done_ || !queue_.empty(); });
    while (!queue_.empty()) {
      auto [token, outcome] = queue_.front();
      queue_.pop_front();
      lk.unlock();
      if (inst_.hasAck()) inst_.ack(token, outcome);
      lk.lock();
    }
    if (done_) return;
  }
}

// ---- the endpoint: which plugin, which keys --------------------------------------------

Config loadConfigOrFail(const std::string& path) {
  try {
    return loadConfig(path);  // ${ENV} expanded here, like the gateway
  } catch (const ConfigError& e) {
    fail(kExitUsage, e.what());
  }
}

Resolved resolveConfigEndpoint(const Config& cfg, const std::string& name, const std::string& plugins_dir) {
  std::vector<std::string> names;
  for (auto& e : cfg.endpoints) names.push_back(e.name);
  if (name.empty()) fail(kExitUsage, "-c needs --endpoint NAME (endpoints in " + cfg.file + ": " + join(names) + ")");
  auto it = std::find_if(cfg.endpoints.begin(), cfg.endpoints.end(), [&](auto& e) { return e.name == name; });
  if (it == cfg.endpoints.end())
    fail(kExitUsage, "no endpoint '" + name + "' in " + cfg.file + " (endpoints: " + join(names) + ")");
  Resolved r;
  r.plugin = it->plugin;
  for (auto& o : it->options) r.kv.emplace_back(o.key, o.value);
  r.dir = plugins_dir.empty() ? resolvePluginsDir(cfg) : plugins_dir;
  r.label = "endpoint '" + name + "' (plugin '" + r.plugin + "') of " + cfg.file;
  r.file = cfg.file;
  return r;
}

Resolved resolveEndpoint(const EndpointArgs& a) {
  Resolved r;
  if (!a.config.empty()) {
    if (!a.plugin.empty()) fail(kExitUsage, "give either -c FILE --endpoint NAME or --plugin NAME, not both");
    r = resolveConfigEndpoint(loadConfigOrFail(a.config), a.endpoint, a.plugins_dir);
  } else {
    if (!a.endpoint.empty()) fail(kExitUsage, "--endpoint NAME needs -c FILE");
    if (a.plugin.empty())
      fail(kExitUsage, "no endpoint: give -c FILE --endpoint NAME, or --plugin NAME [--set key=value ...]");
    r.plugin = a.plugin;
    r.dir = a.plugins_dir.empty() ? resolvePluginsDir(Config{}) : a.plugins_dir;
    r.label = "plugin '" + r.plugin + "'";
  }
  for (auto& s : a.sets) {
    const auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0)
      fail(kExitUsage, "--set '" + s + "': expected key=value, e.g. --set url=tcp://127.0.0.1:1883");
    std::string key = s.substr(0, eq), value = s.substr(eq + 1);
    auto it = std::find_if(r.kv.begin(), r.kv.end(), [&](auto& kv) { return kv.first == key; });
    if (it != r.kv.end())
      it->second = value;  // overrides the config's value
    else
      r.kv.emplace_back(std::move(key), std::move(value));
  }
  return r;
}

std::shared_ptr<PluginLibrary> loadPlugin(const Resolved& r, const EndpointArgs& a) {
  const std::string path = pluginPath(r.dir, r.plugin);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    auto names = availablePlugins(r.dir);
    fail(kExitUsage, "unknown plugin '" + r.plugin + "' (no " + path +
                         "); available: " + (names.empty() ? "none in " + r.dir : join(names)));
  }
  std::shared_ptr<PluginLibrary> lib;
  try {
    lib = PluginLibrary::load(path, r.plugin);
  } catch (const PluginError& e) {
    fail(kExitUsage, "cannot use plugin '" + r.plugin + "': " + e.what());
  }
  for (auto& [key, value] : r.kv) {
    if (lib->acceptsKey(key)) continue;
    const bool from_set =
        std::any_of(a.sets.begin(), a.sets.end(), [&](auto& s) { return s.rfind(key + "=", 0) == 0; });
    fail(kExitUsage, std::string(from_set ? "--set " : r.file + ": endpoints." + a.endpoint + ".") + key +
                         ": unknown key for plugin '" + r.plugin + "' (accepted: " + join(lib->configKeys()) + ")");
  }
  return lib;
}

std::unique_ptr<PluginInstance> createInstance(const Resolved& r, std::shared_ptr<PluginLibrary> lib, CliHost& host) {
  try {
    return std::make_unique<PluginInstance>(std::move(lib), host, r.kv);
  } catch (const PluginError& e) {
    fail(kExitUsage, r.label + ": " + e.what());
  }
}

void startInstance(PluginInstance& inst, CliHost& host, const Resolved& r) {
  const fg_status st = inst.start();
  if (st == FG_OK) return;
  std::string why;
  {
    std::lock_guard lk(host.mu);
    why = !host.last_detail.empty() ? host.last_detail : host.last_problem;
  }
  fail(kExitFailure, "cannot start " + r.label + ": " + statusName(st) + (why.empty() ? "" : ": " + why));
}

bool waitUp(CliHost& host, const EndpointArgs& a, const Resolved& r, const std::function<bool()>& ready) {
  const auto deadline = Clock::now() + seconds(a.connect_timeout_s);
  std::unique_lock lk(host.mu);
  while (true) {
    if (host.interrupted) return false;
    if (host.refused)
      fail(kExitFailure, "cannot connect (" + r.label + "): " +
                             (host.last_detail.empty() ? std::string(stateName(host.last_state)) : host.last_detail));
    // Up once is enough: a connection lost after that is the plugin's to restore (it may
    // already have come and gone, e.g. a server that sent everything and closed).
    if ((host.ever_up || host.received) && ready()) return true;
    if (host.cv.wait_until(lk, deadline) == std::cv_status::timeout && Clock::now() >= deadline) {
      if (host.ever_up || host.received) return true;  // the caller says what is missing
      fail(kExitFailure, "cannot connect (" + r.label + "): not up within " + secondsText(a.connect_timeout_s) +
                             " (--connect-timeout); last state: " + stateName(host.last_state) +
                             (host.last_detail.empty() ? "" : ": " + host.last_detail) +
                             (host.last_problem.empty() ? "" : "; last warning: " + host.last_problem));
    }
  }
}

void checkEndpointArgs(const EndpointArgs& a) {
  if (!(a.connect_timeout_s > 0)) fail(kExitUsage, "--connect-timeout must be more than 0 seconds");
}

void subscribeAll(PluginInstance& inst, const std::vector<std::string>& filters) {
  for (size_t i = 0; i < filters.size(); ++i) {
    const fg_status st = inst.subscribe(filters[i], i + 1);
    if (st == FG_ERR_INVALID_ARG)
      fail(kExitUsage, "-t '" + filters[i] + "': refused by the plugin as an invalid filter");
    if (st != FG_OK) fail(kExitFailure, "cannot subscribe to '" + filters[i] + "': " + statusName(st));
  }
}

std::optional<std::string> subscriptionRefusal(const CliHost& host, const std::vector<std::string>& filters) {
  for (auto& [id, s] : host.settled)
    if (s.status != FG_OK && id >= 1 && id <= filters.size())
      return "subscription to '" + filters[id - 1] +
             "' refused: " + (s.detail.empty() ? statusName(s.status) : s.detail);
  return std::nullopt;
}

bool waitSubscribed(CliHost& host, const PluginInstance& inst, const EndpointArgs& a, const Resolved& r,
                    const std::vector<std::string>& filters) {
  const bool acked = inst.library().capabilities() & FG_CAP_SUBSCRIBE_ACK;
  auto allSettled = [&] {  // under host.mu
    if (subscriptionRefusal(host, filters)) return true;
    if (!acked) return true;
    for (size_t i = 1; i <= filters.size(); ++i)
      if (!host.settled.count(i)) return false;
    return true;
  };
  if (!waitUp(host, a, r, allSettled)) return false;
  std::unique_lock lk(host.mu);
  if (auto why = subscriptionRefusal(host, filters)) fail(kExitFailure, *why);
  if (!allSettled()) {
    std::vector<std::string> missing;
    for (size_t i = 1; i <= filters.size(); ++i)
      if (!host.settled.count(i)) missing.push_back("'" + filters[i - 1] + "'");
    fail(kExitFailure,
         "no subscription confirmation within " + secondsText(a.connect_timeout_s) + " for " + join(missing));
  }
  return true;
}

}  // namespace fingate::cli
