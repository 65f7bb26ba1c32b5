// C++ SDK for fingate transport plugins: a base class and one export macro turn a transport
// into ~100 lines of glue. Header-only: a plugin links nothing from the gateway.
//
//   class MyPlugin : public fingate::sdk::Plugin {
//    public:
//     MyPlugin(fingate::sdk::Host host, const fingate::sdk::Config& cfg);   // may throw ConfigError
//     fg_status start() override;
//     fg_status stop(uint32_t timeout_ms) override;
//     fg_status publish(const fg_message& msg, uint64_t delivery_id) override;
//   };
//   FG_DEFINE_PLUGIN(MyPlugin, "my", "0.1.0", FG_CAP_SESSIONS, "listen", "tls.*")
//
// Every exception thrown by the plugin's methods is caught at the boundary: create() turns
// it into NULL + errbuf, every other entry point into FG_ERR_INTERNAL (and a log line).
#pragma once

#include <fingate/plugin.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>

namespace fingate::sdk {

inline std::string_view view(fg_str s) noexcept { return s.len ? std::string_view(s.data, s.len) : std::string_view(); }
inline fg_str str(std::string_view s) noexcept { return fg_str{s.data(), s.size()}; }

// A configuration error about one key. what() is "<key>: <message>" so the host can point
// at the key's file:line:col.
class ConfigError : public std::runtime_error {
 public:
  ConfigError(const std::string& key, const std::string& message) : std::runtime_error(key + ": " + message) {}
};

// Client-supplied text made safe for a log line: at most `max` bytes, control bytes as '?'.
inline std::string printable(std::string_view s, size_t max) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  }
  if (s.size() > max) out += "...";
  return out;
}

// The delivery of one publish that went to several clients (a broadcast on a session
// transport): every copy settles once, and the last one decides the report: OK when any copy was
// handed over, else `fail`. Not thread-safe: settle under the plugin's own lock or thread.
struct FanOutDelivery {
  uint64_t delivery_id = 0;
  size_t remaining = 0;  // copies not settled yet
  size_t handed = 0;     // copies handed over (written, sent, polled)
  // One copy settled; true when it was the last, with the status to report in `status`.
  bool settle(bool handed_over, fg_delivery fail, fg_delivery& status) {
    if (remaining == 0) return false;
    if (handed_over) ++handed;
    if (--remaining) return false;
    status = handed ? FG_DELIVERY_OK : fail;
    return true;
  }
};

// `bytes` random bytes as hex (default client ids, instance ids).
inline std::string randomHex(size_t bytes) {
  std::random_device rd;
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xffu;
    out.push_back(digits[v >> 4]);
    out.push_back(digits[v & 15]);
  }
  return out;
}

// host:port ("[v6]:port" too), as listen/connect keys write it.
struct HostPort {
  std::string host;  // without the brackets of an IPv6 literal
  uint16_t port = 0;
  std::string text() const {
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
};

inline HostPort parseHostPort(const std::string& key, const std::string& v, bool allow_port_zero) {
  const size_t colon = v.rfind(':');
  if (colon == std::string::npos) throw ConfigError(key, "expected host:port, got '" + v + "'");
  std::string host = v.substr(0, colon);
  const std::string port = v.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) throw ConfigError(key, "expected host:port, the host is missing in '" + v + "'");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw ConfigError(key, "expected host:port with a numeric port, got '" + v + "'");
  const unsigned long p = std::stoul(port);
  if (p > 65535 || (p == 0 && !allow_port_zero))
    throw ConfigError(key, std::string("the port must be ") + (allow_port_zero ? "0" : "1") + "..65535, got " + port);
  return HostPort{host, static_cast<uint16_t>(p)};
}

