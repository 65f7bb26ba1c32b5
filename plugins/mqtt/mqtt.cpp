// mqtt: the MQTT transport (paho-mqtt-cpp async_client), for SOARCA's broker or a fins broker.
//
// Threads:
//  - the host's threads call publish/subscribe/unsubscribe: they only queue work (never block
//    on the network) and wake the worker;
//  - one worker thread per instance owns the connection: it connects (MQTT 5 first in `auto`,
//    3.1.1 when the broker refuses 5), reports the connection's facts (FG_EVENT_CONNECTION:
//    no-local on MQTT 5), restores every subscription and settles each one still pending
//    (FG_EVENT_SUBSCRIPTION: granted or refused), and only then reports UP/RECONNECTED, sends
//    queued publishes in order, and reconnects with jittered exponential backoff when the
//    connection drops. Paho's own automatic reconnect is not used: it does not resubscribe with
//    clean sessions (the "connected but deaf" bug);
//  - paho's callback thread (ONE for every paho client of the process) delivers inbound
//    messages to the host and completes deliveries/SUBACKs. It never waits: a message the host
//    answers RETRY for goes into this instance's bounded hold (count and bytes), and every later
//    one goes behind it;
//  - one redelivery thread per instance offers the held messages to the host again, in order,
//    with a short backoff (1-10 ms), until the host takes them.
//
// Delivery: a publish is kept until the broker confirms it (QoS 1 PUBACK; QoS 0: written to the
// socket). If the connection drops first it is sent again after the reconnect (at least once),
// in the original order. FAILED is reported only for a definitive refusal (MQTT 5 PUBACK reason
// >= 0x80, a message paho cannot send) or for what is still queued when stop() gives up.
//
// Inbound outcomes (ABI 1.1): every message goes in with a fresh token (on_message_tracked) and
// the host acks it once with its outcome. Paho acknowledges QoS 1 on receipt and has no manual
// ack, so here the outcomes are only counted (and logged at stop). For the same reason a message
// that arrives while the hold is full is lost: counted and logged (ERROR, rate-limited).
#include <mqtt/async_client.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tcp_nodelay.hpp"
#include "tls_probe.hpp"

namespace {

using namespace std::chrono_literals;
using fingate::sdk::Config;
using fingate::sdk::ConfigError;
using fingate::sdk::Host;
using fingate::sdk::view;
using Clock = std::chrono::steady_clock;

constexpr int kV311 = MQTTVERSION_3_1_1;  // 4
constexpr int kV5 = MQTTVERSION_5;        // 5

enum class VersionMode { Auto, V311, V5 };

struct Settings {
  std::string url;       // as configured (for messages; never holds credentials: see parseUrl)
  std::string paho_url;  // tcp://host:port or ssl://host:port
  std::string host;      // as in the url ([v6] with its brackets)
  int port = 0;
  bool tls = false;
  std::string client_id;
  int qos = 1;
  VersionMode version = VersionMode::Auto;
  std::string username;
  std::string password;
  bool has_password = false;
  std::string prefix;
  std::string ca_file, cert_file, key_file;
  bool verify = true;
  int keepalive_s = 30;
  int reconnect_min_ms = 100;
  int reconnect_max_ms = 10000;
  bool connect_retry = true;
  int connect_timeout_ms = 10000;
  size_t hold_max = 65536;            // inbound messages held after the host answered RETRY
  size_t hold_max_bytes = 64u << 20;  // ... and their bytes (topic + payload + headers)
  size_t queue_max = 10000;
  // MQTT 5 shared subscriptions ($share/<group>/<filter>): instances with the same group each
  // take a share of every subscription's messages. Publishes carry the user property
  // fingate-group=<group>, and a message that carries it is dropped on receipt: it came from an
  // instance of the group, whichever instance the broker handed it to (no-local cannot be used
  // on a shared subscription, and an echo may reach another instance than its sender).
  std::string shared_group;
};

constexpr const char* kGroupProperty = "fingate-group";

constexpr long long kDefaultHoldMax = 65536;
constexpr long long kDefaultHoldMaxBytes = 64ll << 20;

using fingate::sdk::randomHex;

bool hasControlOrWildcard(std::string_view s) {
  for (char c : s)
    if (c == '+' || c == '#' || static_cast<unsigned char>(c) < 0x20) return true;
  return false;
}

// Parses scheme://host[:port][/]: tcp/mqtt (plain) and ssl/mqtts/tls (TLS); the port defaults
// to 1883 / 8883; an IPv6 address goes in brackets. Everything else is refused here, in
// create(), with "url: ..." (so `fingate validate` points at the key), rather than handed to
// paho to fail on every connection attempt. Credentials in the URL are refused first, and an
// error message never quotes a URL that has them.
void parseUrl(const std::string& url, Settings& s) {
  const std::string shape = "expected tcp://host:port or ssl://host:port (or mqtt://, mqtts://)";
  auto bad = [](const std::string& why) { throw ConfigError("url", why); };
  auto sep = url.find("://");
  std::string authority = sep == std::string::npos ? url : url.substr(sep + 3);
  if (authority.substr(0, authority.find_first_of("/?#")).find('@') != std::string::npos)
    bad("credentials in the URL (user:password@host) are not supported, and would end up in logs; "
        "write them as the 'username' and 'password' keys (password: ${MQTT_PASSWORD})");
  for (char c : url)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) bad("must not contain spaces or control characters");
  if (sep == std::string::npos || sep == 0) bad(shape + ", got '" + url + "'");
  std::string scheme = url.substr(0, sep);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (scheme == "tcp" || scheme == "mqtt")
    s.tls = false;
  else if (scheme == "ssl" || scheme == "mqtts" || scheme == "tls")
    s.tls = true;
  else if (scheme == "ws" || scheme == "wss")
    bad("MQTT over websockets (" + scheme + "://) is not supported; use tcp:// or ssl://");
  else
    bad("unsupported scheme '" + scheme + "' in '" + url + "' (use tcp://, mqtt://, ssl:// or mqtts://)");
  std::string rest = authority;
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find_first_of("/?#") != std::string::npos)
    bad("a path, query or fragment is not supported in '" + url + "'; " + shape);
  std::string host, port;
  bool has_port = false;
  if (!rest.empty() && rest.front() == '[') {  // [v6]:port
    auto close = rest.find(']');
    if (close == std::string::npos) bad("unbalanced '[' in '" + url + "'");
    host = rest.substr(0, close + 1);
    for (char c : host.substr(1, host.size() - 2))
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.')
        bad("invalid IPv6 address " + host + " in '" + url + "'");
    if (host.size() <= 3 || host.find(':') == std::string::npos)
      bad("invalid IPv6 address " + host + " in '" + url + "'");
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') bad("expected ':port' after ']' in '" + url + "'");
      port = rest.substr(close + 2);
      has_port = true;
    }
  } else {
    auto colon = rest.find(':');
    if (colon != std::string::npos && rest.find(':', colon + 1) != std::string::npos)
      bad("an IPv6 address goes in brackets, e.g. tcp://[::1]:1883; got '" + url + "'");
    host = rest.substr(0, colon);
    if (colon != std::string::npos) {
      port = rest.substr(colon + 1);
      has_port = true;
    }
    for (char c : host)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_')
        bad("invalid host name '" + host + "' in '" + url + "'");
  }
  if (host.empty()) bad("missing host in '" + url + "'; " + shape);
  if (has_port && port.empty()) bad("missing port after ':' in '" + url + "'");
  if (!has_port) port = s.tls ? "8883" : "1883";
  long p = 0;
  bool digits = !port.empty() && port.size() <= 5 &&
                std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
  if (digits) p = std::strtol(port.c_str(), nullptr, 10);
  if (!digits || p < 1 || p > 65535) bad("bad port '" + port + "' in '" + url + "' (expected 1-65535)");
  s.url = url;
  s.host = host;
  s.port = static_cast<int>(p);
  s.paho_url = std::string(s.tls ? "ssl" : "tcp") + "://" + host + ":" + std::to_string(p);
}

