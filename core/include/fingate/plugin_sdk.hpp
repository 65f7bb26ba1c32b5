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
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
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
    if (s.empty() || *end != '\0' || errno != 0)
      throw ConfigError(key, "expected an integer, got '" + s + "'");
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
    return guard(i, "close_session", [session, reason](Plugin* p) { return p->closeSession(session, reason ? reason : ""); });
  }
};

}  // namespace detail
}  // namespace fingate::sdk

// Defines the exported entry point for plugin class CLASS. The varargs are the accepted
// config keys (besides plugin/role); at least one is required ("" if none).
#define FG_DEFINE_PLUGIN(CLASS, NAME, VERSION, CAPS, ...)                                         \
  extern "C" FG_EXPORT const fg_plugin* fg_plugin_entry(uint32_t host_abi_version) {               \
    static const char* const keys[] = {__VA_ARGS__, nullptr};                                     \
    using G = ::fingate::sdk::detail::Glue<CLASS>;                                               \
    static const fg_plugin desc = {FG_ABI_VERSION, sizeof(fg_plugin), NAME, VERSION, CAPS, keys,  \
                                   &G::create,     &G::destroy,       &G::start, &G::stop,         \
                                   &G::publish,    &G::subscribe,     &G::unsubscribe, &G::ack,    \
                                   &G::closeSession};                                            \
    if (FG_ABI_MAJOR(host_abi_version) != FG_ABI_VERSION_MAJOR) return nullptr;                  \
    return &desc;                                                                                 \
  }
