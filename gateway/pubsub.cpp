// `fingate pub` / `fingate sub` (docs/cli.md). One plugin instance, driven through the C ABI
// exactly as the gateway drives an endpoint, with no transport-specific code here:
//  - the endpoint is up when the plugin reports FG_STATE_UP; a DOWN or FAILED before the first UP
//    is a refused connection (the plugin's detail is the error), like mosquitto_pub;
//  - pub: a publish counts only when the transport confirms it (FG_CAP_DELIVERY: on_delivery
//    OK); FAILED and NO_RECEIVER are errors, NO_RECEIVER is first retried until --timeout (a
//    server-side endpoint waits for a subscriber); FG_RETRY from publish() is back-pressure:
//    the same message again after a back-off;
//  - sub: subscriptions are made before start() (the plugin restores them on connect, so UP means
//    they are in place), confirmed by FG_EVENT_SUBSCRIPTION when the plugin has
//    FG_CAP_SUBSCRIBE_ACK; every inbound token is acked DELIVERED after its line was written and
//    flushed (from a thread of our own: never inside on_message).
// Signals: SIGINT/SIGTERM are taken synchronously by one thread; a second one exits at once (130).
#include "pubsub.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fingate/config.hpp>
#include <fingate/fin_codec.hpp>
#include <fingate/gateway.hpp>
#include <fingate/plugin_loader.hpp>
#include <fingate/topic.hpp>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "redact.hpp"

namespace fingate::cli {

namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

constexpr uint32_t kStopTimeoutMs = 2000;   // plugin stop(): flush what it can
constexpr size_t kWindow = 256;             // publishes awaiting confirmation at once (after the first)
constexpr auto kNoReceiverRetry = Ms(200);  // NO_RECEIVER: publish again this often (or on a new session)
constexpr auto kBusyBackoffMax = Ms(50);    // FG_RETRY / FG_ERR_UNAVAILABLE: longest back-off

// What ends a command: an exit code and one line for stderr (empty: nothing to say).
struct Failure {
  int code;
  std::string message;
};
[[noreturn]] void fail(int code, std::string message) { throw Failure{code, std::move(message)}; }

std::mutex g_err_mu;
// One line on stderr; URL credentials are masked whatever a plugin put in the text.
void errLine(const std::string& text) {
  std::lock_guard lk(g_err_mu);
  std::string clean = redactText(text);
  std::fprintf(stderr, "%s\n", clean.c_str());
  std::fflush(stderr);
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

std::string secondsText(double s) {
  std::ostringstream o;
  o << s << " s";
  return o.str();
}

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

// ---- signals ---------------------------------------------------------------------------

// SIGINT/SIGTERM are blocked in every thread (plugin threads inherit the mask: construct this
// before any plugin starts) and taken by one thread with sigwait. The first calls on_signal; a
// second one ends the process at once.
class Signals {
 public:
  explicit Signals(std::function<void()> on_signal) : on_signal_(std::move(on_signal)) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGUSR2);  // our own wake-up at the end
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a closed stdout or socket is an error value, not a death
    thread_ = std::thread([this] { run(); });
  }
  ~Signals() {
    quit_ = true;
    pthread_kill(thread_.native_handle(), SIGUSR2);
    thread_.join();
  }
  Signals(const Signals&) = delete;
  Signals& operator=(const Signals&) = delete;

 private:
  void run() {
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
  sigset_t set_;
  std::function<void()> on_signal_;
  std::atomic<bool> quit_{false};
  std::thread thread_;
};

// ---- the host of the one instance ------------------------------------------------------

// Records what the plugin reports; the command's thread waits on `cv` and reads under `mu`.
class CliHost final : public PluginHost {
 public:
  using MessageFn = std::function<fg_status(uint64_t, const fg_message&, uint64_t)>;
  struct Settled {
    fg_status status;
    std::string detail;
  };

  explicit CliHost(bool debug) : debug_(debug) {}

  void setMessageHandler(MessageFn fn) { message_ = std::move(fn); }