Settings parseSettings(const Config& cfg) {
  Settings s;
  parseUrl(cfg.require("url"), s);
  s.client_id = cfg.get("client_id", "");
  if (cfg.has("client_id") && s.client_id.empty()) throw ConfigError("client_id", "must not be empty");
  if (s.client_id.empty()) s.client_id = "fingate-" + randomHex(6);
  if (s.client_id.size() > 65535) throw ConfigError("client_id", "too long");
  s.qos = static_cast<int>(cfg.getInt("qos", 1, 0, 1));
  std::string v = cfg.get("mqtt_version", "auto");
  if (v == "auto")
    s.version = VersionMode::Auto;
  else if (v == "3" || v == "3.1.1" || v == "4")
    s.version = VersionMode::V311;
  else if (v == "5")
    s.version = VersionMode::V5;
  else
    throw ConfigError("mqtt_version", "expected auto, 3 or 5, got '" + v + "'");
  s.username = cfg.get("username", "");
  s.has_password = cfg.has("password");
  s.password = cfg.get("password", "");
  if (s.has_password && s.username.empty()) throw ConfigError("password", "needs a username");
  s.prefix = cfg.get("topic_prefix", "");
  if (hasControlOrWildcard(s.prefix))
    throw ConfigError("topic_prefix", "must not contain '+', '#' or control characters");
  s.shared_group = cfg.get("shared_group", "");
  if (cfg.has("shared_group")) {
    if (s.shared_group.empty() || s.shared_group.find_first_of("/+#") != std::string::npos ||
        hasControlOrWildcard(s.shared_group) || s.shared_group.size() > 256)
      throw ConfigError("shared_group", "expected a name without '/', '+', '#' or control characters (e.g. fingate)");
    if (s.version == VersionMode::V311)
      throw ConfigError("shared_group",
                        "needs MQTT 5 (mqtt_version: 5 or auto): instances recognise each "
                        "other's publishes by a user property");
    s.version = VersionMode::V5;  // no fallback to 3.1.1
  }
  s.ca_file = cfg.get("tls.ca_file", "");
  s.cert_file = cfg.get("tls.cert_file", "");
  s.key_file = cfg.get("tls.key_file", "");
  s.verify = cfg.getBool("tls.verify", true);
  if (!s.tls) {
    for (const char* k : {"tls.ca_file", "tls.cert_file", "tls.key_file", "tls.verify"})
      if (cfg.has(k)) throw ConfigError(k, "needs an ssl:// url (url is '" + s.url + "')");
  }
  if (s.cert_file.empty() != s.key_file.empty())
    throw ConfigError(s.cert_file.empty() ? "tls.cert_file" : "tls.key_file",
                      "tls.cert_file and tls.key_file go together");
  s.keepalive_s = static_cast<int>(cfg.getInt("keepalive_s", 30, 0, 65535));
  s.reconnect_min_ms = static_cast<int>(cfg.getInt("reconnect_min_ms", 100, 1, 3600000));
  s.reconnect_max_ms = static_cast<int>(cfg.getInt("reconnect_max_ms", 10000, 1, 3600000));
  if (s.reconnect_max_ms < s.reconnect_min_ms)
    throw ConfigError("reconnect_max_ms", "must be at least reconnect_min_ms");
  s.connect_retry = cfg.getBool("connect_retry", true);
  s.connect_timeout_ms = static_cast<int>(cfg.getInt("connect_timeout_ms", 10000, 100, 600000));
  // `inflight_max` is the old name of inbound_hold_max (it never bounded the publish window).
  if (cfg.has("inflight_max") && cfg.has("inbound_hold_max"))
    throw ConfigError("inflight_max", "is the old name of inbound_hold_max; write only inbound_hold_max");
  const char* hold_key = cfg.has("inflight_max") ? "inflight_max" : "inbound_hold_max";
  s.hold_max = static_cast<size_t>(cfg.getInt(hold_key, kDefaultHoldMax, 1, 100000000));
  s.hold_max_bytes = static_cast<size_t>(cfg.getInt("inbound_hold_max_bytes", kDefaultHoldMaxBytes, 1024, 1ll << 40));
  s.queue_max = static_cast<size_t>(cfg.getInt("queue_max", 10000, 1, 100000000));
  if (!cfg.getBool("clean_session", true))
    throw ConfigError("clean_session", "only true is supported (every subscription is restored after a reconnect)");
  return s;
}

std::string hex2(int v);

// The MQTT 5 DISCONNECT reasons an operator may meet, in words.
std::string disconnectReason(int rc) {
  const char* text = nullptr;
  switch (rc) {
    case 0x8B:
      text = "server shutting down";
      break;
    case 0x8D:
      text = "keep alive timeout";
      break;
    case 0x8E:
      text = "session taken over: another client connected with the same client_id";
      break;
    case 0x87:
      text = "not authorized";
      break;
    case 0x98:
      text = "administrative action";
      break;
    case 0x9C:
      text = "use another server";
      break;
    case 0x95:
      text = "packet too large";
      break;
    default:
      break;
  }
  return "reason " + hex2(rc) + (text ? std::string(": ") + text : "");
}

// SUBACK failure codes in words (MQTT 5 reason codes; 0x80 is also 3.1.1's only failure).
std::string subackReason(int rc) {
  const char* text = nullptr;
  switch (rc) {
    case 0x80:
      text = "unspecified error / failure";
      break;
    case 0x83:
      text = "implementation specific error";
      break;
    case 0x87:
      text = "not authorized";
      break;
    case 0x8F:
      text = "topic filter invalid";
      break;
    case 0x91:
      text = "packet identifier in use";
      break;
    case 0x97:
      text = "quota exceeded";
      break;
    case 0x9E:
      text = "shared subscriptions not supported";
      break;
    case 0xA1:
      text = "subscription identifiers not supported";
      break;
    case 0xA2:
      text = "wildcard subscriptions not supported";
      break;
    default:
      break;
  }
  return "reason " + hex2(rc) + (text ? std::string(": ") + text : "");
}

std::string versionName(int v) { return v == kV5 ? "5" : "3.1.1"; }

// CONNACK codes that mean "wrong credentials" (3.1.1: 4, 5; MQTT 5: 0x86, 0x87, 0x8C).
bool isAuthFailure(int version, int rc) {
  if (version == kV5) return rc == 0x86 || rc == 0x87 || rc == 0x8C;
  return rc == 4 || rc == 5;
}

// Publish failures that will not heal by sending again.
bool isDefinitivePublishFailure(int rc, int reason) {
  if (reason >= 0x80) return true;  // MQTT 5 PUBACK reason (not authorized, quota, payload format...)
  switch (rc) {
    case MQTTASYNC_BAD_UTF8_STRING:
    case MQTTASYNC_NULL_PARAMETER:
    case MQTTASYNC_TOPICNAME_TRUNCATED:
    case MQTTASYNC_BAD_STRUCTURE:
    case MQTTASYNC_BAD_QOS:
    case MQTTASYNC_BAD_PROTOCOL:
    case MQTTASYNC_BAD_MQTT_OPTION:
    case MQTTASYNC_WRONG_MQTT_VERSION:
      return true;
    default:
      return false;
  }
}

std::string hex2(int v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%02x", v & 0xff);
  return buf;
}

class MqttPlugin final : public fingate::sdk::Plugin {
 public:
  MqttPlugin(Host host, const Config& cfg)
      : Plugin(host), s_(parseSettings(cfg)), pub_listener_(this), sub_listener_(this), unsub_listener_(this) {
    std::random_device rd;
    rng_.seed(rd());
  }

  ~MqttPlugin() override { stop(2000); }

  fg_status start() override {
    {
      std::lock_guard lk(mu_);
      if (started_) return FG_ERR_STATE;
      started_ = true;
    }
    try {
      // One paho client per MQTT version: paho refuses an MQTT 5 connect on a client that
      // once tried 3.1.1 ("Client created for another version of MQTT"), so `auto` keeps a
      // 3.1.1 client of its own for the fallback and can go back to 5 on the next connection.
      if (s_.version != VersionMode::V311) client5_ = makeClient(kV5);
      if (s_.version != VersionMode::V5) client311_ = makeClient(kV311);
      client_ = client5_ ? client5_.get() : client311_.get();
    } catch (const std::exception& e) {
      host_.error("mqtt " + s_.url + ": cannot create the client: " + e.what());
      client5_.reset();
      client311_.reset();
      client_ = nullptr;
      return FG_ERR_INVALID_ARG;
    }
    {
      std::lock_guard lk(mu_);
      running_ = true;
    }
    host_.onState(FG_STATE_STARTING, "connecting to " + s_.url);
    worker_ = std::thread([this] { run(); });
    redeliver_ = std::thread([this] { redeliverLoop(); });
    return FG_OK;
  }

  fg_status stop(uint32_t timeout_ms) override {
    {
      std::lock_guard lk(mu_);
      if (!running_) return FG_OK;
      running_ = false;
      stop_ = true;
      stop_deadline_ = Clock::now() + std::chrono::milliseconds(timeout_ms);
    }
    stopping_ = true;
    cv_.notify_all();
    { std::lock_guard hl(hold_mu_); }
    hold_cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    // A publish() still inside sendQueued finishes first; later ones see stop_.
    { std::lock_guard sl(send_mu_); }
    if (redeliver_.joinable()) redeliver_.join();
    // The worker disconnected (or gave up). From here on no paho callback reaches the host:
    // wait (bounded) for one that is running now, then let paho forget us.
    callbacks_closed_ = true;
    auto until = Clock::now() + 2s;
    while (callbacks_active_.load() > 0 && Clock::now() < until) std::this_thread::sleep_for(1ms);
    for (auto* c : {client5_.get(), client311_.get()}) {
      try {
        if (c) c->disable_callbacks();
      } catch (...) {
      }
    }
    client_ = nullptr;
    client5_.reset();
    client311_.reset();
    size_t lost = inbound_lost_;
    {
      std::lock_guard hl(hold_mu_);
      lost += hold_.size();
      hold_.clear();
      hold_bytes_ = 0;
    }
    inbound_lost_ = lost;
    if (lost)
      host_.warn("mqtt " + s_.url + ": stopped with " + std::to_string(lost) +
                 " inbound message(s) the host had not taken yet (they are lost)");
    logInboundTotals();
    failEverything("stopped");
    host_.onState(FG_STATE_STOPPED, "");
    return FG_OK;
  }

