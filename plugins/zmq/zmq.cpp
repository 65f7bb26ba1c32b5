// zmq: fingate's ZeroMQ transport (DESIGN §5; the client-facing contract is in
// docs/transports.md, section "ZeroMQ").
//
// The gateway owns one ROUTER socket, bound (`bind`) or connected (`connect`, libzmq reconnects).
// Every message is exactly three frames after the routing id:
//   client -> gateway  [verb, topic, payload]  verb PUB, SUB, UNSUB, PING
//   gateway -> client  [MSG, topic, payload], [PONG, topic, payload] (echoed), [ERR, "", json]
// A peer (one routing id) is a session: a non-zero id, never reused, opened on its first valid
// message, closed when it stays silent for 3 x heartbeat_ms, when a send to it fails
// (EHOSTUNREACH: ZMQ_ROUTER_MANDATORY is on), on a framing error, or by close_session.
//
// Back-pressure. Outbound: a send that would block (EAGAIN, the peer's pipe is at SNDHWM) keeps
// the message in that peer's outbox and retries on a short timer; a publish to a session whose
// outbox holds session_buffer_bytes answers FG_RETRY (the core queues per session, closes a slow
// consumer with close_session), and FG_EVENT_SESSION_WRITABLE follows once it drained below
// half. Inbound: when the host answers FG_RETRY the message is held and the ROUTER is not read
// until the host took it (the host's inbound queue is per endpoint: every peer waits), so
// libzmq's RCVHWM and TCP flow control slow the clients down. Nothing is dropped.
//
// Threading: ZeroMQ sockets are not thread-safe, so one I/O thread owns the context's sockets
// (the ROUTER, the socket monitor's PAIR, the ZAP handler's REP when CURVE is on) and every
// peer's state. publish/close_session (host threads) append to an inbox under a mutex and wake
// the I/O thread through an eventfd that sits in its zmq_poll set: one lock and, for a batch,
// one wake-up. The message frames are built (copied) on the publishing thread, outside the lock.
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "frame.hpp"  // errorJson, splitCloseReason: the TCP transport's error payloads

namespace fingate {
namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;
using sdk::ConfigError;
using sdk::str;
using sdk::view;

constexpr size_t kReadBatch = 512;       // messages read per loop turn (then the outboxes get a turn)
constexpr uint32_t kRetryMaxMs = 5;      // held inbound message / blocked peer: retry after 1, 2, 4, 5, 5 ms
constexpr size_t kMaxDetailBytes = 200;  // client bytes quoted in error details / logs
constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";

enum Verb : uint8_t { kMsg, kPong, kErr };
constexpr std::string_view kVerbText[] = {"MSG", "PONG", "ERR"};

std::string printable(std::string_view s, size_t max = kMaxDetailBytes) { return sdk::printable(s, max); }

// A routing id (binary) as hex, for logs.
std::string hexId(std::string_view id) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < id.size() && i < 32; ++i) {
    out += d[static_cast<unsigned char>(id[i]) >> 4];
    out += d[static_cast<unsigned char>(id[i]) & 15];
  }
  return out.empty() ? "(empty)" : out;
}

// ---- configuration -----------------------------------------------------------------------

struct Settings {
  bool bind = true;
  std::string address;
  uint32_t max_frame_bytes = 1048576;
  uint32_t heartbeat_ms = 10000;
  int send_hwm = 1000;
  int recv_hwm = 1000;
  size_t session_buffer_bytes = 256 * 1024;
  size_t max_outbound_bytes = 8u * 1024 * 1024;
  size_t max_peers = 10000;
  size_t max_subscriptions = 1024;
  bool curve = false;
  std::string server_secret;                // 32 bytes, binary
  std::string server_public_z85;            // for the log line operators copy to clients
  std::unordered_set<std::string> allowed;  // 32-byte binary client public keys; empty = any
};

#define FG_ZMQ_KEYS                                                                                                   \
  "bind", "connect", "max_frame_bytes", "heartbeat_ms", "send_hwm", "recv_hwm", "session_buffer_bytes",               \
      "max_outbound_bytes", "max_peers", "max_subscriptions", "curve.server_secret_key", "curve.allowed_client_keys", \
      "curve.allowed_clients_file"

const char* const kKnownKeys[] = {FG_ZMQ_KEYS, "plugin", "role"};

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// A Z85 CURVE key (40 characters) as its 32 bytes.
std::string decodeKey(const std::string& key, const std::string& z85) {
  if (z85.size() != 40) throw ConfigError(key, "a CURVE key is 40 Z85 characters, got " + std::to_string(z85.size()));
  uint8_t out[32];
  if (!zmq_z85_decode(out, z85.c_str())) throw ConfigError(key, "not a valid Z85 key");
  return std::string(reinterpret_cast<const char*>(out), sizeof out);
}

void checkAddress(const std::string& key, const std::string& v, bool bind) {
  const auto scheme_end = v.find("://");
  if (scheme_end == std::string::npos)
    throw ConfigError(key, "expected a ZeroMQ address such as tcp://127.0.0.1:7401, got '" + v + "'");
  const std::string scheme = v.substr(0, scheme_end), rest = v.substr(scheme_end + 3);
  if (scheme == "ipc") {
    if (rest.empty()) throw ConfigError(key, "the ipc:// path is missing");
    return;
  }
  if (scheme != "tcp") throw ConfigError(key, "only tcp:// and ipc:// addresses are supported, got '" + v + "'");
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0) throw ConfigError(key, "expected tcp://host:port, got '" + v + "'");
  const std::string port = rest.substr(colon + 1);
  if (port == "*" && bind) return;
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw ConfigError(
        key, "expected tcp://host:port with a numeric port" + std::string(bind ? " or *" : "") + ", got '" + v + "'");
  const unsigned long p = std::stoul(port);
  if (p > 65535 || (p == 0 && !bind))
    throw ConfigError(key, "the port must be " + std::string(bind ? "0" : "1") + "..65535");
}