  void log(fg_log_level level, std::string_view msg) override {
    if (level >= FG_LOG_WARN) {
      std::lock_guard lk(mu);
      last_problem = std::string(msg);
    }
    if (debug_) errLine(std::string("debug: plugin ") + levelName(level) + ": " + std::string(msg));
  }

  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) override {
    {
      // A message came: the connection works, whatever state the plugin reported so far (a
      // server may send everything and close before the client's own "up" handshake ends).
      std::lock_guard lk(mu);
      received = true;
    }
    cv.notify_all();
    return message_ ? message_(sub_id, msg, token) : FG_ERR_STATE;
  }

  void onEvent(const fg_event& ev) override {
    const std::string detail = ev.detail ? ev.detail : "";
    if (ev.kind == FG_EVENT_SUBSCRIPTION) {
      settle(ev.sub_id, ev.status, detail);
    } else if (ev.kind == FG_EVENT_SESSION_WRITABLE) {
      hint();
    } else if (ev.kind == FG_EVENT_CONNECTION && debug_) {
      errLine(std::string("debug: connection facts:") + ((ev.flags & FG_CONN_NO_LOCAL) ? " no-local" : " none"));
    }
  }

  void onDelivery(uint64_t delivery_id, fg_delivery status) override {
    {
      std::lock_guard lk(mu);
      deliveries.emplace_back(delivery_id, status);
    }
    cv.notify_all();
  }

  void onState(fg_state state, std::string_view detail_view) override {
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
      errLine(std::string("debug: endpoint ") + stateName(state) + (detail.empty() ? "" : ": " + detail));
    else if (lost)
      errLine(std::string("warning: connection lost (") + detail + "); the plugin reconnects");
  }

  void onSession(uint64_t session, fg_session_event event) override {
    if (debug_)
      errLine("debug: session " + std::to_string(session) + (event == FG_SESSION_OPENED ? " opened" : " closed"));
    hint();
  }

  fg_status authorizeSubscribe(uint64_t session, std::string_view filter, std::string&) override {
    if (debug_) errLine("debug: session " + std::to_string(session) + " subscribed to '" + std::string(filter) + "'");
    hint();
    return FG_OK;  // pub/sub has no bindings to protect
  }

  void interrupt() {
    {
      std::lock_guard lk(mu);
      interrupted = true;
    }
    cv.notify_all();
  }

  bool debug() const { return debug_; }

  // Guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  bool up = false, ever_up = false, refused = false, interrupted = false;
  bool received = false;  // a message arrived (the endpoint worked even if it never said up)
  fg_state last_state = FG_STATE_STARTING;
  std::string last_detail, last_problem;
  std::deque<std::pair<uint64_t, fg_delivery>> deliveries;
  std::map<uint64_t, Settled> settled;  // sub id -> what FG_EVENT_SUBSCRIPTION said last
  uint64_t hints = 0;                   // sessions opened, client subscriptions, writable sessions

 private:
  void settle(uint64_t sub_id, fg_status status, const std::string& detail) {
    {
      std::lock_guard lk(mu);
      settled[sub_id] = Settled{status, detail};
    }
    cv.notify_all();
  }
  void hint() {
    {
      std::lock_guard lk(mu);
      ++hints;
    }
    cv.notify_all();
  }
  const bool debug_;
  MessageFn message_;
};