  // ABI 1.1: the host's final word on an inbound message. Paho acknowledged it to the broker
  // on receipt already (it has no manual ack), so this only counts.
  void ack(uint64_t token, fg_outcome outcome) override {
    if (token == 0 || token >= next_token_.load(std::memory_order_relaxed)) {
      acked_unknown_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    size_t i = outcome >= FG_OUTCOME_DELIVERED && outcome <= FG_OUTCOME_FILTERED ? static_cast<size_t>(outcome)
                                                                                 : kOutcomeKinds;
    acked_[i].fetch_add(1, std::memory_order_relaxed);
  }

  fg_status publish(const fg_message& m, uint64_t delivery_id) override {
    std::string_view topic = view(m.topic);
    if (topic.empty() || hasControlOrWildcard(topic) || s_.prefix.size() + topic.size() > 65535)
      return FG_ERR_INVALID_ARG;
    Out o;
    o.topic = s_.prefix;
    o.topic.append(topic);
    o.payload.assign(m.payload.data ? m.payload.data : "", m.payload.len);
    for (size_t i = 0; i < m.header_count && m.headers; ++i)
      o.headers.emplace_back(std::string(view(m.headers[i].key)), std::string(view(m.headers[i].value)));
    o.delivery_id = delivery_id;
    bool send_now;
    {
      std::lock_guard lk(mu_);
      if (!running_) return FG_ERR_STATE;
      if (out_.size() + pub_ops_ >= s_.queue_max) return FG_RETRY;
      o.seq = next_seq_++;
      send_now = out_.empty() && connected_ && !lost_ && !stop_ && pub_ops_ < window_ && subops_.empty();
      out_.push_back(std::move(o));
    }
    if (send_now) {
      // The common case: hand it to paho on the caller's thread (no wake-up of the worker).
      // send_mu_ keeps the order of hand-overs; if the worker holds it, the worker sends it.
      std::unique_lock sl(send_mu_, std::try_to_lock);
      if (sl.owns_lock()) {
        sendQueued(false, true);
        return FG_OK;
      }
    }
    cv_.notify_all();
    return FG_OK;
  }

  fg_status subscribe(std::string_view filter, uint64_t sub_id) override {
    std::string broker = s_.prefix + std::string(filter);
    if (!s_.shared_group.empty()) broker = "$share/" + s_.shared_group + "/" + broker;
    if (filter.empty() || !fingate::isValidFilter(filter) || !fingate::isValidFilter(broker) ||
        broker.find('\0') != std::string::npos || broker.size() > 65535) {
      host_.error("mqtt " + s_.url + ": invalid subscription filter '" + std::string(filter) + "'" +
                  (s_.prefix.empty() ? "" : " (with topic_prefix: '" + broker + "')"));
      return FG_ERR_INVALID_ARG;
    }
    {
      std::lock_guard lk(mu_);
      auto old = std::find_if(subs_.begin(), subs_.end(), [&](const Sub& s) { return s.id == sub_id; });
      if (old != subs_.end()) {  // the same id again: replaces its filter
        std::string old_broker = old->broker_filter;
        subs_.erase(old);
        forgetFilterLocked(old_broker, broker);
      }
      subs_.push_back(Sub{sub_id, std::string(filter), broker});
      subops_.push_back(SubOp{true, broker, {sub_id}});
    }
    cv_.notify_all();
    return FG_OK;
  }

  fg_status unsubscribe(uint64_t sub_id) override {
    {
      std::lock_guard lk(mu_);
      auto it = std::find_if(subs_.begin(), subs_.end(), [&](const Sub& s) { return s.id == sub_id; });
      if (it == subs_.end()) return FG_OK;
      std::string broker = it->broker_filter;
      subs_.erase(it);
      forgetFilterLocked(broker, "");
    }
    cv_.notify_all();
    return FG_OK;
  }

 private:
  // After a subscription went away: unsubscribe its broker filter when nothing else uses it.
  void forgetFilterLocked(const std::string& broker, const std::string& keep) {
    if (broker == keep) return;
    if (std::any_of(subs_.begin(), subs_.end(), [&](const Sub& s) { return s.broker_filter == broker; })) return;
    broker_subs_.erase(broker);
    subops_.push_back(SubOp{false, broker, {}});
  }

  struct Out {
    uint64_t seq = 0;
    std::string topic;  // with the prefix
    std::string payload;
    std::vector<std::pair<std::string, std::string>> headers;
    uint64_t delivery_id = 0;
    int attempts = 0;
  };
  static constexpr fg_status kPending = -1;
  struct Sub {
    uint64_t id;
    std::string filter;             // the host's filter
    std::string broker_filter;      // prefix + filter
    fg_status reported = kPending;  // what FG_EVENT_SUBSCRIPTION said last (kPending: nothing yet)
    int failures = 0;               // subscribe attempts that failed without a broker answer
  };
  struct SubOp {
    bool subscribe;
    std::string broker_filter;
    std::vector<uint64_t> ids;
  };
  enum class OpKind { Publish, Subscribe, Unsubscribe };
  // Something handed to paho that waits for its completion callback. The op id travels as the
  // token's user context; a callback whose op is gone (a previous connection) is ignored.
  struct Op {
    OpKind kind;
    uint64_t gen;
    Out out;                        // Publish
    std::string filter;             // Subscribe / Unsubscribe (broker filter)
    std::vector<uint64_t> sub_ids;  // Subscribe
    bool restore = false;           // part of the restore after a connect
    bool conn_failed = false;       // Publish failed, presumably with the connection
    Clock::time_point failed_at{};
  };
  struct Held {
    uint64_t sub_id;
    std::string topic;
    std::string payload;
    std::vector<std::pair<std::string, std::string>> headers;
    int64_t timestamp_ms;
    uint64_t token;
    size_t bytes;
  };

  // Counts a paho callback in progress; `ok` is false once stop() closed the door (then the
  // callback must not touch the host). stop() waits for the count to reach zero.
  struct CallbackGuard {
    explicit CallbackGuard(MqttPlugin* p) : p_(p) {
      p_->callbacks_active_.fetch_add(1);
      ok = !p_->callbacks_closed_.load();
    }
    ~CallbackGuard() { p_->callbacks_active_.fetch_sub(1); }
    CallbackGuard(const CallbackGuard&) = delete;
    CallbackGuard& operator=(const CallbackGuard&) = delete;
    bool ok;

   private:
    MqttPlugin* p_;
  };

  std::unique_ptr<mqtt::async_client> makeClient(int version) {
    mqtt::create_options co(version);
    // Paho refuses sends (-12, MQTTASYNC_MAX_BUFFERED_MESSAGES) once its own command queue
    // holds max_buffered_messages (default 100), even while connected. The plugin bounds its
    // queue itself (queue_max) and never hands paho more than its window, so give paho room.
    co.set_max_buffered_messages(static_cast<int>(std::min<size_t>(s_.queue_max + 1000, 1000000000)));
    auto c = std::make_unique<mqtt::async_client>(s_.paho_url, s_.client_id, co, nullptr);
    mqtt::async_client* self = c.get();
    c->set_message_callback([this](mqtt::const_message_ptr m) {
      CallbackGuard g(this);
      if (g.ok) onInbound(m);
    });
    // A late word from the client that is not the current one (auto: the other version's)
    // says nothing about the current connection.
    c->set_connection_lost_handler([this, self](const std::string& cause) {
      CallbackGuard g(this);
      if (g.ok && client_.load() == self)
        connectionLost(cause.empty() ? "connection lost" : "connection lost: " + cause);
    });
    c->set_disconnected_handler([this, self](const mqtt::properties&, mqtt::ReasonCode rc) {
      CallbackGuard g(this);
      if (g.ok && client_.load() == self)
        connectionLost("broker sent DISCONNECT (" + disconnectReason(static_cast<int>(rc)) + ")");
    });
    return c;
  }
  mqtt::async_client& client() { return *client_.load(); }

  class PubListener : public mqtt::iaction_listener {
   public:
    explicit PubListener(MqttPlugin* p) : p_(p) {}
    void on_success(const mqtt::token& t) override {
      CallbackGuard g(p_);
      if (g.ok) p_->publishDone(t, true);
    }
    void on_failure(const mqtt::token& t) override {
      CallbackGuard g(p_);
      if (g.ok) p_->publishDone(t, false);
    }

   private:
    MqttPlugin* p_;
  };
  class SubListener : public mqtt::iaction_listener {
   public:
    explicit SubListener(MqttPlugin* p) : p_(p) {}
    void on_success(const mqtt::token& t) override {
      CallbackGuard g(p_);
      if (g.ok) p_->subscribeDone(t, true);
    }
    void on_failure(const mqtt::token& t) override {
      CallbackGuard g(p_);
      if (g.ok) p_->subscribeDone(t, false);
    }

   private:
    MqttPlugin* p_;
  };
  class UnsubListener : public mqtt::iaction_listener {
   public:
    explicit UnsubListener(MqttPlugin* p) : p_(p) {}
    void on_success(const mqtt::token& t) override {
      CallbackGuard g(p_);
      if (g.ok) p_->unsubscribeDone(t, true);
    }
    void on_failure(const mqtt::token& t) override {
      CallbackGuard g(p_);
      if (g.ok) p_->unsubscribeDone(t, false);
    }

   private:
    MqttPlugin* p_;
  };

  // The token's MQTT 5 reason code; 0 for 3.1.1 (paho-cpp marks those with MQTTPP_V3_CODE).
  static int reasonOf(const mqtt::token& t) {
    auto r = t.get_reason_code();
    return r == mqtt::ReasonCode::MQTTPP_V3_CODE ? 0 : static_cast<int>(r);
  }
  static uint64_t opId(const mqtt::token& t) { return reinterpret_cast<uintptr_t>(t.get_user_context()); }
  static void* opCtx(uint64_t id) { return reinterpret_cast<void*>(static_cast<uintptr_t>(id)); }

  // ---- the worker: connect, restore, serve, reconnect -------------------------------------

  enum class ConnectResult { Ok, Failed, AuthFailed, Stopped };

  void run() {
    bool ever_up = false;
    bool down_reported = false;
    bool auth_reported = false;
    int attempt = 0;
    std::string reason;
    while (!stopRequested()) {
      ConnectResult r = connectOnce(reason);
      if (r == ConnectResult::Stopped) break;
      if (r != ConnectResult::Ok) {
        int delay_ms;
        if (r == ConnectResult::AuthFailed) {
          if (!auth_reported) {
            host_.error("mqtt " + s_.url + ": " + reason + " (client_id '" + s_.client_id + "'); retrying every ~" +
                        std::to_string(s_.reconnect_max_ms) + " ms");
            host_.onState(FG_STATE_FAILED, reason);
            auth_reported = true;
          }
          delay_ms = jitter(s_.reconnect_max_ms);
        } else {
          if (!ever_up && !s_.connect_retry) {
            host_.error("mqtt " + s_.url + ": " + reason + "; connect_retry is false, giving up");
            host_.onState(FG_STATE_FAILED, reason);
            break;
          }
          delay_ms = backoff(attempt++);
          if (!down_reported) {
            host_.warn("mqtt " + s_.url + ": " + reason + "; retrying with backoff up to " +
                       std::to_string(s_.reconnect_max_ms) + " ms");
            host_.onState(FG_STATE_DOWN, reason);
            down_reported = true;
          } else {
            host_.debug("mqtt " + s_.url + ": " + reason + "; next attempt in " + std::to_string(delay_ms) + " ms");
          }
        }
        sleepUnlessStopped(std::chrono::milliseconds(delay_ms));
        continue;
      }
      // Connected: Nagle off (see tcp_nodelay.hpp), the connection's facts (before any message
      // of it can arrive: no-local decides whether the host needs its echo window), every
      // subscription, then UP/RECONNECTED, then the queued publishes.
      int nodelay = fingate::setTcpNoDelayToPort(s_.port);
      host_.debug("mqtt " + s_.url + ": TCP_NODELAY set on " + std::to_string(nodelay) + " socket(s)");
      host_.connectionFacts(version_ == kV5 ? FG_CONN_NO_LOCAL : 0u);
      if (!restoreSubscriptions(reason)) {
        if (stopRequested()) break;
        dropConnection(reason);
        if (!down_reported) host_.onState(FG_STATE_DOWN, reason);
        down_reported = true;
        sleepUnlessStopped(std::chrono::milliseconds(backoff(attempt++)));
        continue;
      }
      attempt = 0;
      auth_reported = false;
      down_reported = false;
      std::string detail = "connected to " + s_.url + " as '" + s_.client_id + "' mqtt=" + versionName(version_) +
                           (version_ == kV5 ? " no-local" : "");
      host_.info("mqtt " + detail);
      host_.debug("mqtt " + s_.url + ": publish window " + std::to_string(window_));
      host_.onState(ever_up ? FG_STATE_RECONNECTED : FG_STATE_UP, detail);
      ever_up = true;
      serve();
      if (stopRequested()) break;
      {
        std::lock_guard lk(mu_);
        reason = lost_reason_;
      }
      dropConnection(reason);
      host_.warn("mqtt " + s_.url + ": " + reason + "; reconnecting");
      host_.onState(FG_STATE_DOWN, reason);
      down_reported = true;
      // Reconnect at once the first time (the broker may just have restarted), then back off.
      attempt = 0;
      sleepUnlessStopped(std::chrono::milliseconds(jitter(s_.reconnect_min_ms)));
    }
    shutdownConnection();
  }

  ConnectResult connectOnce(std::string& reason) {
    std::vector<int> versions;
    switch (s_.version) {
      case VersionMode::V5:
        versions = {kV5};
        break;
      case VersionMode::V311:
        versions = {kV311};
        break;
      case VersionMode::Auto:
        versions = {kV5, kV311};
        break;
    }
    for (size_t i = 0; i < versions.size(); ++i) {
      int v = versions[i];
      if (stopRequested()) return ConnectResult::Stopped;
      mqtt::token_ptr tok;
      host_.debug("mqtt " + s_.url + ": connecting with mqtt " + versionName(v));
      {
        // Not connected: no publish() is handing anything to paho (it checks connected_ under
        // send_mu_), so the current client can change here.
        std::lock_guard sl(send_mu_);
        client_ = v == kV5 ? client5_.get() : client311_.get();
      }
      try {
        tok = client().connect(connectOptions(v));
      } catch (const mqtt::exception& e) {
        reason = std::string("connect failed: ") + e.what();
        return ConnectResult::Failed;
      }
      auto limit = Clock::now() + std::chrono::milliseconds(s_.connect_timeout_ms) + 2s;
      bool done = false;
      int rc = 0, code = 0;
      std::string msg;
      while (!done) {
        try {
          done = tok->wait_for(100ms);
        } catch (const mqtt::exception& e) {
          done = true;
          rc = e.get_return_code();
          code = static_cast<int>(e.get_reason_code());
          msg = e.get_message();
          if (msg.empty()) msg = e.what();
        }
        if (!done && (stopRequested() || Clock::now() > limit)) {
          if (stopRequested()) return ConnectResult::Stopped;
          rc = MQTTASYNC_FAILURE;
          msg = "connect timed out";
          done = true;
        }
      }
      if (rc == 0 && msg.empty()) {
        int negotiated = v;
        try {
          negotiated = tok->get_connect_response().get_mqtt_version();
        } catch (...) {
        }
        bool sids = true;
        size_t receive_max = kMaxWindow;
        try {
          mqtt::connect_response rsp = tok->get_connect_response();  // keep it: props refer into it
          const auto& props = rsp.get_properties();
          if (props.contains(mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE))
            sids = mqtt::get<uint8_t>(props, mqtt::property::SUBSCRIPTION_IDENTIFIERS_AVAILABLE) != 0;
          if (props.contains(mqtt::property::RECEIVE_MAXIMUM))
            receive_max = mqtt::get<uint16_t>(props, mqtt::property::RECEIVE_MAXIMUM);
        } catch (...) {
        }
        std::lock_guard lk(mu_);
        version_ = negotiated >= kV5 ? kV5 : kV311;
        sub_ids_available_ = version_ == kV5 && sids;
        // Never hand paho more unconfirmed publishes than the broker accepts at once (MQTT 5
        // Receive Maximum; mosquitto says 20): paho would park the rest and only look at them
        // again when its send thread wakes up by itself, once a second.
        // One less than the broker allows: our completion callback runs before paho frees the
        // slot, and a send that finds the window full waits for that timer.
        window_ = std::clamp<size_t>(version_ == kV5 ? receive_max - 1 : kMaxWindow - 1, 1,
                                     std::min(kMaxWindow - 1, s_.queue_max));
        connected_ = true;
        lost_ = false;
        lost_reason_.clear();
        ++gen_;
        return ConnectResult::Ok;
      }
      // MQTT 5 CONNACK puts the reason in the return code; 3.1.1 in both.
      int connack = rc > 0 ? rc : (code > 0 ? code : 0);
      if (connack && isAuthFailure(v, connack)) {
        reason = "not authorized: the broker refused username '" + s_.username + "' (CONNACK " + hex2(connack) + ")";
        return ConnectResult::AuthFailed;
      }
      bool version_refused = connack == 1 || connack == 0x84;
      bool tcp_failed = msg.find("TCP/TLS connect failure") != std::string::npos;
      bool timed_out = msg.find("timed out") != std::string::npos || msg.find("timeout") != std::string::npos;
      // paho's own complaints about our options are not a broker's answer.
      bool local_error = rc < 0 && rc != MQTTASYNC_FAILURE && rc != MQTTASYNC_DISCONNECTED;
      if (tcp_failed && s_.tls) msg += tlsReason();
      reason = "connect to " + s_.url + " (mqtt " + versionName(v) + ") failed: " + msg +
               (connack ? " (CONNACK " + hex2(connack) + ")" : "");
      // A broker that refuses 5 (CONNACK "unacceptable protocol version") or closes the
      // connection without a CONNACK; never a broker that is down or slow.
      if (v == kV5 && i + 1 < versions.size() &&
          (version_refused || (!tcp_failed && !connack && !timed_out && !local_error))) {
        host_.log(fallback_logged_ ? FG_LOG_DEBUG : FG_LOG_INFO, "mqtt " + s_.url + ": MQTT 5 refused (" + msg +
                                                                     (connack ? ", CONNACK " + hex2(connack) : "") +
                                                                     "), trying MQTT 3.1.1");
        fallback_logged_ = true;
        continue;
      }
      return ConnectResult::Failed;
    }
    return ConnectResult::Failed;
  }

  // After paho's "TCP/TLS connect failure" on a TLS url: OpenSSL's reason, as "; TLS: ...".
  std::string tlsReason() const {
    fingate::mqtt_tls::ProbeOptions o;
    o.host = s_.host;
    o.port = s_.port;
    o.ca_file = s_.ca_file;
    o.cert_file = s_.cert_file;
    o.key_file = s_.key_file;
    o.verify = s_.verify;
    o.timeout_ms = std::clamp(s_.connect_timeout_ms, 500, 3000);
    std::string why = fingate::mqtt_tls::handshakeError(o);
    return why.empty() ? "" : "; TLS: " + why;
  }

  mqtt::connect_options connectOptions(int v) {
    mqtt::connect_options o;
    o.set_mqtt_version(v);
    if (v == kV5) {
      o.set_clean_session(false);
      o.set_clean_start(true);
    } else {
      o.set_clean_start(false);
      o.set_clean_session(true);
    }
    o.set_keep_alive_interval(s_.keepalive_s);
    o.set_connect_timeout(std::max(1, (s_.connect_timeout_ms + 999) / 1000));
    o.set_automatic_reconnect(false);
    o.set_max_inflight(static_cast<int>(kMaxWindow));  // the plugin keeps its own, smaller window
    if (!s_.username.empty()) o.set_user_name(s_.username);
    if (s_.has_password) o.set_password(s_.password);
    if (s_.tls) {
      mqtt::ssl_options ssl;
      if (!s_.ca_file.empty()) ssl.set_trust_store(s_.ca_file);
      if (!s_.cert_file.empty()) ssl.set_key_store(s_.cert_file);
      if (!s_.key_file.empty()) ssl.set_private_key(s_.key_file);
      ssl.set_enable_server_cert_auth(s_.verify);
      ssl.set_verify(s_.verify);
      // No ssl.set_error_handler: in paho-mqtt-cpp 1.2 it is called on a dead object (see
      // tls_probe.hpp); a failed TLS connect is explained by tlsReason() instead.
      o.set_ssl(std::move(ssl));
    }
    return o;
  }

  // Subscribes every filter again on the new connection and waits for every SUBACK.
  bool restoreSubscriptions(std::string& reason) {
    std::vector<SubOp> groups;
    {
      std::lock_guard lk(mu_);
      subops_.clear();                           // everything current is restored below
      std::map<std::string_view, size_t> index;  // broker filter -> its group, in first-use order
      for (const auto& s : subs_) {
        auto [it, fresh] = index.emplace(s.broker_filter, groups.size());
        if (fresh) groups.push_back(SubOp{true, s.broker_filter, {}});
        groups[it->second].ids.push_back(s.id);
      }
      restore_pending_ = groups.size();
      restore_failed_ = false;
    }
    for (auto& g : groups)
      if (!sendSubscribe(g, true)) {
        reason = "restoring subscriptions failed";
        return false;
      }
    std::unique_lock lk(mu_);
    auto deadline = Clock::now() + std::chrono::milliseconds(s_.connect_timeout_ms);
    bool ok = cv_.wait_until(lk, deadline, [&] { return stop_ || lost_ || restore_failed_ || restore_pending_ == 0; });
    if (stop_) return false;
    if (lost_) {
      reason = lost_reason_;
      return false;
    }
    if (!ok || restore_failed_) {
      reason = !ok ? "restoring " + std::to_string(groups.size()) + " subscription(s) timed out"
                   : "restoring subscriptions failed with the connection";
      return false;
    }
    if (!groups.empty())
      host_.debug("mqtt " + s_.url + ": restored " + std::to_string(groups.size()) + " subscription(s)");
    return true;
  }

  // Connected: send subscription changes and publishes until the connection drops or stop().
  void serve() {
    auto next_sweep = Clock::now() + 500ms;
    while (true) {
      std::vector<SubOp> ops;
      {
        std::unique_lock lk(mu_);
        cv_.wait_until(lk, next_sweep,
                       [&] { return stop_ || lost_ || (!out_.empty() && pub_ops_ < window_) || !subops_.empty(); });
        if (stop_ || lost_) return;
        if (Clock::now() >= next_sweep) {
          requeueFailedLocked(false);
          next_sweep = Clock::now() + 500ms;
        }
        ops.assign(std::make_move_iterator(subops_.begin()), std::make_move_iterator(subops_.end()));
        subops_.clear();
      }
      for (auto& op : ops) {
        if (op.subscribe)
          sendSubscribe(op, false);
        else
          sendUnsubscribe(op.broker_filter);
      }
      std::lock_guard sl(send_mu_);
      sendQueued();
    }
  }

  // Sends out_ in order, as far as the window allows. Stops at the first message paho will not
  // take now. `flushing`: called by stop() (stop_ is set). `caller`: on the host's thread from
  // publish(), which must neither wait nor call back into the host: what paho refuses goes back
  // to the queue for the worker, which retries or reports it. The caller holds send_mu_.
  void sendQueued(bool flushing = false, bool caller = false) {
    while (true) {
      uint64_t id;
      mqtt::message_ptr msg;
      int version;
      {
        std::lock_guard lk(mu_);
        if (out_.empty() || (stop_ && !flushing) || lost_ || !connected_ || pub_ops_ >= window_) return;
        id = next_op_++;
        Op op{OpKind::Publish, gen_, std::move(out_.front()), {}, {}, false, false, {}};
        out_.pop_front();
        op.out.attempts++;
        msg = mqtt::message::create(op.out.topic, op.out.payload.data(), op.out.payload.size(), s_.qos, false);
        version = version_;
        if (version == kV5 && (!op.out.headers.empty() || !s_.shared_group.empty())) {
          mqtt::properties props;
          for (auto& [k, v] : op.out.headers) props.add(mqtt::property(mqtt::property::USER_PROPERTY, k, v));
          if (!s_.shared_group.empty())
            props.add(mqtt::property(mqtt::property::USER_PROPERTY, kGroupProperty, s_.shared_group));
          msg->set_properties(std::move(props));
        }
        ops_.emplace(id, std::move(op));
        ++pub_ops_;
      }
      try {
        client().publish(msg, opCtx(id), pub_listener_);
      } catch (const mqtt::exception& e) {
        int rc = e.get_return_code();
        uint64_t failed_delivery = 0;  // 0: none to report
        bool requeued = false;
        {
          std::lock_guard lk(mu_);
          auto node = ops_.extract(id);
          if (!node.empty()) {
            --pub_ops_;
            Out o = std::move(node.mapped().out);
            if (rc == MQTTASYNC_MAX_BUFFERED_MESSAGES || rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT) paho_busy_.fetch_add(1);
            if (rc == MQTTASYNC_MAX_BUFFERED_MESSAGES || rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT || caller)
              --o.attempts;  // busy; or on the host's thread: the worker decides (and reports) below
            if (!caller && (isDefinitivePublishFailure(rc, 0) || o.attempts > kMaxAttempts)) {
              failed_delivery = o.delivery_id;
              host_.error("mqtt " + s_.url + ": publish to '" + o.topic + "' failed: " + e.what());
            } else {
              out_.push_front(std::move(o));
              requeued = true;
            }
          }
        }
        if (failed_delivery) host_.onDelivery(failed_delivery, FG_DELIVERY_FAILED);
        if (requeued) {
          // Paho will not take it now (disconnecting, window full): try again shortly.
          if (caller) {
            cv_.notify_all();  // the worker retries
            return;
          }
          std::unique_lock lk(mu_);
          cv_.wait_for(lk, 20ms, [&] { return (stop_ && !flushing) || lost_; });
          return;
        }
      }
    }
  }

  bool sendSubscribe(const SubOp& g, bool restore) {
    uint64_t id;
    int sid = 0;
    {
      std::lock_guard lk(mu_);
      if (!connected_ || lost_) {
        if (restore) restore_failed_ = true;
        return false;
      }
      id = next_op_++;
      Op op{OpKind::Subscribe, gen_, {}, g.broker_filter, g.ids, restore, false, {}};
      ops_.emplace(id, std::move(op));
      auto& bs = broker_subs_[g.broker_filter];
      if (!bs.sid) bs.sid = next_sid_ = next_sid_ >= kMaxSubscriptionId ? 1 : next_sid_ + 1;
      if (sub_ids_available_) sid = bs.sid;
    }
    try {
      if (version_ == kV5) {
        // no-local on every subscription; a subscription identifier tells the copies of one
        // message apart when several subscriptions match it.
        mqtt::properties props;
        if (sid) props.add(mqtt::property(mqtt::property::SUBSCRIPTION_IDENTIFIER, sid));
        // (A shared subscription may not ask for no-local: the group property does that job.)
        client().subscribe(g.broker_filter, s_.qos, opCtx(id), sub_listener_,
                           mqtt::subscribe_options(s_.shared_group.empty()), props);
      } else
        client().subscribe(g.broker_filter, s_.qos, opCtx(id), sub_listener_);
      return true;
    } catch (const mqtt::exception& e) {
      bool mine;
      {
        std::lock_guard lk(mu_);
        mine = ops_.erase(id) != 0;
        if (mine && restore) restore_failed_ = true;
      }
      cv_.notify_all();
      host_.warn("mqtt " + s_.url + ": subscribe '" + g.broker_filter + "' failed: " + e.what());
      if (mine && !restore) subscribeFailed(g.ids, g.broker_filter, e.get_return_code(), e.what());
      return false;
    }
  }

  // Paho's own errors that sending again will not heal.
  static bool isDefinitiveLocalError(int rc) {
    switch (rc) {
      case MQTTASYNC_BAD_UTF8_STRING:
      case MQTTASYNC_NULL_PARAMETER:
      case MQTTASYNC_TOPICNAME_TRUNCATED:
      case MQTTASYNC_BAD_STRUCTURE:
      case MQTTASYNC_BAD_QOS:
      case MQTTASYNC_BAD_PROTOCOL:
      case MQTTASYNC_BAD_MQTT_OPTION:
      case MQTTASYNC_WRONG_MQTT_VERSION:
        return true;
      default:
        return false;
    }
  }

  // FG_EVENT_SUBSCRIPTION for those of `ids` still subscribed to broker_filter, when st differs
  // from what was reported for them last (so a restore after a reconnect settles what was
  // pending, and repeats nothing). Called without mu_.
  void settle(const std::vector<uint64_t>& ids, const std::string& broker_filter, fg_status st,
              const std::string& detail) {
    std::vector<uint64_t> report;
    {
      std::lock_guard lk(mu_);
      for (auto& sub : subs_) {
        if (sub.broker_filter != broker_filter || std::find(ids.begin(), ids.end(), sub.id) == ids.end()) continue;
        if (st == FG_OK) sub.failures = 0;
        if (sub.reported == st) continue;
        sub.reported = st;
        report.push_back(sub.id);
      }
    }
    for (uint64_t id : report) host_.subscriptionSettled(id, st, detail);
  }

  // A subscribe (not part of a restore) failed without an answer from the broker. When the
  // connection is going away, the restore after the reconnect settles it; while it stays up,
  // it is tried again, and reported refused (FG_ERR_UNAVAILABLE) after kMaxAttempts failures.
  void subscribeFailed(const std::vector<uint64_t>& ids, const std::string& filter, int rc, const std::string& what) {
    if (isDefinitiveLocalError(rc)) {
      std::string detail =
          "paho refused the subscription to '" + filter + "' (rc " + std::to_string(rc) + ": " + what + ")";
      host_.error("mqtt " + s_.url + ": " + detail);
      settle(ids, filter, FG_ERR_STATE, detail);
      return;
    }
    std::vector<uint64_t> retry, give_up;
    {
      std::lock_guard lk(mu_);
      if (!connected_ || lost_ || stop_) return;
      for (auto& sub : subs_) {
        if (sub.broker_filter != filter || std::find(ids.begin(), ids.end(), sub.id) == ids.end()) continue;
        (++sub.failures >= kMaxAttempts ? give_up : retry).push_back(sub.id);
      }
      if (!retry.empty()) subops_.push_back(SubOp{true, filter, retry});
    }
    cv_.notify_all();
    if (!give_up.empty()) {
      std::string detail = "the subscription to '" + filter + "' failed " + std::to_string(kMaxAttempts) +
                           " times without an answer from the broker (rc " + std::to_string(rc) + ")";
      host_.error("mqtt " + s_.url + ": " + detail);
      settle(give_up, filter, FG_ERR_UNAVAILABLE, detail);
    }
  }

  void sendUnsubscribe(const std::string& broker_filter) {
    uint64_t id;
    {
      std::lock_guard lk(mu_);
      id = next_op_++;
      ops_.emplace(id, Op{OpKind::Unsubscribe, gen_, {}, broker_filter, {}, false, false, {}});
    }
    try {
      client().unsubscribe(broker_filter, opCtx(id), unsub_listener_);
    } catch (const mqtt::exception& e) {
      std::lock_guard lk(mu_);
      ops_.erase(id);
      host_.warn("mqtt " + s_.url + ": unsubscribe '" + broker_filter + "' failed: " + e.what());
    }
  }

  // ---- completion callbacks (paho's thread) -----------------------------------------------

  void publishDone(const mqtt::token& t, bool ok) {
    uint64_t id = opId(t);
    uint64_t delivery = 0;
    fg_delivery status = FG_DELIVERY_OK;
    bool wake;
    {
      std::lock_guard lk(mu_);
      auto it = ops_.find(id);
      if (it == ops_.end() || it->second.kind != OpKind::Publish) return;
      Op& op = it->second;
      if (!ok) {
        int rc = t.get_return_code();
        int reason = reasonOf(t);
        if (!isDefinitivePublishFailure(rc, reason) && op.out.attempts <= kMaxAttempts) {
          // Most likely the connection is going away: resend after the reconnect (or after
          // a short while if the connection stays up).
          op.conn_failed = true;
          op.failed_at = Clock::now();
          return;
        }
        host_.error("mqtt " + s_.url + ": publish to '" + op.out.topic + "' refused (rc " + std::to_string(rc) +
                    ", reason " + hex2(reason) + ")");
        status = FG_DELIVERY_FAILED;
      }
      delivery = op.out.delivery_id;
      ops_.erase(it);
      // Wake the worker only when it can do something now: the window was full and messages
      // wait, or stop() waits for the window to empty. (Waking on every PUBACK cost a context
      // switch per message.)
      wake = stop_ || (pub_ops_ >= window_ && !out_.empty());
      --pub_ops_;
    }
    if (wake) cv_.notify_all();
    if (delivery) host_.onDelivery(delivery, status);
  }

  // SUBACK (or its absence). Settles the subscriptions of the op: FG_OK when granted,
  // FG_ERR_STATE when the broker refused (MQTT 5 reason >= 0x80, 3.1.1 return code 0x80).
  void subscribeDone(const mqtt::token& t, bool ok) {
    uint64_t id = opId(t);
    std::string filter;
    std::vector<uint64_t> ids;
    bool refused = false;
    bool restore = false;
    int code = 0;
    int rc = 0;
    {
      std::lock_guard lk(mu_);
      auto it = ops_.find(id);
      if (it == ops_.end() || it->second.kind != OpKind::Subscribe) return;
      restore = it->second.restore;
      Op op = std::move(it->second);
      ops_.erase(it);
      filter = op.filter;
      ids = std::move(op.sub_ids);
      if (ok) {
        code = reasonOf(t);
        try {
          mqtt::subscribe_response rsp = t.get_subscribe_response();
          for (auto r : rsp.get_reason_codes())
            if (static_cast<int>(r) >= 0x80) code = static_cast<int>(r);
        } catch (...) {
          // no response details: keep the token's own reason code
        }
        refused = code >= 0x80;
      } else {
        rc = t.get_return_code();
        int reason = reasonOf(t);
        code = reason >= 0x80 ? reason : rc;
        refused = reason >= 0x80 || rc == 0x80;
        if (!refused && op.restore) {
          // Not an answer from the broker: the connection failed under the restore, which
          // starts over on a new connection (and settles these then).
          restore_failed_ = true;
          cv_.notify_all();
          return;
        }
      }
      if (!refused && ok)
        if (auto bs = broker_subs_.find(filter); bs != broker_subs_.end()) bs->second.confirmed = true;
    }
    if (!ok && !refused) {
      subscribeFailed(ids, filter, rc, "no SUBACK");
    } else if (refused) {
      std::string detail = "the broker refused the subscription to '" + filter + "' (" + subackReason(code) + ")";
      host_.error("mqtt " + s_.url + ": " + detail);
      settle(ids, filter, FG_ERR_STATE, detail);
    } else {
      settle(ids, filter, FG_OK, "");
    }
    if (restore) {
      // Only now: the worker reports RECONNECTED when the last one is counted, and every
      // settlement must come before it.
      std::lock_guard lk(mu_);
      if (restore_pending_ > 0) --restore_pending_;
    }
    cv_.notify_all();
  }

  void unsubscribeDone(const mqtt::token& t, bool ok) {
    std::string filter;
    {
      std::lock_guard lk(mu_);
      auto it = ops_.find(opId(t));
      if (it == ops_.end()) return;
      filter = it->second.filter;
      ops_.erase(it);
    }
    if (!ok)
      host_.warn("mqtt " + s_.url + ": unsubscribe '" + filter + "' failed (rc " + std::to_string(t.get_return_code()) +
                 ")");
  }

  void connectionLost(const std::string& reason) {
    {
      std::lock_guard lk(mu_);
      if (!connected_ || lost_) return;
      lost_ = true;
      lost_reason_ = reason;
    }
    cv_.notify_all();
  }

  // ---- inbound -----------------------------------------------------------------------------

  void onInbound(const mqtt::const_message_ptr& m) {
    if (!m) return;
    if (stopping_) {  // stop() is disconnecting; counted in its "lost" warning
      ++inbound_lost_;
      return;
    }
    const std::string& full = m->get_topic();
    if (full.compare(0, s_.prefix.size(), s_.prefix) != 0) {
      host_.warn("mqtt " + s_.url + ": message on '" + full + "' outside topic_prefix '" + s_.prefix + "' ignored");
      return;
    }
    std::string_view topic = std::string_view(full).substr(s_.prefix.size());
    const mqtt::properties& props = m->get_properties();
    std::vector<int> copy_sids;  // MQTT 5: the subscriptions this copy was sent for
    try {
      size_t n = props.count(mqtt::property::SUBSCRIPTION_IDENTIFIER);
      for (size_t i = 0; i < n; ++i)
        copy_sids.push_back(mqtt::get<int>(props, mqtt::property::SUBSCRIPTION_IDENTIFIER, i));
    } catch (...) {
    }
    uint64_t sub_id = 0;
    bool found = false;
    bool duplicate = false;
    {
      std::lock_guard lk(mu_);
      int first_confirmed_sid = 0;
      for (const auto& s : subs_) {
        if (!fingate::topicMatches(s.filter, topic)) continue;
        if (!found) {
          sub_id = s.id;
          found = true;
        }
        auto bs = broker_subs_.find(s.broker_filter);
        if (bs != broker_subs_.end() && bs->second.confirmed) {
          first_confirmed_sid = bs->second.sid;
          break;
        }
      }
      // The broker sends one copy per matching subscription (or one carrying every matching
      // identifier): hand over only the copy that carries the first confirmed match.
      if (found && sub_ids_available_ && first_confirmed_sid && !copy_sids.empty())
        duplicate = std::find(copy_sids.begin(), copy_sids.end(), first_confirmed_sid) == copy_sids.end();
    }
    if (!found) {
      host_.debug("mqtt " + s_.url + ": message on '" + full + "' matches no current subscription; ignored");
      return;
    }
    if (duplicate) return;
    const auto& payload = m->get_payload_ref();
    std::vector<std::pair<std::string, std::string>> headers;
    try {
      size_t n = props.count(mqtt::property::USER_PROPERTY);
      for (size_t i = 0; i < n; ++i) {
        auto kv = mqtt::get<mqtt::string_pair>(props, mqtt::property::USER_PROPERTY, i);
        if (!s_.shared_group.empty() && std::get<0>(kv) == kGroupProperty && std::get<1>(kv) == s_.shared_group) {
          ++group_echoes_;  // published by an instance of this group (this one or another)
          return;
        }
        headers.emplace_back(std::get<0>(kv), std::get<1>(kv));
      }
    } catch (...) {
    }
    int64_t now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    uint64_t token = next_token_.fetch_add(1, std::memory_order_relaxed);
    std::unique_lock lk(hold_mu_);
    if (hold_.empty()) {
      // Nothing waiting before it: hand it over directly (the common case).
      lk.unlock();
      fg_status st = deliver(sub_id, topic, std::string_view(payload.data(), payload.size()), headers, now_ms, token);
      if (st != FG_RETRY) return;
      lk.lock();
    }
    // Keep it, in order, for the redelivery thread. This is paho's one callback thread for
    // every MQTT client of the process: it never waits here. When the hold is full the
    // message is lost (paho acknowledged it to the broker on receipt; there is no manual ack).
    size_t bytes = full.size() + payload.size();
    for (auto& [k, v] : headers) bytes += k.size() + v.size();
    if (stopping_) {
      ++inbound_lost_;
      return;
    }
    if (hold_.size() >= s_.hold_max || hold_bytes_ + bytes > s_.hold_max_bytes) {
      ++hold_dropped_;
      ++drops_unlogged_;
      // The first loss at once, then at most one line per kDropLogInterval (with the count).
      auto now = Clock::now();
      if (now >= next_drop_log_) {
        next_drop_log_ = now + kDropLogInterval;
        uint64_t n = drops_unlogged_;
        drops_unlogged_ = 0;
        lk.unlock();
        logDrops(n);
      }
      return;
    }
    if (hold_.empty()) hold_started_ = Clock::now();
    hold_bytes_ += bytes;
    hold_.push_back(Held{sub_id, std::string(topic), std::string(payload.data(), payload.size()), std::move(headers),
                         now_ms, token, bytes});
    ++held_total_;
    lk.unlock();
    hold_cv_.notify_all();
  }

  void logDrops(uint64_t n) {
    host_.error("mqtt " + s_.url + ": inbound hold full (" + std::to_string(s_.hold_max) + " messages / " +
                std::to_string(s_.hold_max_bytes) + " bytes: the host has answered RETRY for a while): " +
                std::to_string(n) + " message(s) LOST since the last report, " + std::to_string(hold_dropped_.load()) +
                " in all (paho acknowledges on receipt, so the broker will not send them again; raise "
                "inbound_hold_max / inbound_hold_max_bytes or speed up the route)");
  }

  fg_status deliver(uint64_t sub_id, std::string_view topic, std::string_view payload,
                    const std::vector<std::pair<std::string, std::string>>& headers, int64_t ts, uint64_t token) {
    std::vector<fg_header> hs;
    hs.reserve(headers.size());
    for (auto& [k, v] : headers) hs.push_back(fg_header{fingate::sdk::str(k), fingate::sdk::str(v)});
    fg_message msg{
        fingate::sdk::str(topic), fingate::sdk::str(payload), hs.empty() ? nullptr : hs.data(), hs.size(), ts, 0};
    bool tracked = false;
    fg_status st = host_.onMessageTracked(sub_id, msg, token, &tracked);
    if (st == FG_OK) {
      // Without tokens (a 1.0 host) the host's FG_OK is the last word: count it as delivered.
      if (tracked)
        handed_tracked_.fetch_add(1, std::memory_order_relaxed);
      else
        handed_untracked_.fetch_add(1, std::memory_order_relaxed);
    } else if (st != FG_RETRY) {
      host_refused_.fetch_add(1, std::memory_order_relaxed);
    }
    return st;
  }

  void redeliverLoop() {
    std::unique_lock lk(hold_mu_);
    auto pause = 1ms;
    while (true) {
      hold_cv_.wait(lk, [&] { return stopping_ || !hold_.empty(); });
      if (stopping_) return;
      Held& h = hold_.front();  // stays at the front (and in place) until the host takes it
      lk.unlock();
      fg_status st = deliver(h.sub_id, h.topic, h.payload, h.headers, h.timestamp_ms, h.token);
      lk.lock();
      if (st == FG_RETRY) {
        // The host never says when it has room again: ask again shortly.
        hold_cv_.wait_for(lk, pause, [&] { return stopping_.load(); });
        pause = std::min<std::chrono::milliseconds>(pause * 2, 10ms);
        continue;
      }
      pause = 1ms;
      hold_bytes_ -= h.bytes;
      hold_.pop_front();
      if (hold_.empty()) {
        auto held_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - hold_started_).count();
        if (held_ms >= 1000)
          host_.info("mqtt " + s_.url + ": inbound hold drained after " + std::to_string(held_ms) + " ms (" +
                     std::to_string(held_total_) + " messages held so far, " + std::to_string(hold_dropped_.load()) +
                     " lost to a full hold)");
      }
    }
  }