Settings parseSettings(const sdk::Config& cfg) {
  cfg.rejectUnknown(kKnownKeys, "zmq");
  Settings s;
  const bool has_bind = cfg.has("bind"), has_connect = cfg.has("connect");
  if (has_bind && has_connect) throw ConfigError("connect", "give either bind or connect, not both");
  if (!has_bind && !has_connect)
    throw ConfigError("bind", "one of bind or connect (a ZeroMQ address such as tcp://127.0.0.1:7401) is required");
  s.bind = has_bind;
  s.address = s.bind ? cfg.get("bind") : cfg.get("connect");
  checkAddress(s.bind ? "bind" : "connect", s.address, s.bind);
  s.max_frame_bytes = static_cast<uint32_t>(cfg.getInt("max_frame_bytes", 1048576, 64, 1LL << 30));
  s.heartbeat_ms = static_cast<uint32_t>(cfg.getInt("heartbeat_ms", 10000, 10, 3600000));
  s.send_hwm = static_cast<int>(cfg.getInt("send_hwm", 1000, 1, 10000000));
  s.recv_hwm = static_cast<int>(cfg.getInt("recv_hwm", 1000, 1, 10000000));
  s.session_buffer_bytes = static_cast<size_t>(cfg.getInt("session_buffer_bytes", 256 * 1024, 1024, 1LL << 40));
  s.max_outbound_bytes = static_cast<size_t>(cfg.getInt("max_outbound_bytes", 8LL * 1024 * 1024, 1024, 1LL << 40));
  s.max_peers = static_cast<size_t>(cfg.getInt("max_peers", 10000, 1, 10000000));
  s.max_subscriptions = static_cast<size_t>(cfg.getInt("max_subscriptions", 1024, 1, 1000000));
  const std::string secret = trim(cfg.get("curve.server_secret_key"));
  const bool has_keys = cfg.has("curve.allowed_client_keys"), has_file = cfg.has("curve.allowed_clients_file");
  if (secret.empty() && (has_keys || has_file))
    throw ConfigError(has_keys ? "curve.allowed_client_keys" : "curve.allowed_clients_file",
                      "needs curve.server_secret_key (CURVE is off without it)");
  if (!secret.empty()) {
    if (!zmq_has("curve")) throw ConfigError("curve.server_secret_key", "this libzmq was built without CURVE support");
    s.curve = true;
    s.server_secret = decodeKey("curve.server_secret_key", secret);
    char pub[41] = {0};
    if (zmq_curve_public(pub, secret.c_str()) != 0)
      throw ConfigError("curve.server_secret_key", "cannot derive the public key from it");
    s.server_public_z85 = pub;
    std::string list = cfg.get("curve.allowed_client_keys");
    for (size_t p = 0; p <= list.size();) {
      size_t e = list.find(',', p);
      if (e == std::string::npos) e = list.size();
      const std::string k = trim(list.substr(p, e - p));
      if (!k.empty()) s.allowed.insert(decodeKey("curve.allowed_client_keys", k));
      p = e + 1;
    }
    if (has_keys && s.allowed.empty()) throw ConfigError("curve.allowed_client_keys", "is empty");
    if (has_file) {
      const std::string path = cfg.get("curve.allowed_clients_file");
      std::ifstream in(path);
      if (!in) throw ConfigError("curve.allowed_clients_file", "cannot read '" + path + "'");
      std::string line;
      size_t n = 0;
      while (std::getline(in, line)) {
        ++n;
        line = trim(line);
        if (line.empty() || line[0] == '#') continue;
        try {
          s.allowed.insert(decodeKey("curve.allowed_clients_file", line));
        } catch (const ConfigError&) {
          throw ConfigError("curve.allowed_clients_file",
                            path + ":" + std::to_string(n) + ": not a 40-character Z85 public key");
        }
      }
      if (s.allowed.empty()) throw ConfigError("curve.allowed_clients_file", "'" + path + "' lists no key");
    }
  }
  return s;
}

// ---- I/O pieces --------------------------------------------------------------------------

// Outcome of a broadcast to several peers (io thread only).
using Tracker = sdk::FanOutDelivery;  // a broadcast: handed = sent to libzmq

struct Out {
  Verb verb = kMsg;
  zmq::message_t topic, payload;
  uint64_t delivery_id = 0;
  std::shared_ptr<Tracker> tracker;
  size_t bytes = 0;
  bool session_counted = false;  // publish() counted it in the session's bytes
};

// What publish() shares with the I/O thread about one open session.
struct SessionState {
  std::atomic<size_t> bytes{0};           // published to it and not yet handed to libzmq (or failed)
  std::atomic<bool> wants_wakeup{false};  // a publish answered FG_RETRY since the last wake-up
};

struct Peer {
  uint64_t session = 0;
  std::string id;  // the routing id
  std::shared_ptr<SessionState> state = std::make_shared<SessionState>();
  std::deque<Out> outq;
  size_t out_bytes = 0;
  std::set<std::string, std::less<>> filters;
  Clock::time_point last_rx = Clock::now();
  bool blocked = false;  // the last send answered EAGAIN
  bool active = false;   // listed in active_
  std::string name() const { return "session " + std::to_string(session) + " (peer " + hexId(id) + ")"; }
};

enum class SendResult { Sent, Full, Gone };

// ---- the plugin --------------------------------------------------------------------------

class ZmqPlugin final : public sdk::Plugin {
 public:
  ZmqPlugin(sdk::Host host, const sdk::Config& cfg) : Plugin(host), cfg_(parseSettings(cfg)) {}
  ~ZmqPlugin() override { stop(2000); }

  fg_status start() override;
  fg_status stop(uint32_t timeout_ms) override;
  fg_status publish(const fg_message& msg, uint64_t delivery_id) override;
  fg_status closeSession(uint64_t session, const char* reason) override;

 private:
  // A publish or close_session handed to the I/O thread.
  struct Posted {
    bool close = false;
    uint64_t session = 0;
    zmq::message_t topic, payload;
    uint64_t delivery_id = 0;
    size_t bytes = 0;
    std::string reason;
  };
  // An inbound PUB the host pushed back on (FG_RETRY): kept, retried, never dropped.
  struct Held {
    std::string id;
    zmq::message_t topic, payload;
  };

  void run();
  void loopOnce();
  void wake();
  void drainInbox();
  void deliver(Posted& p);
  void pushOut(Peer& p, Out o);
  void flush(bool retry_blocked);
  bool flushPeer(Peer& p);
  SendResult sendFrames(const std::string& id, Verb verb, zmq_msg_t* topic, zmq_msg_t* payload);
  bool trySendError(const std::string& id, const std::string& json);
  void retryPendingErrors();
  // ERRs to peers whose pipe was full, retried with the blocked peers until sent or expired.
  struct PendingErr {
    std::string json;
    Clock::time_point deadline;
  };
  static constexpr size_t kMaxPendingErrs = 1024;
  static constexpr Ms kPendingErrTtl{5000};
  std::map<std::string, PendingErr> pending_errs_;
  void sendError(const std::string& id, std::string_view error, std::string_view detail);
  void readSome();
  void process(size_t nparts, size_t total);
  bool handlePub(Peer& p, zmq::message_t& topic, zmq::message_t& payload);
  bool retryHeld();
  Peer* openPeer(const std::string& id);
  void closePeer(Peer& p, std::string_view error, const std::string& detail, bool send_err, bool warn);
  void hostile(const std::string& who, std::string_view error, const std::string& detail);
  void checkHeartbeats();
  void handleZap();
  void handleMonitor();
  void settle(Out& o, bool sent);
  void finish();
  void closeSockets(int linger_ms);
  void warnLimited(const std::string& msg) { limited_log_.log(host_, FG_LOG_WARN, "zmq: " + msg); }