// Acks outcome tokens from a thread of its own (the ABI forbids acking inside on_message).
class Acker {
 public:
  explicit Acker(PluginInstance& inst) : inst_(inst), thread_([this] { run(); }) {}
  ~Acker() { finish(); }
  Acker(const Acker&) = delete;
  Acker& operator=(const Acker&) = delete;
  void push(uint64_t token, fg_outcome outcome) {
    {
      std::lock_guard lk(mu_);
      queue_.emplace_back(token, outcome);
    }
    cv_.notify_all();
  }
  // Acks everything queued, then ends the thread (before the plugin is stopped).
  void finish() {
    {
      std::lock_guard lk(mu_);
      if (done_) return;
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void run() {
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
  PluginInstance& inst_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<uint64_t, fg_outcome>> queue_;
  bool done_ = false;
  std::thread thread_;
};

// ---- the endpoint: which plugin, which keys --------------------------------------------

struct Resolved {
  std::string plugin;
  std::string dir;
  std::vector<std::pair<std::string, std::string>> kv;
  std::string label;  // for messages: "plugin 'mqtt'" or "endpoint 'soarca' (plugin 'mqtt') of FILE"
  std::string file;   // the config file, when -c
};

std::vector<std::string> availablePlugins(const std::string& dir) {
  std::vector<std::string> names;
  for (auto& p : listPlugins(dir))
    if (p.error.empty()) names.push_back(p.name);
  return names;
}

Resolved resolveEndpoint(const EndpointArgs& a) {
  Resolved r;
  if (!a.config.empty()) {
    if (!a.plugin.empty()) fail(kExitUsage, "give either -c FILE --endpoint NAME or --plugin NAME, not both");
    Config cfg;
    try {
      cfg = loadConfig(a.config);  // ${ENV} expanded here, like the gateway
    } catch (const ConfigError& e) {
      fail(kExitUsage, e.what());
    }
    std::vector<std::string> names;
    for (auto& e : cfg.endpoints) names.push_back(e.name);
    if (a.endpoint.empty())
      fail(kExitUsage, "-c needs --endpoint NAME (endpoints in " + a.config + ": " + join(names) + ")");
    auto it = std::find_if(cfg.endpoints.begin(), cfg.endpoints.end(), [&](auto& e) { return e.name == a.endpoint; });
    if (it == cfg.endpoints.end())
      fail(kExitUsage, "no endpoint '" + a.endpoint + "' in " + a.config + " (endpoints: " + join(names) + ")");
    r.plugin = it->plugin;
    for (auto& o : it->options) r.kv.emplace_back(o.key, o.value);
    r.dir = a.plugins_dir.empty() ? resolvePluginsDir(cfg) : a.plugins_dir;
    r.label = "endpoint '" + a.endpoint + "' (plugin '" + r.plugin + "') of " + a.config;
    r.file = a.config;
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

// The plugin's create(): its own check of every value.
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

// Waits until the endpoint is up and `ready` (called under host.mu) holds. A DOWN or FAILED
// before the first UP is a refused connection. false = interrupted.
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

// ---- pub -------------------------------------------------------------------------------

// Where the messages come from.
class Source {
 public:
  enum class Next { Got, End, NotYet };
  explicit Source(const PubArgs& a) : a_(a) {
    if (a.lines) return;
    if (a.has_message)
      one_ = a.message;
    else if (a.null_message)
      one_ = "";
    else if (!a.file.empty())
      one_ = readWhole(a.file);
    else if (a.stdin_whole)
      one_ = readStdin();
  }
  Next next(std::string& out, CliHost& host) {
    if (!a_.lines) {
      if (given_ >= a_.count) return Next::End;
      ++given_;
      out = one_;
      return Next::Got;
    }
    while (true) {
      auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        out = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (out.empty()) continue;  // blank lines are not sent (as mosquitto_pub -l)
        return Next::Got;
      }
      if (eof_) {
        if (buf_.empty()) return Next::End;
        out.swap(buf_);
        buf_.clear();
        return Next::Got;
      }
      {
        std::lock_guard lk(host.mu);
        if (host.interrupted) return Next::End;
      }
      pollfd p{0, POLLIN, 0};
      const int n = ::poll(&p, 1, 100);
      if (n == 0) return Next::NotYet;
      if (n < 0) {
        if (errno == EINTR) return Next::NotYet;
        fail(kExitFailure, std::string("cannot read stdin: ") + std::strerror(errno));
      }
      char chunk[65536];
      const ssize_t got = ::read(0, chunk, sizeof chunk);
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) return Next::NotYet;
        fail(kExitFailure, std::string("cannot read stdin: ") + std::strerror(errno));
      }
      if (got == 0)
        eof_ = true;
      else
        buf_.append(chunk, static_cast<size_t>(got));
    }
  }

 private:
  static std::string readWhole(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(kExitUsage, "-f " + path + ": cannot read: " + std::strerror(errno));
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }
  static std::string readStdin() {
    std::string all;
    char chunk[65536];
    while (true) {
      const ssize_t got = ::read(0, chunk, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(kExitFailure, std::string("cannot read stdin: ") + std::strerror(errno));
      if (got == 0) return all;
      all.append(chunk, static_cast<size_t>(got));
    }
  }
  const PubArgs& a_;
  std::string one_;
  uint64_t given_ = 0;
  std::string buf_;
  bool eof_ = false;
};

class Publisher {
 public:
  Publisher(const PubArgs& a, PluginInstance& inst, CliHost& host)
      : a_(a), inst_(inst), host_(host), tracked_(inst.library().capabilities() & FG_CAP_DELIVERY) {}

  // Returns the exit code (failures throw).
  int run(Source& src) {
    const auto interval = a_.rate > 0 ? seconds(1.0 / a_.rate) : Clock::duration::zero();
    auto next_slot = Clock::now();
    bool source_done = false;
    while (true) {
      handleEvents();
      if (interrupted()) source_done = true;
      resendDue();
      checkDeadlines();
      const size_t window = confirmed_ > 0 ? kWindow : 1;  // one at a time until something got through
      bool polled = false;
      if (!source_done && inflight_.size() + retry_.size() < window && Clock::now() >= next_slot) {
        std::string payload;
        switch (src.next(payload, host_)) {
          case Source::Next::Got:
            issue(Pending{++issued_, std::move(payload), Clock::now() + seconds(a_.timeout_s), {}});
            next_slot = std::max(next_slot + interval, Clock::now());  // no burst after a stall
            continue;
          case Source::Next::End:
            source_done = true;
            break;
          case Source::Next::NotYet:
            polled = true;
            break;
        }
      }
      if (source_done && inflight_.empty() && retry_.empty()) break;
      if (!polled) waitSomething(source_done ? Clock::time_point::max() : next_slot);
    }
    if (host_.debug())
      errLine("debug: " + std::to_string(confirmed_) + " message(s) published on '" + a_.topic + "'" +
              (tracked_ ? ", each confirmed by the transport" : ""));
    return kExitOk;
  }

 private:
  struct Pending {
    uint64_t index;  // 1-based, in publish order
    std::string payload;
    Clock::time_point deadline;
    Clock::time_point retry_at;
  };

  bool interrupted() {
    std::lock_guard lk(host_.mu);
    return host_.interrupted;
  }

  std::string which(const Pending& p) const { return "message " + std::to_string(p.index) + " on '" + a_.topic + "'"; }

  // Hands one message to the plugin; FG_RETRY/UNAVAILABLE are retried with a back-off until its
  // deadline.
  void issue(Pending p) {
    const uint64_t id = tracked_ ? ++next_delivery_id_ : 0;
    fg_message m{};
    m.topic = fg_str{a_.topic.data(), a_.topic.size()};
    m.payload = fg_str{p.payload.data(), p.payload.size()};
    auto backoff = Ms(1);
    while (true) {
      const fg_status st = inst_.publish(m, id);
      if (st == FG_OK) break;
      if (st == FG_RETRY || st == FG_ERR_UNAVAILABLE) {
        if (Clock::now() >= p.deadline)
          fail(st == FG_RETRY ? kExitTimeout : kExitFailure,
               which(p) + ": the endpoint did not take it within " + secondsText(a_.timeout_s) + " (" +
                   (st == FG_RETRY ? "busy: FG_RETRY" : "unavailable") + ")");
        std::unique_lock lk(host_.mu);
        host_.cv.wait_for(lk, backoff);
        backoff = std::min<Ms>(backoff * 2, std::chrono::duration_cast<Ms>(kBusyBackoffMax));
        continue;
      }
      if (st == FG_ERR_INVALID_ARG)
        fail(kExitUsage, which(p) + ": refused by the plugin as invalid (a topic or payload it cannot carry)");
      fail(kExitFailure, which(p) + ": publish failed: " + statusName(st));
    }
    if (!tracked_) {  // no delivery reports from this plugin: taken is all it can say
      ++confirmed_;
      return;
    }
    inflight_.emplace(id, std::move(p));
  }

  void handleEvents() {
    std::deque<std::pair<uint64_t, fg_delivery>> got;
    {
      std::lock_guard lk(host_.mu);
      got.swap(host_.deliveries);
    }
    for (auto& [id, status] : got) {
      auto it = inflight_.find(id);
      if (it == inflight_.end()) continue;
      Pending p = std::move(it->second);
      inflight_.erase(it);
      if (status == FG_DELIVERY_OK) {
        ++confirmed_;
        if (host_.debug()) errLine("debug: " + which(p) + " delivered");
      } else if (status == FG_DELIVERY_NO_RECEIVER) {
        if (Clock::now() >= p.deadline) noReceiver(p);
        if (host_.debug()) errLine("debug: " + which(p) + ": no receiver yet; publishing again until --timeout");
        p.retry_at = Clock::now() + kNoReceiverRetry;
        std::lock_guard lk(host_.mu);
        p_hints_ = host_.hints;
        retry_.push_back(std::move(p));
      } else {
        fail(kExitFailure, which(p) + ": delivery failed (the transport reported FAILED)");
      }
    }
  }

  [[noreturn]] void noReceiver(const Pending& p) {
    fail(kExitFailure, which(p) + ": no receiver: nobody took it within " + secondsText(a_.timeout_s) +
                           " (a publish nobody received is a dead letter, not a success)");
  }

  // NO_RECEIVER messages go out again in order: after kNoReceiverRetry, or at once when a client
  // opened a session or subscribed.
  void resendDue() {
    if (retry_.empty()) return;
    uint64_t hints;
    {
      std::lock_guard lk(host_.mu);
      hints = host_.hints;
    }
    const auto now = Clock::now();
    while (!retry_.empty()) {
      if (now >= retry_.front().deadline) noReceiver(retry_.front());
      if (retry_.front().retry_at > now && hints == p_hints_) break;
      Pending p = std::move(retry_.front());
      retry_.pop_front();
      issue(std::move(p));
    }
  }

  void checkDeadlines() {
    const auto now = Clock::now();
    for (auto& [id, p] : inflight_)
      if (now >= p.deadline)
        fail(kExitTimeout,
             which(p) + ": no delivery confirmation within " + secondsText(a_.timeout_s) + " (--timeout)");
  }

  void waitSomething(Clock::time_point until) {
    for (auto& [id, p] : inflight_) until = std::min(until, p.deadline);
    for (auto& p : retry_) until = std::min({until, p.retry_at, p.deadline});
    std::unique_lock lk(host_.mu);
    host_.cv.wait_until(lk, std::min(until, Clock::now() + Ms(500)), [&] {
      return !host_.deliveries.empty() || host_.interrupted || (!retry_.empty() && host_.hints != p_hints_);
    });
  }

  const PubArgs& a_;
  PluginInstance& inst_;
  CliHost& host_;
  const bool tracked_;
  uint64_t next_delivery_id_ = 0, issued_ = 0, confirmed_ = 0;
  uint64_t p_hints_ = 0;
  std::map<uint64_t, Pending> inflight_;  // delivery id -> message
  std::deque<Pending> retry_;             // NO_RECEIVER, to publish again
};

void checkPubArgs(const PubArgs& a) {
  checkEndpointArgs(a.ep);
  if (a.topic.empty()) fail(kExitUsage, "no topic: give -t TOPIC");
  if (hasWildcard(a.topic)) fail(kExitUsage, "-t '" + a.topic + "': a publish topic cannot have wildcards (+ or #)");
  const int sources =
      int(a.has_message) + int(!a.file.empty()) + int(a.lines) + int(a.stdin_whole) + int(a.null_message);
  if (sources == 0)
    fail(kExitUsage, "no message: give -m MESSAGE, -f FILE, -l (stdin lines), -s (stdin) or -n (empty)");
  if (sources > 1) fail(kExitUsage, "give only one of -m, -f, -l, -s, -n");
  if (a.count == 0) fail(kExitUsage, "--count must be at least 1");
  if (a.lines && a.count != 1) fail(kExitUsage, "--count repeats one message; it cannot be used with -l");
  if (a.rate < 0 || !std::isfinite(a.rate))
    fail(kExitUsage, "--rate must be 0 (no limit) or a positive number of messages/s");
  if (!(a.timeout_s > 0)) fail(kExitUsage, "--timeout must be more than 0 seconds");
}

// ---- sub -------------------------------------------------------------------------------

std::string base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = uint32_t(static_cast<unsigned char>(in[i])) << 16 |
                       uint32_t(static_cast<unsigned char>(in[i + 1])) << 8 | static_cast<unsigned char>(in[i + 2]);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += t[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(static_cast<unsigned char>(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(static_cast<unsigned char>(in[i + 1])) << 8;
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// Prints inbound messages (from plugin threads) and acks their tokens.
class Printer {
 public:
  Printer(const SubArgs& a, CliHost& host) : a_(a), host_(host) {}
  void setAcker(Acker* acker) { acker_ = acker; }
  bool ours(uint64_t sub_id) const { return sub_id >= 1 && sub_id <= a_.topics.size(); }

  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) {
    const std::string_view topic(msg.topic.data ? msg.topic.data : "", msg.topic.len);
    const std::string_view payload(msg.payload.data ? msg.payload.data : "", msg.payload.len);
    // Session transports hand in every client publish with sub id 0: only our topics are printed.
    if (!ours(sub_id) &&
        !std::any_of(a_.topics.begin(), a_.topics.end(), [&](auto& f) { return topicMatches(f, topic); })) {
      std::lock_guard lk(mu_);
      if (closing_) return FG_RETRY;
      if (token) acker_->push(token, FG_OUTCOME_FILTERED);  // consumed on purpose
      return FG_OK;
    }
    {
      std::lock_guard lk(mu_);
      if (closing_) return FG_RETRY;  // not taken: the plugin keeps it (Kafka: not committed)
      line_.clear();
      if (a_.json) {
        line_ += "{\"topic\":\"";
        fin::appendJsonEscaped(line_, topic);
        if (isValidUtf8(payload)) {
          line_ += "\",\"payload\":\"";
          fin::appendJsonEscaped(line_, payload);
        } else {
          line_ += "\",\"payload_base64\":\"";
          line_ += base64(payload);
        }
        line_ += "\"}\n";
      } else {
        if (a_.verbose) {
          line_.append(topic);
          line_ += ' ';
        }
        line_.append(payload);
        line_ += '\n';
      }
      if (std::fwrite(line_.data(), 1, line_.size(), stdout) != line_.size() || std::fflush(stdout) != 0) {
        write_error_ = std::strerror(errno);
        closing_ = true;
        notify();
        return FG_RETRY;  // not printed: not delivered
      }
      ++printed_;
      if (a_.count && printed_ >= a_.count) closing_ = true;
      // Queued under the same lock as the count: whoever sees the count (the main thread
      // finishing at -C) finds the ack queued, and the acker drains it before the plugin stops.
      if (token) acker_->push(token, FG_OUTCOME_DELIVERED);
    }
    notify();
    return FG_OK;
  }

  // From now on nothing more is taken.
  void close() {
    std::lock_guard lk(mu_);
    closing_ = true;
  }
  uint64_t printed() {
    std::lock_guard lk(mu_);
    return printed_;
  }
  std::string writeError() {
    std::lock_guard lk(mu_);
    return write_error_;
  }

 private:
  void notify() {
    { std::lock_guard lk(host_.mu); }
    host_.cv.notify_all();
  }
  const SubArgs& a_;
  CliHost& host_;
  Acker* acker_ = nullptr;
  std::mutex mu_;  // one line at a time, in order
  std::string line_;
  bool closing_ = false;
  uint64_t printed_ = 0;
  std::string write_error_;
};

void checkSubArgs(const SubArgs& a) {
  checkEndpointArgs(a.ep);
  if (a.topics.empty()) fail(kExitUsage, "no topic: give -t TOPIC (repeatable)");
  for (auto& t : a.topics)
    if (!isValidFilter(t))
      fail(kExitUsage, "-t '" + t + "': not a valid topic filter ('+' and '#' must be whole levels, '#' the last)");
  if (a.verbose && a.json) fail(kExitUsage, "give -v or --json, not both");
  if (a.timeout_s < 0 || !std::isfinite(a.timeout_s)) fail(kExitUsage, "--timeout must be 0 (none) or more seconds");
}

// Shared by pub and sub: turns a Failure into its line and exit code.
template <class F>
int guarded(F&& body) {
  try {
    return body();
  } catch (const Failure& f) {
    if (!f.message.empty()) errLine("error: " + f.message);
    return f.code;
  }
}

void addEndpointOptions(CLI::App& cmd, EndpointArgs& a) {
  cmd.add_option("-c,--config", a.config, "Config file whose endpoint to use (with --endpoint)");
  cmd.add_option("--endpoint", a.endpoint, "Endpoint name in the config file");
  cmd.add_option("--plugin", a.plugin, "Plugin name (tcp, mqtt, ...), instead of -c");
  cmd.add_option("--set", a.sets, "Plugin key=value (repeatable; with -c adds or overrides a key)");
  cmd.add_option("--plugins-dir", a.plugins_dir,
                 "Plugin directory (default: the config's plugins_dir, else ../plugins next to the binary)");
  cmd.add_option("--connect-timeout", a.connect_timeout_s, "Seconds to wait for the endpoint to come up (default 10)");
  cmd.add_flag("-d,--debug", a.debug, "Endpoint states, events and plugin log lines on stderr");
}

}  // namespace

CLI::App* addPubCommand(CLI::App& app, PubArgs& a) {
  auto* cmd = app.add_subcommand("pub", "Publish messages on a topic through any plugin (like mosquitto_pub)");
  addEndpointOptions(*cmd, a.ep);
  cmd->add_option("-t,--topic", a.topic, "Topic to publish on");
  cmd->add_option_function<std::string>(
      "-m,--message",
      [&a](const std::string& m) {
        a.message = m;
        a.has_message = true;
      },
      "Message payload");
  cmd->add_option("-f,--file", a.file, "Send the whole file as one message");
  cmd->add_flag("-l,--stdin-line", a.lines, "Send stdin, one message per line (blank lines skipped)");
  cmd->add_flag("-s,--stdin-file", a.stdin_whole, "Send the whole of stdin as one message");
  cmd->add_flag("-n,--null-message", a.null_message, "Send one empty message");
  cmd->add_option("--count", a.count, "Publish the message this many times (default 1)");
  cmd->add_option("--rate", a.rate, "Messages per second (default: no limit)");
  cmd->add_option("--timeout", a.timeout_s,
                  "Seconds each message may take to be confirmed, or to find a receiver (default 10)");
  return cmd;
}

CLI::App* addSubCommand(CLI::App& app, SubArgs& a) {
  auto* cmd =
      app.add_subcommand("sub", "Subscribe to topics through any plugin and print messages (like mosquitto_sub)");
  addEndpointOptions(*cmd, a.ep);
  cmd->add_option("-t,--topic", a.topics, "Topic filter (repeatable; + and # wildcards)");
  cmd->add_flag("-v,--verbose", a.verbose, "Print 'topic payload' lines");
  cmd->add_flag("--json", a.json, "Print JSON lines {\"topic\":...,\"payload\":...} (payload_base64 when not UTF-8)");
  cmd->add_option("-C,--count", a.count, "Exit after this many messages");
  cmd->add_option("-W,--timeout", a.timeout_s, "Exit with code 27 when this many seconds pass before -C messages");
  return cmd;
}

int pub(const PubArgs& a) {
  return guarded([&] {
    checkPubArgs(a);
    Resolved r = resolveEndpoint(a.ep);
    auto lib = loadPlugin(r, a.ep);
    CliHost host(a.ep.debug);
    Signals signals([&host] { host.interrupt(); });
    Source src(a);  // reads -f / -s before anything connects
    auto inst = createInstance(r, lib, host);
    struct Stopper {
      PluginInstance& inst;
      ~Stopper() { inst.stop(kStopTimeoutMs); }
    } stopper{*inst};
    startInstance(*inst, host, r);
    if (!waitUp(host, a.ep, r, [] { return true; })) return kExitOk;  // interrupted before anything was sent
    Publisher pub(a, *inst, host);
    return pub.run(src);
  });
}

int sub(const SubArgs& a) {
  return guarded([&] {
    checkSubArgs(a);
    Resolved r = resolveEndpoint(a.ep);
    auto lib = loadPlugin(r, a.ep);
    CliHost host(a.ep.debug);
    Printer printer(a, host);
    host.setMessageHandler([&printer](uint64_t sub_id, const fg_message& m, uint64_t token) {
      return printer.onMessage(sub_id, m, token);
    });
    Signals signals([&host] { host.interrupt(); });
    auto inst = createInstance(r, lib, host);
    Acker acker(*inst);
    printer.setAcker(&acker);
    struct Stopper {  // nothing more printed, every printed message acked, then the plugin stops
      Printer& printer;
      Acker& acker;
      PluginInstance& inst;
      ~Stopper() {
        printer.close();
        acker.finish();
        inst.stop(kStopTimeoutMs);
      }
    } stopper{printer, acker, *inst};

    // Subscriptions before start(): the plugin makes (or restores) them when it connects, so UP
    // means they are in place; ids 1..n.
    for (size_t i = 0; i < a.topics.size(); ++i) {
      const fg_status st = inst->subscribe(a.topics[i], i + 1);
      if (st == FG_ERR_INVALID_ARG)
        fail(kExitUsage, "-t '" + a.topics[i] + "': refused by the plugin as an invalid filter");
      if (st != FG_OK) fail(kExitFailure, "cannot subscribe to '" + a.topics[i] + "': " + statusName(st));
    }
    startInstance(*inst, host, r);
    const bool acked = inst->library().capabilities() & FG_CAP_SUBSCRIBE_ACK;
    auto refusal = [&]() -> std::optional<std::string> {  // under host.mu
      for (auto& [id, s] : host.settled)
        if (s.status != FG_OK && id >= 1 && id <= a.topics.size())
          return "subscription to '" + a.topics[id - 1] +
                 "' refused: " + (s.detail.empty() ? statusName(s.status) : s.detail);
      return std::nullopt;
    };
    auto allSettled = [&] {
      if (refusal()) return true;
      if (!acked) return true;
      for (size_t i = 1; i <= a.topics.size(); ++i)
        if (!host.settled.count(i)) return false;
      return true;
    };
    if (!waitUp(host, a.ep, r, allSettled)) return kExitOk;
    {
      std::unique_lock lk(host.mu);
      if (auto why = refusal()) fail(kExitFailure, *why);
      if (!allSettled()) {
        std::vector<std::string> missing;
        for (size_t i = 1; i <= a.topics.size(); ++i)
          if (!host.settled.count(i)) missing.push_back("'" + a.topics[i - 1] + "'");
        fail(kExitFailure,
             "no subscription confirmation within " + secondsText(a.ep.connect_timeout_s) + " for " + join(missing));
      }
    }
    if (host.debug())
      for (auto& t : a.topics) errLine("debug: subscribed to '" + t + "'");

    const auto deadline = a.timeout_s > 0 ? Clock::now() + seconds(a.timeout_s) : Clock::time_point::max();
    std::unique_lock lk(host.mu);
    while (true) {
      if (auto why = refusal()) fail(kExitFailure, *why);  // e.g. refused again after a reconnect
      if (host.interrupted) return kExitOk;
      lk.unlock();
      const uint64_t n = printer.printed();
      const std::string werr = printer.writeError();
      lk.lock();
      if (!werr.empty()) fail(kExitFailure, "cannot write to stdout: " + werr);
      if (a.count && n >= a.count) return kExitOk;
      if (Clock::now() >= deadline)
        fail(kExitTimeout, "timed out after " + secondsText(a.timeout_s) + " with " + std::to_string(n) +
                               (a.count ? " of " + std::to_string(a.count) : std::string()) + " message(s)");
      host.cv.wait_until(lk, std::min(deadline, Clock::now() + Ms(500)));
    }
  });
}

}  // namespace fingate::cli