// The endpoint's configuration, as flattened key/value text.
class Config {
 public:
  Config() = default;
  Config(const fg_kv* kv, size_t n) {
    for (size_t i = 0; i < n; ++i) values_[kv[i].key ? kv[i].key : ""] = kv[i].value ? kv[i].value : "";
  }
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  std::string get(const std::string& key, const std::string& def = "") const {
    auto it = values_.find(key);
    return it == values_.end() ? def : it->second;
  }
  std::string require(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end() || it->second.empty()) throw ConfigError(key, "is required");
    return it->second;
  }
  long long getInt(const std::string& key, long long def, long long min, long long max) const {
    auto it = values_.find(key);
    if (it == values_.end()) return def;
    const std::string& s = it->second;
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0) throw ConfigError(key, "expected an integer, got '" + s + "'");
    if (v < min || v > max)
      throw ConfigError(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    return v;
  }
  bool getBool(const std::string& key, bool def) const {
    auto it = values_.find(key);
    if (it == values_.end()) return def;
    const std::string& s = it->second;
    if (s == "true" || s == "yes" || s == "on" || s == "1") return true;
    if (s == "false" || s == "no" || s == "off" || s == "0") return false;
    throw ConfigError(key, "expected true or false, got '" + s + "'");
  }
  const std::map<std::string, std::string>& all() const { return values_; }
  // Refuses the first key that is not in `known`; an entry "prefix.*" accepts every key that
  // starts with "prefix." and has more after it (e.g. "rdkafka.*").
  template <size_t N>
  void rejectUnknown(const char* const (&known)[N], const std::string& plugin) const {
    for (const auto& [key, value] : values_) {
      bool ok = false;
      for (std::string_view k : known) {
        if (k.size() > 2 && k.substr(k.size() - 2) == ".*")
          ok = ok || (key.size() > k.size() - 1 && key.compare(0, k.size() - 1, k.substr(0, k.size() - 1)) == 0);
        else
          ok = ok || key == k;
      }
      if (!ok) throw ConfigError(key, "unknown key for the " + plugin + " plugin");
    }
  }

 private:
  std::map<std::string, std::string> values_;
};

// The host API, bound to this instance's context.
class Host {
 public:
  Host() = default;
  Host(const fg_host_api* api, void* ctx) : api_(api), ctx_(ctx) {}

  void log(fg_log_level level, const std::string& msg) const {
    if (api_ && api_->log) api_->log(ctx_, level, msg.c_str());
  }
  void info(const std::string& msg) const { log(FG_LOG_INFO, msg); }
  void warn(const std::string& msg) const { log(FG_LOG_WARN, msg); }
  void error(const std::string& msg) const { log(FG_LOG_ERROR, msg); }
  void debug(const std::string& msg) const { log(FG_LOG_DEBUG, msg); }

  fg_status onMessage(uint64_t sub_id, const fg_message& msg) const {
    return api_ && api_->on_message ? api_->on_message(ctx_, sub_id, &msg) : FG_ERR_STATE;
  }
  fg_status onMessage(uint64_t sub_id, std::string_view topic, std::string_view payload, uint64_t session = 0,
                      int64_t timestamp_ms = 0, const fg_header* headers = nullptr, size_t header_count = 0) const {
    fg_message m{str(topic), str(payload), headers, header_count, timestamp_ms, session};
    return onMessage(sub_id, m);
  }
  void onDelivery(uint64_t delivery_id, fg_delivery status) const {
    if (delivery_id && api_ && api_->on_delivery) api_->on_delivery(ctx_, delivery_id, status);
  }
  void onState(fg_state state, const std::string& detail = "") const {
    if (api_ && api_->on_state) api_->on_state(ctx_, state, detail.c_str());
  }
  void onSession(uint64_t session, fg_session_event ev) const {
    if (api_ && api_->on_session) api_->on_session(ctx_, session, ev);
  }
  // ABI 1.1: true when the host offers member M of fg_host_api (it is inside its struct_size).
#define FG_HOST_HAS(api, member) \
  ((api) && (api)->struct_size >= offsetof(fg_host_api, member) + sizeof((api)->member) && (api)->member)
  // An inbound message with an outcome token: the host will call Plugin::ack(token, outcome)
  // once. A 1.0 host has no tokens: the message goes in untracked, *tracked is set to false and
  // ack() is never called for it (the plugin decides what "taken" means, as with ABI 1.0).
  fg_status onMessageTracked(uint64_t sub_id, const fg_message& msg, uint64_t token, bool* tracked = nullptr) const {
    if (FG_HOST_HAS(api_, on_message_tracked)) {
      if (tracked) *tracked = token != 0;
      return api_->on_message_tracked(ctx_, sub_id, &msg, token);
    }
    if (tracked) *tracked = false;
    return onMessage(sub_id, msg);
  }
  bool hasTokens() const { return FG_HOST_HAS(api_, on_message_tracked); }
  void onEvent(const fg_event& ev) const {
    if (FG_HOST_HAS(api_, on_event)) api_->on_event(ctx_, &ev);
  }
  // A subscription settled: status FG_OK confirmed, anything else refused. A 1.0 host only
  // understands confirmations (FG_STATE_SUBSCRIBED with the decimal id).
  void subscriptionSettled(uint64_t sub_id, fg_status status, const std::string& detail = "") const {
    if (FG_HOST_HAS(api_, on_event)) {
      fg_event ev{};
      ev.struct_size = sizeof(fg_event);
      ev.kind = FG_EVENT_SUBSCRIPTION;
      ev.sub_id = sub_id;
      ev.status = status;
      ev.detail = detail.c_str();
      api_->on_event(ctx_, &ev);
    } else if (status == FG_OK) {
      onState(FG_STATE_SUBSCRIBED, std::to_string(sub_id));
    }
  }
  // Facts of the current connection (FG_CONN_* flags); send before UP/RECONNECTED.
  void connectionFacts(uint32_t flags) const {
    fg_event ev{};
    ev.struct_size = sizeof(fg_event);
    ev.kind = FG_EVENT_CONNECTION;
    ev.flags = flags;
    onEvent(ev);
  }
  // A session that answered FG_RETRY can take more.
  void sessionWritable(uint64_t session) const {
    fg_event ev{};
    ev.struct_size = sizeof(fg_event);
    ev.kind = FG_EVENT_SESSION_WRITABLE;
    ev.session = session;
    onEvent(ev);
  }