  const Settings cfg_;
  sdk::RateLimitedLog limited_log_{"zmq: "};
  std::string endpoint_text_;  // what the socket bound/connected to

  // Guarded by life_mu_.
  std::mutex life_mu_;
  bool started_ = false;
  bool running_ = false;
  bool stop_requested_ = false;
  Clock::time_point stop_deadline_;
  std::vector<Posted> inbox_;
  size_t inbox_bytes_ = 0;  // broadcasts in inbox_
  bool woken_ = false;
  std::unordered_map<uint64_t, std::shared_ptr<SessionState>> sessions_;

  std::unique_ptr<zmq::context_t> ctx_;
  std::unique_ptr<zmq::socket_t> router_, zap_, monitor_;
  int wake_fd_ = -1;
  std::thread thread_;

  // io thread state
  std::vector<Posted> inbox_work_;
  std::unordered_map<uint64_t, std::unique_ptr<Peer>> peers_;
  std::unordered_map<std::string, Peer*> by_id_;
  std::vector<uint64_t> active_;  // sessions with a non-empty outbox
  std::vector<Peer*> targets_;
  uint64_t next_session_ = 1;
  std::optional<Held> held_;
  uint32_t held_delay_ms_ = 0, blocked_delay_ms_ = 0;
  Clock::time_point held_retry_at_, blocked_retry_at_, next_hb_check_;
  bool stopping_ = false;
  bool ever_up_ = false, connected_ = false;
  zmq::message_t in_id_, in_parts_[3], in_extra_;
  std::string id_scratch_;

  // counters (reported in the log lines; see docs/transports.md "ZeroMQ")
  uint64_t hostile_total_ = 0;       // framing errors, invalid topics/filters, refused subscribes
  uint64_t refused_peers_ = 0;       // max_peers reached
  uint64_t expired_peers_ = 0;       // heartbeat limit
  uint64_t gone_peers_ = 0;          // a send answered EHOSTUNREACH
  uint64_t handshake_failures_ = 0;  // not ZMTP, or ZMTP errors (monitor)
  uint64_t auth_refusals_ = 0;       // CURVE keys refused by the ZAP handler
};

// ---- lifecycle -----------------------------------------------------------------------------

fg_status ZmqPlugin::start() {
  {
    std::lock_guard lk(life_mu_);
    if (started_) return FG_ERR_STATE;
    try {
      ctx_ = std::make_unique<zmq::context_t>(1);
      if (cfg_.curve) {  // the ZAP handler must exist before the first client handshake
        zap_ = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::rep);
        zap_->set(zmq::sockopt::linger, 0);
        zap_->bind(kZapEndpoint);
      }
      router_ = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::router);
      zmq::socket_t& r = *router_;
      r.set(zmq::sockopt::router_mandatory, 1);
      r.set(zmq::sockopt::sndhwm, cfg_.send_hwm);
      r.set(zmq::sockopt::rcvhwm, cfg_.recv_hwm);
      // A part larger than twice the limit is refused by libzmq itself (it drops that
      // connection before anything is allocated for the part); parts up to that reach the
      // plugin, which answers ERR "frame too large".
      r.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(cfg_.max_frame_bytes) * 2);
      r.set(zmq::sockopt::linger, 0);
      r.set(zmq::sockopt::heartbeat_ivl, static_cast<int>(cfg_.heartbeat_ms));
      r.set(zmq::sockopt::heartbeat_timeout, static_cast<int>(std::min<uint64_t>(3ull * cfg_.heartbeat_ms, 1u << 30)));
      r.set(zmq::sockopt::heartbeat_ttl, static_cast<int>(std::min<uint64_t>(3ull * cfg_.heartbeat_ms, 6553500)));
      r.set(zmq::sockopt::reconnect_ivl, 100);
      r.set(zmq::sockopt::reconnect_ivl_max, 5000);
      if (cfg_.curve) {
        r.set(zmq::sockopt::curve_server, 1);
        r.set(zmq::sockopt::curve_secretkey, zmq::const_buffer(cfg_.server_secret.data(), cfg_.server_secret.size()));
        r.set(zmq::sockopt::zap_domain, "fingate");
      }
      const std::string mon = "inproc://fingate-zmq-monitor";
      if (zmq_socket_monitor(r.handle(), mon.c_str(),
                             ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0)
        throw zmq::error_t();
      monitor_ = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::pair);
      monitor_->set(zmq::sockopt::linger, 0);
      monitor_->connect(mon);
      if (cfg_.bind) {
        r.bind(cfg_.address);
        endpoint_text_ = r.get(zmq::sockopt::last_endpoint);
      } else {
        r.connect(cfg_.address);
        endpoint_text_ = cfg_.address;
      }
      wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (wake_fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    } catch (const std::exception& e) {
      host_.error("zmq: cannot " + std::string(cfg_.bind ? "bind " : "connect ") + cfg_.address + ": " + e.what());
      if (router_) zmq_socket_monitor(router_->handle(), nullptr, 0);
      monitor_.reset();
      router_.reset();
      zap_.reset();
      ctx_.reset();
      if (wake_fd_ >= 0) ::close(wake_fd_);
      wake_fd_ = -1;
      return FG_ERR_UNAVAILABLE;
    }
    started_ = running_ = true;
  }
  if (cfg_.curve)
    host_.info("zmq: CURVE on, server public key " + cfg_.server_public_z85 + ", " +
               (cfg_.allowed.empty() ? std::string("any client key accepted")
                                     : std::to_string(cfg_.allowed.size()) + " client key(s) allowed"));
  if (cfg_.bind) {
    // Never end the detail with the address: the core's log redaction takes "tcp://h:p)" at
    // the end of a line for a cut-off user-info and masks the port.
    const std::string detail =
        "listening on " + endpoint_text_ + (cfg_.curve ? " (ZeroMQ ROUTER, CURVE)" : " (ZeroMQ ROUTER)");
    host_.info("zmq: " + detail);
    host_.onState(FG_STATE_UP, detail);
  } else {
    host_.onState(FG_STATE_STARTING, "connecting to " + endpoint_text_ + " (ZeroMQ ROUTER)");
  }
  next_hb_check_ = Clock::now() + Ms(std::max<uint32_t>(10, cfg_.heartbeat_ms / 4));
  thread_ = std::thread([this] { run(); });
  return FG_OK;
}