  // At stop: what happened to the inbound messages, by kind.
  void logInboundTotals() {
    uint64_t tracked = handed_tracked_.load(), untracked = handed_untracked_.load();
    uint64_t acked = 0;
    for (auto& a : acked_) acked += a.load();
    std::string line =
        "mqtt " + s_.url + ": inbound totals: " + std::to_string(tracked + untracked) + " handed to the host";
    if (untracked) line += " (" + std::to_string(untracked) + " without an outcome token)";
    line += "; outcomes: delivered " + std::to_string(acked_[FG_OUTCOME_DELIVERED].load()) + ", dead_lettered " +
            std::to_string(acked_[FG_OUTCOME_DEAD_LETTERED].load()) + ", refused " +
            std::to_string(acked_[FG_OUTCOME_REFUSED].load()) + ", filtered " +
            std::to_string(acked_[FG_OUTCOME_FILTERED].load());
    if (acked_[kOutcomeKinds].load()) line += ", unknown outcome " + std::to_string(acked_[kOutcomeKinds].load());
    line += "; not acked yet " + std::to_string(tracked >= acked ? tracked - acked : 0);
    if (acked_unknown_.load()) line += "; acks for unknown tokens " + std::to_string(acked_unknown_.load());
    line += "; refused by the host " + std::to_string(host_refused_.load()) + "; held for back-pressure " +
            std::to_string(held_total_) + "; lost to a full hold " + std::to_string(hold_dropped_.load()) +
            "; lost at stop " + std::to_string(inbound_lost_.load());
    if (paho_busy_.load()) line += "; paho answered busy to " + std::to_string(paho_busy_.load()) + " publish(es)";
    host_.info(line);
  }