  // FG_OK when allowed; otherwise the refusal status, and *reason gets why.
  fg_status authorizeSubscribe(uint64_t session, std::string_view filter, std::string* reason = nullptr) const {
    if (!api_ || api_->struct_size < offsetof(fg_host_api, authorize_subscribe) + sizeof(void*) ||
        !api_->authorize_subscribe)
      return FG_OK;
    char buf[256] = {0};
    fg_status st = api_->authorize_subscribe(ctx_, session, str(filter), buf, sizeof buf);
    if (st != FG_OK && reason) *reason = buf;
    return st;
  }

 private:
  const fg_host_api* api_ = nullptr;
  void* ctx_ = nullptr;
};

// Base class of a plugin instance. Override what the transport supports.
class Plugin {
 public:
  explicit Plugin(Host host) : host_(host) {}
  virtual ~Plugin() = default;
  Plugin(const Plugin&) = delete;
  Plugin& operator=(const Plugin&) = delete;

  virtual fg_status start() = 0;
  virtual fg_status stop(uint32_t timeout_ms) = 0;
  virtual fg_status publish(const fg_message& msg, uint64_t delivery_id) = 0;
  virtual fg_status subscribe(std::string_view /*filter*/, uint64_t /*sub_id*/) { return FG_OK; }
  virtual fg_status unsubscribe(uint64_t /*sub_id*/) { return FG_OK; }
  // ABI 1.1: the final outcome of a message handed in with a token. Never blocks.
  virtual void ack(uint64_t /*token*/, fg_outcome /*outcome*/) {}
  // ABI 1.1: close one client session (slow consumer, limit); FG_ERR_UNSUPPORTED by default.
  virtual fg_status closeSession(uint64_t /*session*/, const char* /*reason*/) { return FG_ERR_UNSUPPORTED; }

  const Host& host() const { return host_; }

 protected:
  Host host_;
};

// Logs at most `burst` lines per 10 s window, then one line saying how many it suppressed, so
// that a hostile client cannot flood the log. Thread-safe.
class RateLimitedLog {
 public:
  explicit RateLimitedLog(std::string prefix, int burst = 20) : prefix_(std::move(prefix)), burst_(burst) {}
  void log(const Host& host, fg_log_level level, const std::string& msg) {
    std::string summary;
    bool emit = false;
    {
      std::lock_guard lk(mu_);
      const auto now = std::chrono::steady_clock::now();
      if (now - window_start_ > std::chrono::seconds(10)) {
        if (suppressed_) summary = std::to_string(suppressed_) + " similar log lines suppressed";
        window_start_ = now;
        count_ = 0;
        suppressed_ = 0;
      }
      if (count_ < burst_) {
        ++count_;
        emit = true;
      } else {
        ++suppressed_;
      }
    }
    if (!summary.empty()) host.log(FG_LOG_WARN, prefix_ + summary);
    if (emit) host.log(level, msg);
  }