fg_status ZmqPlugin::stop(uint32_t timeout_ms) {
  {
    std::lock_guard lk(life_mu_);
    if (!running_) return FG_OK;
    running_ = false;  // publish/close_session post nothing from now on
    stop_requested_ = true;
    stop_deadline_ = Clock::now() + Ms(timeout_ms);
  }
  wake();
  thread_.join();
  {
    std::lock_guard lk(life_mu_);
    for (auto& p : inbox_)
      if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_FAILED);
    inbox_.clear();
    inbox_bytes_ = 0;
    sessions_.clear();
  }
  ctx_.reset();  // every socket was closed by the I/O thread
  ::close(wake_fd_);
  wake_fd_ = -1;
  host_.info("zmq: stopped");
  host_.onState(FG_STATE_STOPPED, "");
  return FG_OK;
}

void ZmqPlugin::wake() {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
}

void ZmqPlugin::run() {
  while (true) {
    try {
      loopOnce();
    } catch (const std::exception& e) {
      warnLimited(std::string("unexpected exception in the I/O thread: ") + e.what());
    }
    if (stopping_) break;
  }
  try {
    finish();
  } catch (const std::exception& e) {
    host_.error(std::string("zmq: exception while stopping: ") + e.what());
    closeSockets(0);
  }
}

void ZmqPlugin::closeSockets(int linger_ms) {
  if (router_ && router_->handle()) {
    router_->set(zmq::sockopt::linger, linger_ms);
    zmq_socket_monitor(router_->handle(), nullptr, 0);
    router_->close();
  }
  if (monitor_) monitor_->close();
  if (zap_) zap_->close();
}

// One turn: wait (bounded) for the ROUTER, the wake-up, the ZAP handler or the monitor; then
// inbox, ZAP, monitor, held message, reads, sends, heartbeats in that order.
void ZmqPlugin::loopOnce() {
  zmq_pollitem_t items[4];
  size_t n = 0;
  const bool want_read = !held_;
  items[n++] = {router_->handle(), 0, static_cast<short>(want_read ? ZMQ_POLLIN : 0), 0};
  items[n++] = {nullptr, wake_fd_, ZMQ_POLLIN, 0};
  items[n++] = {monitor_->handle(), 0, ZMQ_POLLIN, 0};
  if (zap_) items[n++] = {zap_->handle(), 0, ZMQ_POLLIN, 0};
  const auto now = Clock::now();
  Clock::time_point due = next_hb_check_;
  if (held_) due = std::min(due, held_retry_at_);
  bool any_blocked = false;
  for (uint64_t s : active_)
    if (auto it = peers_.find(s); it != peers_.end() && it->second->blocked) any_blocked = true;
  if (any_blocked || !pending_errs_.empty()) due = std::min(due, blocked_retry_at_);
  long timeout = due <= now ? 0 : static_cast<long>(std::chrono::duration_cast<Ms>(due - now).count()) + 1;
  const int rc = zmq_poll(items, static_cast<int>(n), timeout);
  if (rc < 0 && zmq_errno() != EINTR) throw zmq::error_t();

  if (items[1].revents & ZMQ_POLLIN) {
    uint64_t v;
    [[maybe_unused]] const ssize_t r = ::read(wake_fd_, &v, sizeof v);
  }
  drainInbox();
  if (zap_ && (items[3].revents & ZMQ_POLLIN)) handleZap();
  if (items[2].revents & ZMQ_POLLIN) handleMonitor();
  {
    std::lock_guard lk(life_mu_);
    if (stop_requested_) {
      stopping_ = true;
      return;
    }
  }
  const auto t = Clock::now();
  if (held_ && t >= held_retry_at_) retryHeld();
  if (!held_ && (items[0].revents & ZMQ_POLLIN)) readSome();
  const bool retry_blocked = any_blocked && t >= blocked_retry_at_;
  flush(retry_blocked);
  if (!pending_errs_.empty() && t >= blocked_retry_at_) {
    retryPendingErrors();
    blocked_retry_at_ = t + Ms(std::max<uint32_t>(1, blocked_delay_ms_));
  }
  if (t >= next_hb_check_) {
    checkHeartbeats();
    next_hb_check_ = t + Ms(std::max<uint32_t>(10, cfg_.heartbeat_ms / 4));
  }
}

// Stop: no more reading; publishes already taken are flushed until the deadline; then every
// session is closed (what it still held is failed) and the sockets are closed.
void ZmqPlugin::finish() {
  Clock::time_point deadline;
  {
    std::lock_guard lk(life_mu_);
    deadline = stop_deadline_;
  }
  drainInbox();
  held_.reset();  // input of a closing endpoint is discarded, as on TCP
  while (!active_.empty() && Clock::now() < deadline) {
    flush(true);
    if (active_.empty()) break;
    zmq_pollitem_t items[2] = {{monitor_->handle(), 0, ZMQ_POLLIN, 0}, {nullptr, -1, 0, 0}};
    size_t n = 1;
    if (zap_) items[n++] = {zap_->handle(), 0, ZMQ_POLLIN, 0};
    zmq_poll(items, static_cast<int>(n), 2);
    if (items[0].revents & ZMQ_POLLIN) handleMonitor();
    if (zap_ && (items[1].revents & ZMQ_POLLIN)) handleZap();
  }
  std::vector<Peer*> all;
  for (auto& [s, p] : peers_) all.push_back(p.get());
  for (Peer* p : all) closePeer(*p, "", "the gateway stopped", false, false);
  const auto left = std::chrono::duration_cast<Ms>(deadline - Clock::now()).count();
  closeSockets(static_cast<int>(std::clamp<int64_t>(left, 0, 1000)));
}

// ---- host calls ----------------------------------------------------------------------------