  // ---- connection bookkeeping ----------------------------------------------------------------

  // After a drop: publishes that were not confirmed go back to the front of the queue, in order.
  void dropConnection(const std::string& reason) {
    std::lock_guard sl(send_mu_);  // no publish() hands anything to paho meanwhile
    bool was_connected;
    {
      std::lock_guard lk(mu_);
      was_connected = connected_;
      connected_ = false;
      lost_ = false;
      requeueFailedLocked(true);
      subops_.clear();
      for (auto& [f, bs] : broker_subs_) bs.confirmed = false;
    }
    if (was_connected) {
      // Make sure paho's side is closed too (a timed-out restore leaves it connected).
      try {
        if (client().is_connected()) client().disconnect(0)->wait_for(1s);
      } catch (...) {
      }
    }
    (void)reason;
  }

  // all: every op (the connection is gone); else only publishes that failed > 2 s ago while
  // the connection stayed up.
  void requeueFailedLocked(bool all) {
    std::vector<Out> back;
    auto now = Clock::now();
    for (auto it = ops_.begin(); it != ops_.end();) {
      Op& op = it->second;
      bool take = all || (op.kind == OpKind::Publish && op.conn_failed && now - op.failed_at > 2s);
      if (!take) {
        ++it;
        continue;
      }
      if (op.kind == OpKind::Publish) {
        back.push_back(std::move(op.out));
        --pub_ops_;
      }
      it = ops_.erase(it);
    }
    std::sort(back.begin(), back.end(), [](const Out& a, const Out& b) { return a.seq < b.seq; });
    for (auto it = back.rbegin(); it != back.rend(); ++it) out_.push_front(std::move(*it));
  }

