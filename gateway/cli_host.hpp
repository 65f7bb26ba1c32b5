// What the client tools share (`fingate pub`, `fingate sub`, `fingate migrate verify`): one
// plugin instance per endpoint, driven through the C ABI exactly as the gateway drives an
// endpoint, with no transport-specific code:
//  - the endpoint is up when the plugin reports FG_STATE_UP; a DOWN or FAILED before the first UP
//    is a refused connection (the plugin's detail is the error);
//  - subscriptions are made before start() (the plugin restores them on connect, so UP means they
//    are in place), confirmed by FG_EVENT_SUBSCRIPTION when the plugin has FG_CAP_SUBSCRIBE_ACK;
//  - inbound tokens are acked from a thread of our own (Acker: never inside on_message).
// Errors end a command through fail() (an exit code and one line for stderr), caught by guarded().
// Signals: SIGINT/SIGTERM are taken synchronously by one thread; a second one exits at once (130).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <deque>
#include <fingate/config.hpp>
#include <fingate/plugin_loader.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "cli_format.hpp"

namespace fingate::cli {

// Exit codes of the client tools (docs/cli.md, "Exit codes").
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;   // connection refused/failed, delivery failed, refused, differences found
inline constexpr int kExitUsage = 2;     // bad options, config or plugin keys, unknown plugin
inline constexpr int kExitTimeout = 27;  // --timeout expired (mosquitto_sub's MOSQ_ERR_TIMEOUT)

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

inline constexpr uint32_t kStopTimeoutMs = 2000;  // plugin stop(): flush what it can

// Where the endpoint comes from: a config file's endpoint, or a plugin with inline keys.
struct EndpointArgs {
  std::string config;             // -c FILE
  std::string endpoint;           // --endpoint NAME (with -c)
  std::string plugin;             // --plugin NAME
  std::vector<std::string> sets;  // --set key=value (repeatable; with -c: added or overriding)
  std::string plugins_dir;        // --plugins-dir DIR (default: the config's, else the gateway's)
  double connect_timeout_s = 10;  // --connect-timeout
  bool debug = false;             // -d: states, events and plugin log lines on stderr
};

// ---- errors ----------------------------------------------------------------------------

// What ends a command: an exit code and one line for stderr (empty: nothing to say).
struct Failure {
  int code;
  std::string message;
};
[[noreturn]] void fail(int code, std::string message);

// One line on stderr; URL credentials are masked whatever a plugin put in the text. A progress
// line on screen is cleared first (it is drawn again on its next update).
void errLine(const std::string& text);
// The one progress line of a terminal: drawn again in place ("\r", erase to the end of line).
void drawProgressLine(const std::string& line);
void clearProgressLine();  // erased, when one is shown

// Runs a command body: a Failure becomes its "error: ..." line and exit code.
template <class F>
int guarded(F&& body) {
  try {
    return body();
  } catch (const Failure& f) {
    if (!f.message.empty()) errLine("error: " + f.message);
    return f.code;
  }
}

Clock::duration seconds(double s);
std::string secondsText(double s);  // "10 s"

// ---- signals ---------------------------------------------------------------------------

// SIGINT/SIGTERM are blocked in every thread (plugin threads inherit the mask: construct this
// before any plugin starts) and taken by one thread with sigwait. The first calls on_signal; a
// second one ends the process at once.
class Signals {
 public:
  explicit Signals(std::function<void()> on_signal);
  ~Signals();
  Signals(const Signals&) = delete;
  Signals& operator=(const Signals&) = delete;

 private:
  void run();
  sigset_t set_;
  std::function<void()> on_signal_;
  std::atomic<bool> quit_{false};
  std::thread thread_;
};

// ---- the host of one instance ----------------------------------------------------------

// Records what the plugin reports; the command's thread waits on `cv` and reads under `mu`.
class CliHost final : public PluginHost {
 public:
  using MessageFn = std::function<fg_status(uint64_t, const fg_message&, uint64_t)>;
  struct Settled {
    fg_status status;
    std::string detail;
  };

  // prefix: put before debug and warning lines ("" for pub/sub; "old: " for one side of verify).
  explicit CliHost(bool debug, std::string prefix = "") : debug_(debug), prefix_(std::move(prefix)) {}

  void setMessageHandler(MessageFn fn) { message_ = std::move(fn); }

  void log(fg_log_level level, std::string_view msg) override;
  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) override;
  void onEvent(const fg_event& ev) override;
  void onDelivery(uint64_t delivery_id, fg_delivery status) override;
  void onState(fg_state state, std::string_view detail_view) override;
  void onSession(uint64_t session, fg_session_event event) override;
  fg_status authorizeSubscribe(uint64_t session, std::string_view filter, std::string&) override;

  void interrupt();
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
  void settle(uint64_t sub_id, fg_status status, const std::string& detail);
  void hint();
  const bool debug_;
  const std::string prefix_;
  MessageFn message_;
};

// Acks outcome tokens from a thread of its own (the ABI forbids acking inside on_message).
class Acker {
 public:
  explicit Acker(PluginInstance& inst);
  ~Acker() { finish(); }
  Acker(const Acker&) = delete;
  Acker& operator=(const Acker&) = delete;
  void push(uint64_t token, fg_outcome outcome);
  // Acks everything queued, then ends the thread (before the plugin is stopped).
  void finish();

 private:
  void run();
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

// loadConfig (${ENV} expanded, like the gateway); a ConfigError fails with kExitUsage and its
// "file:line:col: message".
Config loadConfigOrFail(const std::string& path);
// Endpoint `name` of cfg (plugins_dir: an override, else the config's).
Resolved resolveConfigEndpoint(const Config& cfg, const std::string& name, const std::string& plugins_dir);
// -c FILE --endpoint NAME, or --plugin NAME; then every --set.
Resolved resolveEndpoint(const EndpointArgs& a);
// Loads the plugin and checks every key against it (a.sets / a.endpoint name the culprit).
std::shared_ptr<PluginLibrary> loadPlugin(const Resolved& r, const EndpointArgs& a);
// The plugin's create(): its own check of every value.
std::unique_ptr<PluginInstance> createInstance(const Resolved& r, std::shared_ptr<PluginLibrary> lib, CliHost& host);
void startInstance(PluginInstance& inst, CliHost& host, const Resolved& r);
// Waits until the endpoint is up and `ready` (called under host.mu) holds, at most
// a.connect_timeout_s. A DOWN or FAILED before the first UP is a refused connection. false =
// interrupted.
bool waitUp(CliHost& host, const EndpointArgs& a, const Resolved& r, const std::function<bool()>& ready);
void checkEndpointArgs(const EndpointArgs& a);

// Subscriptions before start(): the plugin makes (or restores) them when it connects, so UP means
// they are in place. filters[i] gets sub id i + 1.
void subscribeAll(PluginInstance& inst, const std::vector<std::string>& filters);
// The first refused subscription among ids 1..filters.size(), as an error text (under host.mu).
std::optional<std::string> subscriptionRefusal(const CliHost& host, const std::vector<std::string>& filters);
// After startInstance: waitUp until every subscription is confirmed (at once for a plugin without
// FG_CAP_SUBSCRIBE_ACK); a refusal or a confirmation missing at --connect-timeout fails.
// false = interrupted.
bool waitSubscribed(CliHost& host, const PluginInstance& inst, const EndpointArgs& a, const Resolved& r,
                    const std::vector<std::string>& filters);

}  // namespace fingate::cli