fg_status ZmqPlugin::publish(const fg_message& msg, uint64_t delivery_id) {
  const std::string_view topic = view(msg.topic), payload = view(msg.payload);
  const uint64_t size = 3 + uint64_t(topic.size()) + payload.size();
  if (size > cfg_.max_frame_bytes) {
    host_.warn("zmq: publish on '" + printable(topic) + "' refused: " + std::to_string(size) +
               " bytes (verb + topic + payload) exceed max_frame_bytes " + std::to_string(cfg_.max_frame_bytes));
    return FG_ERR_INVALID_ARG;
  }
  // The frames are built outside the lock (the payload copy is the cost that grows with the
  // message); an FG_RETRY below throws them away, which only happens under back-pressure.
  Posted p;
  p.session = msg.session;
  p.topic = zmq::message_t(topic.data(), topic.size());
  p.payload = zmq::message_t(payload.data(), payload.size());
  p.delivery_id = delivery_id;
  p.bytes = size;
  {
    std::lock_guard lk(life_mu_);
    if (!running_) return FG_ERR_STATE;
    if (p.session != 0) {
      auto it = sessions_.find(p.session);
      if (it == sessions_.end()) return FG_ERR_STATE;  // closed, or closing
      SessionState& s = *it->second;
      const size_t limit = cfg_.session_buffer_bytes;
      if (s.bytes.load() >= limit) {
        // Ask for a wake-up, then look again: the I/O thread sends, then reads the flag.
        s.wants_wakeup.store(true);
        if (s.bytes.load() >= limit) return FG_RETRY;
      }
      s.bytes.fetch_add(size);
    } else {
      if (inbox_bytes_ > 0 && inbox_bytes_ + size > cfg_.max_outbound_bytes) return FG_RETRY;
      inbox_bytes_ += size;
    }
    inbox_.push_back(std::move(p));
    // Under the lock: stop() closes the eventfd only after running_ went false under it.
    if (!woken_) wake();
    woken_ = true;
  }
  return FG_OK;
}

fg_status ZmqPlugin::closeSession(uint64_t session, const char* reason) {
  {
    std::lock_guard lk(life_mu_);
    if (!running_) return FG_ERR_STATE;
    // From now on publishes to it answer FG_ERR_STATE; what was published before is handled
    // first (it is ahead in the inbox), then failed by the close.
    if (sessions_.erase(session) == 0) return FG_ERR_STATE;
    Posted p;
    p.close = true;
    p.session = session;
    p.reason = reason ? reason : "";
    inbox_.push_back(std::move(p));
    if (!woken_) wake();
    woken_ = true;
  }
  return FG_OK;
}

// ---- outbound (io thread) -----------------------------------------------------------------

void ZmqPlugin::drainInbox() {
  {
    std::lock_guard lk(life_mu_);
    if (inbox_.empty()) {
      woken_ = false;
      return;
    }
    inbox_work_.swap(inbox_);
    inbox_bytes_ = 0;
    woken_ = false;
  }
  for (auto& p : inbox_work_) deliver(p);
  inbox_work_.clear();
  if (inbox_work_.capacity() > 65536) std::vector<Posted>().swap(inbox_work_);
}

void ZmqPlugin::deliver(Posted& p) {
  if (p.close) {
    auto it = peers_.find(p.session);
    if (it == peers_.end()) return;
    const tcpframe::CloseReason r = tcpframe::splitCloseReason(p.reason);
    closePeer(*it->second, r.error, r.detail.empty() ? std::string("closed by the gateway") : std::string(r.detail),
              true, true);
    return;
  }
  if (p.session != 0) {
    auto it = peers_.find(p.session);
    if (it == peers_.end()) {  // closed after publish() looked (its SessionState went with it)
      if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_FAILED);
      return;
    }
    Out o{kMsg, std::move(p.topic), std::move(p.payload), p.delivery_id, nullptr, p.bytes, true};
    pushOut(*it->second, std::move(o));
    return;
  }
  // A broadcast: every peer whose filters match, once.
  const std::string_view topic(static_cast<const char*>(p.topic.data()), p.topic.size());
  targets_.clear();
  for (auto& [s, peer] : peers_) {
    for (const auto& f : peer->filters)
      if (topicMatches(f, topic)) {
        targets_.push_back(peer.get());
        break;
      }
  }
  if (targets_.empty()) {
    if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_NO_RECEIVER);
    return;
  }
  std::shared_ptr<Tracker> tracker;
  if (p.delivery_id && targets_.size() > 1)
    tracker = std::make_shared<Tracker>(Tracker{p.delivery_id, targets_.size(), 0});
  // Broadcasts cannot wait per session: buffered past session_buffer_bytes up to
  // max_outbound_bytes, beyond which the peer is closed as a slow consumer. Closing one target
  // never touches the others, so the raw pointers hold; closePeer only erases that one.
  std::vector<Peer*> targets;
  targets.swap(targets_);
  for (size_t i = 0; i < targets.size(); ++i) {
    Peer& peer = *targets[i];
    Out o;
    o.verb = kMsg;
    if (i + 1 < targets.size()) {
      o.topic.copy(p.topic);
      o.payload.copy(p.payload);
    } else {
      o.topic = std::move(p.topic);
      o.payload = std::move(p.payload);
    }
    o.tracker = tracker;
    o.delivery_id = tracker ? 0 : p.delivery_id;
    o.bytes = p.bytes;
    if (peer.out_bytes > 0 && peer.out_bytes + o.bytes > cfg_.max_outbound_bytes) {
      settle(o, false);
      closePeer(peer, "slow consumer",
                "the outbound buffer exceeded max_outbound_bytes (" + std::to_string(cfg_.max_outbound_bytes) +
                    ") with broadcasts",
                true, true);
      continue;
    }
    pushOut(peer, std::move(o));
  }
  targets.clear();
  targets_.swap(targets);
}

void ZmqPlugin::pushOut(Peer& p, Out o) {
  p.out_bytes += o.bytes;
  if (!o.session_counted) {
    p.state->bytes.fetch_add(o.bytes);
    o.session_counted = true;
  }
  p.outq.push_back(std::move(o));
  if (!p.active) {
    p.active = true;
    active_.push_back(p.session);
  }
}