 private:
  std::string prefix_;
  int burst_;
  std::mutex mu_;
  std::chrono::steady_clock::time_point window_start_ = std::chrono::steady_clock::now();
  int count_ = 0;
  uint64_t suppressed_ = 0;
};

namespace detail {

inline void writeErr(char* buf, size_t len, const char* msg) {
  if (!buf || len == 0) return;
  std::snprintf(buf, len, "%s", msg);
}

template <class T>
struct Glue {
  static fg_instance* create(const fg_host_api* host, void* ctx, const fg_kv* cfg, size_t n, char* errbuf,
                             size_t errlen) {
    try {
      if (!host) {
        writeErr(errbuf, errlen, "no host API");
        return nullptr;
      }
      Config c(cfg, n);
      auto* p = new T(Host(host, ctx), c);
      return reinterpret_cast<fg_instance*>(static_cast<Plugin*>(p));
    } catch (const std::exception& e) {
      writeErr(errbuf, errlen, e.what());
    } catch (...) {
      writeErr(errbuf, errlen, "unknown error");
    }
    return nullptr;
  }
  static Plugin* self(fg_instance* i) { return reinterpret_cast<Plugin*>(i); }
  static fg_status guard(fg_instance* i, const char* what, auto&& fn) {
    if (!i) return FG_ERR_INVALID_ARG;
    try {
      return fn(self(i));
    } catch (const std::exception& e) {
      self(i)->host().error(std::string(what) + ": " + e.what());
    } catch (...) {
      self(i)->host().error(std::string(what) + ": unknown exception");
    }
    return FG_ERR_INTERNAL;
  }
  static void destroy(fg_instance* i) {
    if (!i) return;
    try {
      self(i)->stop(2000);
    } catch (...) {
    }
    delete self(i);
  }
  static fg_status start(fg_instance* i) {
    return guard(i, "start", [](Plugin* p) { return p->start(); });
  }
  static fg_status stop(fg_instance* i, uint32_t t) {
    return guard(i, "stop", [t](Plugin* p) { return p->stop(t); });
  }
  static fg_status publish(fg_instance* i, const fg_message* m, uint64_t d) {
    if (!m) return FG_ERR_INVALID_ARG;
    return guard(i, "publish", [m, d](Plugin* p) { return p->publish(*m, d); });
  }
  static fg_status subscribe(fg_instance* i, fg_str f, uint64_t id) {
    return guard(i, "subscribe", [f, id](Plugin* p) { return p->subscribe(view(f), id); });
  }
  static fg_status unsubscribe(fg_instance* i, uint64_t id) {
    return guard(i, "unsubscribe", [id](Plugin* p) { return p->unsubscribe(id); });
  }
  static void ack(fg_instance* i, uint64_t token, fg_outcome outcome) {
    guard(i, "ack", [token, outcome](Plugin* p) {
      p->ack(token, outcome);
      return FG_OK;
    });
  }
  static fg_status closeSession(fg_instance* i, uint64_t session, const char* reason) {
    return guard(i, "close_session",
                 [session, reason](Plugin* p) { return p->closeSession(session, reason ? reason : ""); });
  }
};

}  // namespace detail
}  // namespace fingate::sdk

// Defines the exported entry point for plugin class CLASS. The varargs are the accepted
// config keys (besides plugin/role); at least one is required ("" if none).
#define FG_DEFINE_PLUGIN(CLASS, NAME, VERSION, CAPS, ...)                            \
  extern "C" FG_EXPORT const fg_plugin* fg_plugin_entry(uint32_t host_abi_version) { \
    static const char* const keys[] = {__VA_ARGS__, nullptr};                        \
    using G = ::fingate::sdk::detail::Glue<CLASS>;                                   \
    static const fg_plugin desc = {FG_ABI_VERSION,                                   \
                                   sizeof(fg_plugin),                                \
                                   NAME,                                             \
                                   VERSION,                                          \
                                   CAPS,                                             \
                                   keys,                                             \
                                   &G::create,                                       \
                                   &G::destroy,                                      \
                                   &G::start,                                        \
                                   &G::stop,                                         \
                                   &G::publish,                                      \
                                   &G::subscribe,                                    \
                                   &G::unsubscribe,                                  \
                                   &G::ack,                                          \
                                   &G::closeSession};                                \
    if (FG_ABI_MAJOR(host_abi_version) != FG_ABI_VERSION_MAJOR) return nullptr;      \
    return &desc;                                                                    \
  }