  // stop(): send what is queued, disconnect within the deadline.
  void shutdownConnection() {
    bool connected;
    Clock::time_point deadline;
    {
      std::lock_guard lk(mu_);
      connected = connected_ && !lost_;
      deadline = stop_deadline_;
    }
    if (!connected || !client_.load()) return;
    // Flush what is queued, within the broker's window.
    while (Clock::now() < deadline) {
      {
        std::unique_lock lk(mu_);
        if (out_.empty() || lost_) break;
        if (!cv_.wait_until(lk, deadline, [&] { return lost_ || pub_ops_ < window_; }) || lost_) break;
      }
      std::lock_guard sl(send_mu_);
      sendQueued(true);
    }
    // Wait (bounded) for the broker to confirm what is in flight, then disconnect.
    {
      std::unique_lock lk(mu_);
      cv_.wait_until(lk, deadline, [&] { return pub_ops_ == 0 || lost_; });
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    try {
      auto tok = client().disconnect(static_cast<int>(std::max<long long>(0, left)));
      tok->wait_for(std::chrono::milliseconds(std::max<long long>(100, left + 200)));
    } catch (...) {
    }
    std::lock_guard lk(mu_);
    connected_ = false;
  }

  // Everything still queued or unconfirmed at stop: FAILED (the host may resend it elsewhere).
  void failEverything(const char* why) {
    std::vector<uint64_t> failed;
    size_t n = 0;
    {
      std::lock_guard lk(mu_);
      for (auto& o : out_) {
        ++n;
        if (o.delivery_id) failed.push_back(o.delivery_id);
      }
      out_.clear();
      for (auto& [id, op] : ops_)
        if (op.kind == OpKind::Publish) {
          ++n;
          if (op.out.delivery_id) failed.push_back(op.out.delivery_id);
        }
      ops_.clear();
      pub_ops_ = 0;
    }
    if (n)
      host_.warn("mqtt " + s_.url + ": " + why + " with " + std::to_string(n) +
                 " publish(es) not confirmed by the broker");
    for (uint64_t d : failed) host_.onDelivery(d, FG_DELIVERY_FAILED);
  }

  // ---- small helpers -------------------------------------------------------------------------

  bool stopRequested() {
    std::lock_guard lk(mu_);
    return stop_;
  }

  void sleepUnlessStopped(std::chrono::milliseconds d) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, d, [&] { return stop_; });
  }

  // Exponential backoff with "equal jitter": a random delay in [base/2, base].
  int backoff(int attempt) {
    long long base = s_.reconnect_min_ms;
    for (int i = 0; i < attempt && base < s_.reconnect_max_ms; ++i) base *= 2;
    return jitter(static_cast<int>(std::min<long long>(base, s_.reconnect_max_ms)));
  }
  int jitter(int base_ms) {
    if (base_ms < 2) return base_ms;
    std::uniform_int_distribution<int> d(base_ms / 2, base_ms);
    std::lock_guard lk(rng_mu_);
    return d(rng_);
  }

  static constexpr int kMaxAttempts = 5;
  static constexpr int kMaxSubscriptionId = 268435455;
  static constexpr size_t kMaxWindow = 65535;

  Settings s_;
  PubListener pub_listener_;
  SubListener sub_listener_;
  UnsubListener unsub_listener_;
  // The paho clients (see start()) and the one of the current connection attempt. client_
  // changes only on the worker, while not connected, under send_mu_.
  std::unique_ptr<mqtt::async_client> client5_;
  std::unique_ptr<mqtt::async_client> client311_;
  std::atomic<mqtt::async_client*> client_{nullptr};

  std::mutex rng_mu_;
  std::mt19937 rng_;

  // mu_ guards everything below up to the hold.
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
  bool running_ = false;  // publish accepted
  bool stop_ = false;
  Clock::time_point stop_deadline_{};
  bool connected_ = false;
  bool lost_ = false;
  std::string lost_reason_;
  uint64_t gen_ = 0;
  int version_ = kV5;
  size_t window_ = 1;  // publishes in flight at most (see connectOnce)
  std::deque<Out> out_;
  // Serialises handing publishes to paho (worker or publish() on the host's thread) and
  // dropping the connection. Taken before mu_, never while holding it.
  std::mutex send_mu_;
  std::map<uint64_t, Op> ops_;
  size_t pub_ops_ = 0;
  uint64_t next_op_ = 1;
  uint64_t next_seq_ = 1;
  std::vector<Sub> subs_;
  std::deque<SubOp> subops_;
  size_t restore_pending_ = 0;
  bool restore_failed_ = false;
  struct BrokerSub {
    int sid = 0;             // MQTT 5 subscription identifier
    bool confirmed = false;  // SUBACKed on the current connection
  };
  std::map<std::string, BrokerSub> broker_subs_;  // by broker filter
  int next_sid_ = 0;
  bool sub_ids_available_ = false;

  std::atomic<bool> stopping_{false};
  std::atomic<size_t> inbound_lost_{0};
  std::mutex hold_mu_;  // guards the hold and its bookkeeping below
  std::condition_variable hold_cv_;
  std::deque<Held> hold_;
  size_t hold_bytes_ = 0;
  Clock::time_point hold_started_{};
  uint64_t held_total_ = 0;
  std::atomic<uint64_t> hold_dropped_{0};
  uint64_t drops_unlogged_ = 0;
  Clock::time_point next_drop_log_{};
  static constexpr auto kDropLogInterval = 10s;

  // Outcome tokens and counters (ABI 1.1).
  static constexpr size_t kOutcomeKinds = 4;  // FG_OUTCOME_DELIVERED .. FG_OUTCOME_FILTERED
  std::atomic<uint64_t> next_token_{1};
  std::atomic<uint64_t> handed_tracked_{0};
  std::atomic<uint64_t> handed_untracked_{0};
  std::atomic<uint64_t> host_refused_{0};
  std::array<std::atomic<uint64_t>, kOutcomeKinds + 1> acked_{};  // the last: an unknown outcome
  std::atomic<uint64_t> acked_unknown_{0};
  std::atomic<uint64_t> paho_busy_{0};  // publishes paho refused as busy (-4, -12)

  std::atomic<uint64_t> group_echoes_{0};  // shared_group: the group's own publishes dropped on receipt
  std::atomic<int> callbacks_active_{0};
  std::atomic<bool> callbacks_closed_{false};
  bool fallback_logged_ = false;  // worker only

  std::thread worker_;
  std::thread redeliver_;
};

}  // namespace

FG_DEFINE_PLUGIN(MqttPlugin, "mqtt", "0.1.0", FG_CAP_DELIVERY | FG_CAP_SUBSCRIBE_ACK, "url", "client_id", "qos",
                 "mqtt_version", "username", "password", "topic_prefix", "tls.ca_file", "tls.cert_file", "tls.key_file",
                 "tls.verify", "keepalive_s", "reconnect_min_ms", "reconnect_max_ms", "connect_retry",
                 "connect_timeout_ms", "inbound_hold_max", "inbound_hold_max_bytes", "inflight_max", "queue_max",
                 "clean_session", "shared_group")