SendResult ZmqPlugin::sendFrames(const std::string& id, Verb verb, zmq_msg_t* topic, zmq_msg_t* payload) {
  void* sock = router_->handle();
  zmq_msg_t m;
  zmq_msg_init_size(&m, id.size());
  std::memcpy(zmq_msg_data(&m), id.data(), id.size());
  if (zmq_msg_send(&m, sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
    const int e = zmq_errno();
    zmq_msg_close(&m);
    return e == EAGAIN ? SendResult::Full : SendResult::Gone;
  }
  // The routing id went: the pipe had room for the whole message (libzmq checks the high-water
  // mark per message), so the other three parts cannot be refused for room.
  const std::string_view v = kVerbText[verb];
  zmq_msg_init_size(&m, v.size());
  std::memcpy(zmq_msg_data(&m), v.data(), v.size());
  bool ok = zmq_msg_send(&m, sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0;
  if (!ok) zmq_msg_close(&m);
  ok = ok && zmq_msg_send(topic, sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0;
  ok = ok && zmq_msg_send(payload, sock, ZMQ_DONTWAIT) >= 0;
  return ok ? SendResult::Sent : SendResult::Gone;
}

void ZmqPlugin::sendError(const std::string& id, std::string_view error, std::string_view detail) {
  std::string json = tcpframe::errorJson(error, detail);
  if (trySendError(id, json)) return;
  // The peer's pipe is full (a slow consumer, typically): the ERR waits (bounded) for room, so
  // the client still learns why the gateway dropped it once it reads again.
  if (pending_errs_.size() >= kMaxPendingErrs) pending_errs_.erase(pending_errs_.begin());
  pending_errs_[id] = PendingErr{std::move(json), Clock::now() + kPendingErrTtl};
}

// True when the ERR went (or cannot go: the peer is gone); false when its pipe is full.
bool ZmqPlugin::trySendError(const std::string& id, const std::string& json) {
  zmq::message_t topic;
  zmq::message_t payload(json.data(), json.size());
  return sendFrames(id, kErr, topic.handle(), payload.handle()) != SendResult::Full;
}

void ZmqPlugin::retryPendingErrors() {
  const auto now = Clock::now();
  for (auto it = pending_errs_.begin(); it != pending_errs_.end();) {
    if (now >= it->second.deadline || trySendError(it->first, it->second.json))
      it = pending_errs_.erase(it);
    else
      ++it;
  }
}

// Sends what the active peers hold, in order, until their pipes are full. Blocked peers are
// tried again only when their retry time came (retry_blocked).
void ZmqPlugin::flush(bool retry_blocked) {
  if (active_.empty()) return;
  bool progress_on_blocked = false, still_blocked = false;
  std::vector<uint64_t> work;
  work.swap(active_);
  for (uint64_t s : work) {
    auto it = peers_.find(s);
    if (it == peers_.end()) continue;  // closed
    Peer& p = *it->second;
    p.active = false;
    if (p.blocked && !retry_blocked) {
      p.active = true;
      active_.push_back(s);
      still_blocked = true;
      continue;
    }
    const bool was_blocked = p.blocked;
    if (!flushPeer(p)) continue;  // closed: gone
    if (was_blocked && !p.blocked) progress_on_blocked = true;
    if (!p.outq.empty()) {
      p.active = true;
      active_.push_back(s);
      still_blocked = still_blocked || p.blocked;
    }
  }
  if (retry_blocked || still_blocked) {
    if (progress_on_blocked)
      blocked_delay_ms_ = 0;
    else if (retry_blocked)
      blocked_delay_ms_ = blocked_delay_ms_ == 0 ? 1 : std::min(kRetryMaxMs, blocked_delay_ms_ * 2);
    if (retry_blocked || blocked_delay_ms_ == 0)
      blocked_retry_at_ = Clock::now() + Ms(std::max<uint32_t>(1, blocked_delay_ms_));
  }
}

// Returns false when the peer was closed (gone).
bool ZmqPlugin::flushPeer(Peer& p) {
  p.blocked = false;
  while (!p.outq.empty()) {
    Out& o = p.outq.front();
    const SendResult r = sendFrames(p.id, o.verb, o.topic.handle(), o.payload.handle());
    if (r == SendResult::Full) {
      p.blocked = true;
      break;
    }
    if (r == SendResult::Gone) {
      ++gone_peers_;
      closePeer(p, "",
                "the peer is gone (a send to it failed: EHOSTUNREACH); " + std::to_string(gone_peers_) + " so far",
                false, true);
      return false;
    }
    p.out_bytes -= o.bytes;
    p.state->bytes.fetch_sub(o.bytes);
    settle(o, true);
    p.outq.pop_front();
  }
  SessionState& s = *p.state;
  if (s.wants_wakeup.load() && s.bytes.load() < cfg_.session_buffer_bytes / 2 && s.wants_wakeup.exchange(false))
    host_.sessionWritable(p.session);
  return true;
}

void ZmqPlugin::settle(Out& o, bool sent) {
  if (o.tracker) {
    auto t = std::move(o.tracker);
    fg_delivery st;
    if (t->settle(sent, FG_DELIVERY_FAILED, st)) host_.onDelivery(t->delivery_id, st);
  } else if (o.delivery_id) {
    host_.onDelivery(o.delivery_id, sent ? FG_DELIVERY_OK : FG_DELIVERY_FAILED);
    o.delivery_id = 0;
  }
}

// ---- sessions (io thread) -----------------------------------------------------------------

Peer* ZmqPlugin::openPeer(const std::string& id) {
  // libzmq's own routing ids start with a zero byte, and a client may not set one that does:
  // they are unique per connection. A client-chosen id could be taken by another connection as
  // soon as this one drops (libzmq reports no disconnect by id), and inherit its session and
  // bindings until the heartbeat expires, so it is refused.
  if (id.empty() || id[0] != '\0') {
    ++refused_peers_;
    warnLimited("peer " + hexId(id) + " refused: it set its own routing id; " + std::to_string(refused_peers_) +
                " refused so far");
    sendError(id, "routing id refused",
              "leave ZMQ_ROUTING_ID unset: a client-chosen routing id could be taken over by another connection");
    return nullptr;
  }
  if (peers_.size() >= cfg_.max_peers) {
    ++refused_peers_;
    warnLimited("peer " + hexId(id) + " refused: max_peers (" + std::to_string(cfg_.max_peers) + ") reached; " +
                std::to_string(refused_peers_) + " refused so far");
    sendError(id, "too many peers", "max_peers (" + std::to_string(cfg_.max_peers) + ") reached on this endpoint");
    return nullptr;
  }
  auto peer = std::make_unique<Peer>();
  peer->session = next_session_++;
  peer->id = id;
  Peer* p = peer.get();
  {
    std::lock_guard lk(life_mu_);
    sessions_[p->session] = p->state;
  }
  peers_[p->session] = std::move(peer);
  by_id_[id] = p;
  host_.debug("zmq: " + p->name() + " opened");
  host_.onSession(p->session, FG_SESSION_OPENED);
  return p;
}

// Ends a session: an ERR first when asked (best effort: after what libzmq already holds for it),
// what its outbox still held is failed, the host learns FG_SESSION_CLOSED (bindings go).
void ZmqPlugin::closePeer(Peer& p, std::string_view error, const std::string& detail, bool send_err, bool warn) {
  const uint64_t session = p.session;
  {
    std::lock_guard lk(life_mu_);
    sessions_.erase(session);
  }
  size_t failed = 0;
  for (auto& o : p.outq) {
    failed += o.verb == kMsg;
    p.state->bytes.fetch_sub(o.bytes);  // every outbox item was counted by pushOut
    settle(o, false);
  }
  p.outq.clear();
  if (send_err) sendError(p.id, error, detail);
  const std::string line = p.name() + " closed: " + (error.empty() ? "" : std::string(error) + ": ") + detail +
                           (failed ? " (" + std::to_string(failed) + " queued message(s) not delivered)" : "");
  if (warn)
    warnLimited(line);
  else
    host_.debug("zmq: " + line);
  if (held_ && held_->id == p.id) {
    warnLimited(p.name() + ": a publish held by back-pressure was discarded with the session");
    held_.reset();
  }
  by_id_.erase(p.id);
  peers_.erase(session);  // p is gone from here on
  host_.onSession(session, FG_SESSION_CLOSED);
}

void ZmqPlugin::hostile(const std::string& who, std::string_view error, const std::string& detail) {
  ++hostile_total_;
  warnLimited(who + ": " + std::string(error) + ": " + detail + " (" + std::to_string(hostile_total_) +
              " bad messages on this endpoint so far)");
}

void ZmqPlugin::checkHeartbeats() {
  if (held_) {
    // Reading is paused: the peers' messages wait in libzmq, so silence proves nothing now.
    const auto now = Clock::now();
    for (auto& [s, p] : peers_) p->last_rx = now;
    return;
  }
  const auto limit = 3 * Ms(cfg_.heartbeat_ms);
  const auto now = Clock::now();
  std::vector<Peer*> expired;
  for (auto& [s, p] : peers_)
    if (now - p->last_rx > limit) expired.push_back(p.get());
  for (Peer* p : expired) {
    ++expired_peers_;
    closePeer(*p, "heartbeat timeout",
              "nothing received for 3 x heartbeat_ms (" + std::to_string(3ull * cfg_.heartbeat_ms) + " ms); " +
                  std::to_string(expired_peers_) + " expired so far",
              true, false);
  }
  if (!expired.empty())
    host_.info("zmq: " + std::to_string(expired.size()) + " silent peer(s) expired (heartbeat limit " +
               std::to_string(3ull * cfg_.heartbeat_ms) + " ms)");
}

// ---- inbound (io thread) ------------------------------------------------------------------

void ZmqPlugin::readSome() {
  void* sock = router_->handle();
  for (size_t i = 0; i < kReadBatch && !held_ && !stopping_; ++i) {
    if (zmq_msg_recv(in_id_.handle(), sock, ZMQ_DONTWAIT) < 0) return;  // EAGAIN: nothing more now
    size_t nparts = 0, total = 0;
    bool more = in_id_.more();
    while (more) {
      zmq::message_t& m = nparts < 3 ? in_parts_[nparts] : in_extra_;
      if (zmq_msg_recv(m.handle(), sock, 0) < 0) break;  // the rest of a message is always there
      ++nparts;
      total += m.size();
      more = m.more();
    }
    process(nparts, total);
  }
}

void ZmqPlugin::process(size_t nparts, size_t total) {
  id_scratch_.assign(static_cast<const char*>(in_id_.data()), in_id_.size());
  auto it = by_id_.find(id_scratch_);
  Peer* p = it == by_id_.end() ? nullptr : it->second;
  // Framing errors: an ERR, then the session ends (as a TCP connection is closed). A peer
  // without a session gets only the ERR (nothing is kept for it).
  auto framing = [&](std::string_view error, const std::string& detail) {
    hostile(p ? p->name() : "peer " + hexId(id_scratch_), error, detail);
    if (p)
      closePeer(*p, error, detail, true, false);
    else
      sendError(id_scratch_, error, detail);
  };
  if (nparts != 3) {
    framing("wrong frame count",
            "got " + std::to_string(nparts) + " frame(s) after the routing id, expected 3: [verb, topic, payload]");
    return;
  }
  if (total > cfg_.max_frame_bytes) {
    framing("frame too large", "verb + topic + payload are " + std::to_string(total) + " bytes, max_frame_bytes is " +
                                   std::to_string(cfg_.max_frame_bytes));
    return;
  }
  const std::string_view verb(static_cast<const char*>(in_parts_[0].data()), in_parts_[0].size());
  enum { kPub, kSub, kUnsub, kPing, kBad } v = kBad;
  if (verb == "PUB")
    v = kPub;
  else if (verb == "SUB")
    v = kSub;
  else if (verb == "UNSUB")
    v = kUnsub;
  else if (verb == "PING")
    v = kPing;
  if (v == kBad) {
    framing("unknown verb", "'" + printable(verb, 32) + "' is not PUB, SUB, UNSUB or PING");
    return;
  }
  if (!p) {
    p = openPeer(id_scratch_);
    if (!p) return;
  }
  p->last_rx = Clock::now();
  const std::string_view topic(static_cast<const char*>(in_parts_[1].data()), in_parts_[1].size());
  switch (v) {
    case kPub:
      handlePub(*p, in_parts_[1], in_parts_[2]);
      return;
    case kSub: {
      if (!isValidFilter(topic) || !isValidUtf8(topic)) {
        hostile(p->name(), "invalid filter", "'" + printable(topic) + "'");
        sendError(p->id, "invalid filter", "'" + printable(topic) + "' is not a valid filter");
        return;
      }
      if (p->filters.find(topic) != p->filters.end()) return;
      if (p->filters.size() >= cfg_.max_subscriptions) {
        const std::string d = "max_subscriptions (" + std::to_string(cfg_.max_subscriptions) + ") reached; '" +
                              printable(topic) + "' was not subscribed";
        hostile(p->name(), "too many subscriptions", d);
        sendError(p->id, "too many subscriptions", d);
        return;
      }
      std::string reason;
      if (host_.authorizeSubscribe(p->session, topic, &reason) != FG_OK) {
        host_.debug("zmq: " + p->name() + ": subscribe to '" + printable(topic) + "' refused: " + reason);
        sendError(p->id, "subscribe refused", reason.empty() ? "refused by the gateway" : reason);
        return;
      }
      p->filters.emplace(topic);
      return;
    }
    case kUnsub:
      if (auto f = p->filters.find(topic); f != p->filters.end()) p->filters.erase(f);
      return;
    case kPing: {
      // A control answer: never refused for room (a peer that pings reads; one that does not
      // is bounded by the host's close_session). Behind everything already queued for it.
      Out o;
      o.verb = kPong;
      o.topic = std::move(in_parts_[1]);
      o.payload = std::move(in_parts_[2]);
      o.bytes = 4 + o.topic.size() + o.payload.size();
      pushOut(*p, std::move(o));
      return;
    }
    default:
      return;
  }
}

// A PUB: topic checks, then the host. FG_RETRY keeps it (held) and stops reading.
bool ZmqPlugin::handlePub(Peer& p, zmq::message_t& topic_msg, zmq::message_t& payload_msg) {
  const std::string_view topic(static_cast<const char*>(topic_msg.data()), topic_msg.size());
  if (topic.empty() || hasWildcard(topic) || !isValidUtf8(topic)) {
    const std::string d = topic.empty()
                              ? std::string("the topic is empty")
                              : "'" + printable(topic) + "' is not a fin topic (empty, a wildcard or not UTF-8)";
    hostile(p.name(), "invalid topic", d);
    sendError(p.id, "invalid topic", d);
    return true;
  }
  const auto now_ms = std::chrono::duration_cast<Ms>(std::chrono::system_clock::now().time_since_epoch()).count();
  const fg_message m{str(topic),
                     fg_str{static_cast<const char*>(payload_msg.data()), payload_msg.size()},
                     nullptr,
                     0,
                     static_cast<int64_t>(now_ms),
                     p.session};
  const fg_status st = host_.onMessage(0, m);
  if (st == FG_RETRY) {
    held_.emplace(Held{p.id, std::move(topic_msg), std::move(payload_msg)});
    held_delay_ms_ = 1;
    held_retry_at_ = Clock::now() + Ms(held_delay_ms_);
    return false;
  }
  if (st != FG_OK)
    warnLimited(p.name() + ": the host refused a publish on '" + printable(topic) + "' (status " + std::to_string(st) +
                ")");
  return true;
}

bool ZmqPlugin::retryHeld() {
  auto it = by_id_.find(held_->id);
  if (it == by_id_.end()) {  // closePeer discards it; defensive
    held_.reset();
    return true;
  }
  Held h = std::move(*held_);
  held_.reset();
  const uint32_t prev = held_delay_ms_;
  if (handlePub(*it->second, h.topic, h.payload)) {
    held_delay_ms_ = 0;
    return true;
  }
  held_delay_ms_ = std::min(kRetryMaxMs, std::max<uint32_t>(1, prev * 2));  // held again
  held_retry_at_ = Clock::now() + Ms(held_delay_ms_);
  return false;
}

// ---- ZAP (CURVE client keys) and the socket monitor (io thread) -------------------------

void ZmqPlugin::handleZap() {
  for (int guard = 0; guard < 64; ++guard) {
    std::vector<zmq::message_t> req;
    zmq::message_t m;
    if (zmq_msg_recv(m.handle(), zap_->handle(), ZMQ_DONTWAIT) < 0) return;
    bool more = m.more();
    req.push_back(std::move(m));
    while (more && req.size() < 16) {
      zmq::message_t part;
      if (zmq_msg_recv(part.handle(), zap_->handle(), 0) < 0) break;
      more = part.more();
      req.push_back(std::move(part));
    }
    while (more) {  // an oversized request: read the rest, refuse it
      zmq::message_t part;
      if (zmq_msg_recv(part.handle(), zap_->handle(), 0) < 0) break;
      more = part.more();
    }
    // ZAP 1.0 request: version, request id, domain, address, routing id, mechanism, credentials...
    std::string request_id = req.size() > 1 ? req[1].to_string() : "";
    std::string code = "400", text = "client key not allowed", user;
    const std::string address = req.size() > 3 ? req[3].to_string() : "?";
    if (req.size() >= 7 && req[0].to_string_view() == "1.0" && req[5].to_string_view() == "CURVE" &&
        req[6].size() == 32) {
      const std::string key = req[6].to_string();
      if (cfg_.allowed.empty() || cfg_.allowed.count(key)) {
        code = "200";
        text = "OK";
        char z85[41] = {0};
        zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(key.data()), key.size());
        user = z85;
      } else {
        char z85[41] = {0};
        zmq_z85_encode(z85, reinterpret_cast<const uint8_t*>(key.data()), key.size());
        ++auth_refusals_;
        warnLimited("CURVE client key " + std::string(z85) + " from " + printable(address) + " is not allowed; " +
                    std::to_string(auth_refusals_) + " refused so far");
      }
    } else {
      ++auth_refusals_;
      text = "malformed ZAP request";
      warnLimited("malformed ZAP request refused; " + std::to_string(auth_refusals_) + " refused so far");
    }
    const std::string reply[] = {"1.0", request_id, code, text, user, ""};
    for (size_t i = 0; i < 6; ++i) {
      zmq::message_t part(reply[i].data(), reply[i].size());
      zmq_msg_send(part.handle(), zap_->handle(), i < 5 ? ZMQ_SNDMORE : 0);
    }
  }
}

void ZmqPlugin::handleMonitor() {
  for (int guard = 0; guard < 256; ++guard) {
    zmq::message_t head, addr;
    if (zmq_msg_recv(head.handle(), monitor_->handle(), ZMQ_DONTWAIT) < 0) return;
    if (head.more()) zmq_msg_recv(addr.handle(), monitor_->handle(), 0);
    if (head.size() < 6) continue;
    uint16_t event;
    std::memcpy(&event, head.data(), sizeof event);
    const std::string where = printable(addr.to_string_view());
    switch (event) {
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        ++handshake_failures_;
        warnLimited("a connection on " + where + " failed the ZMTP handshake (not a ZeroMQ peer?); " +
                    std::to_string(handshake_failures_) + " so far");
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        ++handshake_failures_;
        host_.debug("zmq: a CURVE handshake on " + where + " was refused");
        break;
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        if (!cfg_.bind && !connected_) {
          connected_ = true;
          const std::string detail = "connected to " + endpoint_text_ + " (ZeroMQ ROUTER)";
          host_.info("zmq: " + detail);
          host_.onState(ever_up_ ? FG_STATE_RECONNECTED : FG_STATE_UP, detail);
          ever_up_ = true;
        }
        break;
      case ZMQ_EVENT_DISCONNECTED:
        if (!cfg_.bind && connected_) {
          connected_ = false;
          // connect mode: the one connection carried every session
          std::vector<Peer*> all;
          for (auto& [s, p] : peers_) all.push_back(p.get());
          for (Peer* p : all) closePeer(*p, "", "the connection to " + endpoint_text_ + " was lost", false, true);
          const std::string what = "connection to " + endpoint_text_ + " lost; libzmq reconnects";
          host_.warn("zmq: " + what);
          host_.onState(FG_STATE_DOWN, what);
        }
        break;
      default:
        break;
    }
  }
}

}  // namespace
}  // namespace fingate

FG_DEFINE_PLUGIN(fingate::ZmqPlugin, "zmq", "0.1.0", FG_CAP_SESSIONS | FG_CAP_DELIVERY, FG_ZMQ_KEYS)
