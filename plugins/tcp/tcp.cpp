// tcp: fingate's framed TCP transport (DESIGN §5; the client-facing contract is in
// docs/transports.md, section "TCP").
//
// Frames, big-endian:  u32 length-of-rest | u8 kind | u16 topic-length | topic | payload
// Kinds: 1 publish, 2 subscribe (topic = filter), 3 unsubscribe, 4 ping, 5 pong, 6 error.
//
// listen mode  a server. Every client connection is a session (a non-zero id, never reused);
//              client publishes go to the host with that session id, subscriptions are local
//              to the connection, host publishes go to one session or to every matching
//              subscriber. Bad frames get an error frame, then that one connection is closed.
// connect mode a client of a server speaking the same frames (typically another fingate):
//              reconnects with jittered exponential backoff and re-sends every subscription.
//
// Threading: each instance owns one I/O thread running an asio::io_context. Every socket,
// timer and connection object is touched only from that thread (after start() and before
// stop() has joined it). publish/subscribe/unsubscribe copy what they need and post into it:
// they never block on the network.
#ifndef ASIO_STANDALONE
#define ASIO_STANDALONE
#endif
#include <asio.hpp>
#include <asio/ssl.hpp>
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace fingate {
namespace {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;
using sdk::ConfigError;
using sdk::str;
using sdk::view;

// ---- wire format -------------------------------------------------------------------------

enum Kind : uint8_t { kPublish = 1, kSubscribe = 2, kUnsubscribe = 3, kPing = 4, kPong = 5, kError = 6 };

constexpr size_t kHeaderBytes = 7;               // u32 length-of-rest + u8 kind + u16 topic length
constexpr size_t kReadChunk = 64 * 1024;         // bytes asked for per read
constexpr size_t kMaxBatchFrames = 64;           // frames per gathered write
constexpr size_t kMaxBatchBytes = 256 * 1024;    // bytes per gathered write
constexpr uint32_t kLingerMs = 1000;             // after an error frame: wait this long for the peer's EOF
constexpr uint32_t kDrainMs = 2000;              // a closing connection gets this long to flush
constexpr uint32_t kConnectTimeoutMs = 10000;    // connect mode: one TCP connect attempt
constexpr uint32_t kBackoffMinMs = 100;          // connect mode: first reconnect delay
constexpr uint32_t kAcceptRetryMs = 100;         // listen mode: after a failed accept (EMFILE ...)
constexpr size_t kMaxDetailTopic = 200;          // topic bytes quoted in error details / logs

uint32_t be32(const unsigned char* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}
uint16_t be16(const unsigned char* p) { return uint16_t(uint16_t(p[0]) << 8 | uint16_t(p[1])); }

// A whole frame. The caller checked topic.size() <= 0xffff and the total against the limits.
std::string encodeFrame(uint8_t kind, std::string_view topic, std::string_view payload) {
  const uint32_t rest = static_cast<uint32_t>(3 + topic.size() + payload.size());
  std::string out(4 + size_t(rest), '\0');
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  p[0] = static_cast<unsigned char>(rest >> 24);
  p[1] = static_cast<unsigned char>(rest >> 16);
  p[2] = static_cast<unsigned char>(rest >> 8);
  p[3] = static_cast<unsigned char>(rest);
  p[4] = kind;
  p[5] = static_cast<unsigned char>(topic.size() >> 8);
  p[6] = static_cast<unsigned char>(topic.size());
  if (!topic.empty()) std::memcpy(p + kHeaderBytes, topic.data(), topic.size());
  if (!payload.empty()) std::memcpy(p + kHeaderBytes + topic.size(), payload.data(), payload.size());
  return out;
}

std::string_view frameTopic(const std::string& frame) {
  const auto* p = reinterpret_cast<const unsigned char*>(frame.data());
  return std::string_view(frame.data() + kHeaderBytes, be16(p + 5));
}

// Length of the valid UTF-8 sequence starting at s[i] (a byte >= 0x80), 0 when invalid.
size_t utf8SequenceLength(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1Fu;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0Fu;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07u;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0u) != 0x80u) return 0;
    cp = cp << 6 | (d & 0x3Fu);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

// A JSON string literal: quotes, backslashes and control characters escaped; bytes that are
// not valid UTF-8 become U+FFFD, so the result is always valid JSON.
void appendJsonString(std::string& out, std::string_view s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = utf8SequenceLength(s, i);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

// The payload of an error frame: {"error":"...","detail":"..."}.
std::string errorJson(std::string_view error, std::string_view detail) {
  std::string out = "{\"error\":";
  appendJsonString(out, error);
  out += ",\"detail\":";
  appendJsonString(out, detail);
  out += '}';
  return out;
}

// A topic (or any client-supplied text) made safe for a log line: truncated, control bytes as '?'.
std::string printable(std::string_view s, size_t max = kMaxDetailTopic) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  }
  if (s.size() > max) out += "...";
  return out;
}

// ---- configuration -----------------------------------------------------------------------

struct HostPort {
  std::string host;
  uint16_t port = 0;
  std::string text() const {
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
};

HostPort parseHostPort(const std::string& key, const std::string& v, bool allow_port_zero) {
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

std::string endpointText(const tcp::endpoint& ep) {
  const std::string a = ep.address().to_string();
  return (ep.address().is_v6() ? "[" + a + "]" : a) + ":" + std::to_string(ep.port());
}

struct Settings {
  bool listen = true;
  HostPort address;
  uint32_t max_frame_bytes = 1048576;
  size_t max_outbound_bytes = 8u * 1024 * 1024;
  uint32_t reconnect_max_ms = 5000;
  uint32_t frame_timeout_ms = 30000;
  uint32_t keepalive_ms = 10000;
  bool tls = false;
  std::string cert_file, key_file, ca_file;
  bool tls_verify = true;
};

const char* const kKnownKeys[] = {"listen",          "connect",          "max_frame_bytes",  "max_outbound_bytes",
                                  "reconnect_max_ms", "frame_timeout_ms", "keepalive_ms",     "tls.enabled",
                                  "tls.cert_file",   "tls.key_file",     "tls.ca_file",      "tls.verify",
                                  "plugin",          "role"};

Settings parseSettings(const sdk::Config& cfg) {
  for (const auto& [key, value] : cfg.all()) {
    bool known = false;
    for (const char* k : kKnownKeys) known = known || key == k;
    if (!known) throw ConfigError(key, "unknown key for the tcp plugin");
  }
  Settings s;
  const bool has_listen = cfg.has("listen"), has_connect = cfg.has("connect");
  if (has_listen && has_connect) throw ConfigError("connect", "give either listen or connect, not both");
  if (!has_listen && !has_connect) throw ConfigError("listen", "one of listen (host:port) or connect (host:port) is required");
  s.listen = has_listen;
  s.address = has_listen ? parseHostPort("listen", cfg.get("listen"), true) : parseHostPort("connect", cfg.get("connect"), false);
  s.max_frame_bytes = static_cast<uint32_t>(cfg.getInt("max_frame_bytes", 1048576, 16, 1LL << 30));
  s.max_outbound_bytes = static_cast<size_t>(cfg.getInt("max_outbound_bytes", 8LL * 1024 * 1024, 1024, 1LL << 40));
  s.reconnect_max_ms = static_cast<uint32_t>(cfg.getInt("reconnect_max_ms", 5000, kBackoffMinMs, 3600000));
  s.frame_timeout_ms = static_cast<uint32_t>(cfg.getInt("frame_timeout_ms", 30000, 10, 3600000));
  s.keepalive_ms = static_cast<uint32_t>(cfg.getInt("keepalive_ms", 10000, 100, 3600000));
  s.tls = cfg.getBool("tls.enabled", false);
  s.cert_file = cfg.get("tls.cert_file");
  s.key_file = cfg.get("tls.key_file");
  s.ca_file = cfg.get("tls.ca_file");
  s.tls_verify = cfg.getBool("tls.verify", true);
  if (s.tls && s.listen) {
    if (s.cert_file.empty()) throw ConfigError("tls.cert_file", "is required when tls.enabled is true in listen mode");
    if (s.key_file.empty()) throw ConfigError("tls.key_file", "is required when tls.enabled is true in listen mode");
  }
  if (s.tls && s.cert_file.empty() != s.key_file.empty())
    throw ConfigError(s.cert_file.empty() ? "tls.cert_file" : "tls.key_file",
                      "a client certificate needs both tls.cert_file and tls.key_file");
  return s;
}

// ---- connection pieces -------------------------------------------------------------------

// Outcome of a delivery to one or more connections (io thread only).
struct Tracker {
  uint64_t delivery_id = 0;
  size_t remaining = 0;  // targets that have not written or failed yet
  size_t written = 0;    // targets whose socket took the bytes
};

struct OutFrame {
  std::shared_ptr<const std::string> bytes;
  std::shared_ptr<Tracker> tracker;  // null: no delivery report wanted (or a control frame)
  uint8_t kind = kPublish;
  bool counted = false;  // connect mode: counted in the plugin's outbound byte total
};

// A plain or TLS stream over one TCP socket.
class Stream {
 public:
  explicit Stream(tcp::socket s) : plain_(std::move(s)) {}
  Stream(tcp::socket s, asio::ssl::context& ctx) : tls_(std::in_place, std::move(s), ctx) {}
  tcp::socket& socket() { return tls_ ? tls_->next_layer() : *plain_; }
  asio::ssl::stream<tcp::socket>* tls() { return tls_ ? &*tls_ : nullptr; }
  template <class Buffers, class Handler>
  void readSome(const Buffers& b, Handler&& h) {
    if (tls_) tls_->async_read_some(b, std::forward<Handler>(h));
    else plain_->async_read_some(b, std::forward<Handler>(h));
  }
  template <class Buffers, class Handler>
  void write(const Buffers& b, Handler&& h) {
    if (tls_) asio::async_write(*tls_, b, std::forward<Handler>(h));
    else asio::async_write(*plain_, b, std::forward<Handler>(h));
  }

 private:
  std::optional<tcp::socket> plain_;
  std::optional<asio::ssl::stream<tcp::socket>> tls_;
};

enum class Phase { Handshake, Open, Draining, Lingering, Closed };
enum class FrameResult { Done, Retry };

class TcpPlugin;

// One TCP connection: a client session (listen mode) or the link to the server (connect
// mode). Reads and parses frames strictly in order, hands complete frames to the plugin,
// and writes its outbound queue with gathered writes. io thread only.
class Conn : public std::enable_shared_from_this<Conn> {
 public:
  Conn(TcpPlugin& owner, Stream stream, uint64_t session, bool server, std::string peer)
      : stream_(std::move(stream)),
        session_(session),
        server_(server),
        peer_(std::move(peer)),
        owner_(owner),
        retry_timer_(stream_.socket().get_executor()),
        frame_timer_(stream_.socket().get_executor()),
        close_timer_(stream_.socket().get_executor()) {}

  void start();
  void push(OutFrame f);
  void sendError(std::string_view error, std::string_view detail);
  std::deque<OutFrame> takeUnsent();
  void protocolError(std::string_view error, const std::string& detail);
  void closeAfterFlush(const std::string& reason, bool linger);
  void close(const std::string& reason);
  bool matches(std::string_view topic) const {
    for (const auto& f : filters_)
      if (topicMatches(f, topic)) return true;
    return false;
  }
  std::string name() const {
    return server_ ? "session " + std::to_string(session_) + " (" + peer_ + ")" : "connection to " + peer_;
  }

  Stream stream_;
  const uint64_t session_;
  const bool server_;
  const std::string peer_;
  Phase phase_ = Phase::Handshake;
  std::set<std::string> filters_;  // listen mode: this connection's subscriptions
  size_t out_bytes_ = 0;           // bytes queued in outq_
  bool paused_ = false;            // a received publish is held by back-pressure
  Clock::time_point last_rx_ = Clock::now();

 private:
  void ready();
  void startRead();
  void onRead(const asio::error_code& ec, size_t n);
  void processFrames();
  void pause();
  void armFrameTimer();
  void disarmFrameTimer();
  void armCloseTimer(uint32_t ms, std::string reason);
  void startWrite();
  void onWritten(const asio::error_code& ec);
  void finishDrain();

  TcpPlugin& owner_;
  // read side: bytes [rbeg_, rend_) of rbuf_ are received but not yet consumed
  std::vector<char> rbuf_;
  size_t rbeg_ = 0, rend_ = 0;
  bool reading_ = false;
  asio::steady_timer retry_timer_, frame_timer_, close_timer_;
  uint64_t retry_gen_ = 0, frame_gen_ = 0, close_gen_ = 0;
  uint32_t retry_delay_ms_ = 0;
  bool frame_timer_armed_ = false;
  // write side
  std::deque<OutFrame> outq_;
  std::vector<std::shared_ptr<const std::string>> in_flight_;  // kept alive during a write
  bool writing_ = false;
  // closing
  std::string close_reason_;
  bool linger_ = false;
};

// Logs at most kBurst lines per window, then counts what it suppressed.
class RateLimitedLog {
 public:
  void log(const sdk::Host& host, fg_log_level level, const std::string& msg) {
    std::string summary;
    bool emit = false;
    {
      std::lock_guard lk(mu_);
      const auto now = Clock::now();
      if (now - window_start_ > std::chrono::seconds(10)) {
        if (suppressed_) summary = std::to_string(suppressed_) + " similar log lines suppressed";
        window_start_ = now;
        count_ = 0;
        suppressed_ = 0;
      }
      if (count_ < kBurst) {
        ++count_;
        emit = true;
      } else {
        ++suppressed_;
      }
    }
    if (!summary.empty()) host.log(FG_LOG_WARN, "tcp: " + summary);
    if (emit) host.log(level, msg);
  }

 private:
  static constexpr int kBurst = 20;
  std::mutex mu_;
  Clock::time_point window_start_ = Clock::now();
  int count_ = 0;
  uint64_t suppressed_ = 0;
};

// ---- the plugin --------------------------------------------------------------------------

class TcpPlugin final : public sdk::Plugin {
 public:
  TcpPlugin(sdk::Host host, const sdk::Config& cfg) : Plugin(host), cfg_(parseSettings(cfg)) {}
  ~TcpPlugin() override { stop(2000); }

  fg_status start() override;
  fg_status stop(uint32_t timeout_ms) override;
  fg_status publish(const fg_message& msg, uint64_t delivery_id) override;
  fg_status subscribe(std::string_view filter, uint64_t sub_id) override;
  fg_status unsubscribe(uint64_t sub_id) override;

  // Called by Conn (io thread).
  const Settings& settings() const { return cfg_; }
  bool kindAllowed(bool server, uint8_t kind) const {
    return server ? (kind >= kPublish && kind <= kPing) : (kind == kPublish || kind == kPing || kind == kPong || kind == kError);
  }
  FrameResult onFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload);
  void onReady(Conn& c);
  void onWritten(OutFrame& f);
  void onClosed(Conn& c, bool was_ready, const std::string& reason, std::deque<OutFrame> unsent);
  void warnLimited(const std::string& msg) { limited_log_.log(host_, FG_LOG_WARN, "tcp: " + msg); }

 private:
  struct Sub {
    uint64_t id;
    std::string filter;
  };

  bool setupTls();
  fg_status open(std::string& up_detail);
  void run();
  // listen mode
  void accept();
  FrameResult serverFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload);
  void serverDeliver(const std::shared_ptr<const std::string>& frame, uint64_t session, uint64_t delivery_id);
  void pushLimited(Conn& c, OutFrame f);
  // connect mode
  void clientConnect();
  void clientFailed(const std::string& why);
  void scheduleReconnect();
  void clientReady(Conn& c);
  FrameResult clientFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload);
  void clientSend(const std::shared_ptr<const std::string>& frame, uint64_t delivery_id);
  void clientControl(uint8_t kind, const std::string& filter);
  void armKeepalive();
  void failPending();
  // both
  void settle(const std::shared_ptr<Tracker>& t, bool written);
  void beginStop();
  void hardStop();
  void checkDrained();

  const Settings cfg_;
  RateLimitedLog limited_log_;

  // Lifecycle, guarded by life_mu_ (host threads: publish/subscribe vs stop).
  std::mutex life_mu_;
  bool started_ = false;
  bool running_ = false;

  std::unique_ptr<asio::io_context> io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::unique_ptr<asio::ssl::context> ssl_;
  std::thread thread_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool drained_ = false;  // guarded by stop_mu_
  bool io_done_ = false;  // guarded by stop_mu_

  // io thread state (and stop() after the join)
  bool stopping_ = false;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::optional<asio::steady_timer> accept_timer_;
  std::map<uint64_t, std::shared_ptr<Conn>> conns_;
  uint64_t next_session_ = 1;
  std::atomic<size_t> posted_bytes_{0};  // listen mode: published, not yet queued on a connection

  std::shared_ptr<Conn> client_;
  std::deque<OutFrame> pending_;  // connect mode: publishes waiting for a connection
  std::atomic<size_t> client_bytes_{0};  // connect mode: published and not yet written or failed
  std::optional<tcp::resolver> resolver_;
  std::optional<asio::steady_timer> reconnect_timer_, keepalive_timer_, connect_timer_;
  std::shared_ptr<tcp::socket> connecting_;
  uint64_t reconnect_gen_ = 0, keepalive_gen_ = 0, connect_gen_ = 0;
  uint32_t attempt_ = 0;
  bool ever_up_ = false;
  bool down_reported_ = false;
  bool restored_ = false;
  uint64_t restore_seq_ = 0;
  std::string restore_token_;
  std::mt19937 rng_{std::random_device{}()};

  // connect mode subscriptions (host threads write, io thread reads)
  std::mutex subs_mu_;
  std::vector<Sub> subs_;
};

// ---- Conn --------------------------------------------------------------------------------

void Conn::start() {
  auto* tls = stream_.tls();
  if (!tls) {
    ready();
    return;
  }
  phase_ = Phase::Handshake;
  armCloseTimer(owner_.settings().frame_timeout_ms, "TLS handshake timed out");
  tls->async_handshake(server_ ? asio::ssl::stream_base::server : asio::ssl::stream_base::client,
                       [self = shared_from_this()](const asio::error_code& ec) {
                         if (self->phase_ != Phase::Handshake) return;
                         if (ec) {
                           self->close("TLS handshake failed: " + ec.message());
                           return;
                         }
                         ++self->close_gen_;
                         self->close_timer_.cancel();
                         self->ready();
                       });
}

void Conn::ready() {
  phase_ = Phase::Open;
  last_rx_ = Clock::now();
  owner_.onReady(*this);
  if (phase_ != Phase::Open) return;
  startRead();
  startWrite();
}

void Conn::startRead() {
  if (reading_ || phase_ == Phase::Closed || phase_ == Phase::Handshake) return;
  if (phase_ == Phase::Open && paused_) return;
  if (phase_ != Phase::Open) rbeg_ = rend_ = 0;  // closing: input is discarded
  if (rbeg_ == rend_) {
    rbeg_ = rend_ = 0;
    if (rbuf_.size() > 4 * kReadChunk) std::vector<char>(kReadChunk).swap(rbuf_);  // after a big frame
  } else if (rbeg_ > 0 && rbuf_.size() - rend_ < kReadChunk) {
    std::memmove(rbuf_.data(), rbuf_.data() + rbeg_, rend_ - rbeg_);
    rend_ -= rbeg_;
    rbeg_ = 0;
  }
  if (rbuf_.size() - rend_ < kReadChunk) rbuf_.resize(rend_ + kReadChunk);
  reading_ = true;
  stream_.readSome(asio::buffer(rbuf_.data() + rend_, rbuf_.size() - rend_),
                   [self = shared_from_this()](const asio::error_code& ec, size_t n) {
                     self->reading_ = false;
                     self->onRead(ec, n);
                   });
}

void Conn::onRead(const asio::error_code& ec, size_t n) {
  if (phase_ == Phase::Closed) return;
  if (phase_ != Phase::Open) {  // draining or lingering: discard input until the peer's EOF
    if (ec) {
      if (phase_ == Phase::Lingering) close(close_reason_);
      return;
    }
    startRead();
    return;
  }
  if (ec) {
    close(ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ? "closed by peer" : ec.message());
    return;
  }
  rend_ += n;
  last_rx_ = Clock::now();
  processFrames();
}

// Consumes every complete frame in order. A frame is consumed only once the plugin took it,
// so a publish held by back-pressure also holds everything behind it (pings included).
void Conn::processFrames() {
  const Settings& cfg = owner_.settings();
  bool consumed = false;
  while (phase_ == Phase::Open && !paused_) {
    const size_t avail = rend_ - rbeg_;
    if (avail < 4) break;
    const auto* p = reinterpret_cast<const unsigned char*>(rbuf_.data() + rbeg_);
    const uint32_t rest = be32(p);
    if (rest < 3)
      return protocolError("frame too short", "length-of-rest is " + std::to_string(rest) + ", at least 3 is needed");
    if (rest > cfg.max_frame_bytes)
      return protocolError("frame too large", "length-of-rest is " + std::to_string(rest) + ", max_frame_bytes is " +
                                                  std::to_string(cfg.max_frame_bytes));
    if (avail >= 5 && !owner_.kindAllowed(server_, p[4]))
      return protocolError("unknown kind", "frame kind " + std::to_string(p[4]) + " is not accepted here");
    uint16_t topic_len = 0;
    if (avail >= kHeaderBytes) {
      topic_len = be16(p + 5);
      if (3u + topic_len > rest)
        return protocolError("topic length past frame", "topic length " + std::to_string(topic_len) +
                                                            " does not fit in length-of-rest " + std::to_string(rest));
    }
    if (avail < 4 + size_t(rest)) break;
    const char* base = rbuf_.data() + rbeg_;
    const std::string_view topic(base + kHeaderBytes, topic_len);
    const std::string_view payload(base + kHeaderBytes + topic_len, rest - 3 - topic_len);
    if (owner_.onFrame(*this, p[4], topic, payload) == FrameResult::Retry) {
      pause();
      return;
    }
    if (phase_ != Phase::Open) return;  // the frame made the connection close (slow consumer)
    retry_delay_ms_ = 0;
    rbeg_ += 4 + size_t(rest);
    consumed = true;
  }
  if (phase_ != Phase::Open || paused_) return;
  if (rbeg_ == rend_) disarmFrameTimer();
  else if (consumed || !frame_timer_armed_) armFrameTimer();  // a new partial frame began
  startRead();
}

// Back-pressure: keep the frame, stop reading, try again after 1, 2, 4, 5, 5, ... ms.
void Conn::pause() {
  paused_ = true;
  disarmFrameTimer();
  retry_delay_ms_ = retry_delay_ms_ == 0 ? 1 : std::min<uint32_t>(5, retry_delay_ms_ * 2);
  const uint64_t gen = ++retry_gen_;
  retry_timer_.expires_after(Ms(retry_delay_ms_));
  retry_timer_.async_wait([self = shared_from_this(), gen](const asio::error_code&) {
    if (self->retry_gen_ != gen || self->phase_ != Phase::Open) return;
    self->paused_ = false;
    self->last_rx_ = Clock::now();  // the keepalive must not count the pause as silence
    self->processFrames();
  });
}

void Conn::armFrameTimer() {
  frame_timer_armed_ = true;
  const uint64_t gen = ++frame_gen_;
  const uint32_t ms = owner_.settings().frame_timeout_ms;
  frame_timer_.expires_after(Ms(ms));
  frame_timer_.async_wait([self = shared_from_this(), gen, ms](const asio::error_code&) {
    if (self->frame_gen_ != gen || self->phase_ != Phase::Open || self->paused_) return;
    self->protocolError("frame timeout",
                        "a partial frame was not completed within " + std::to_string(ms) + " ms (frame_timeout_ms)");
  });
}

void Conn::disarmFrameTimer() {
  if (!frame_timer_armed_) return;
  frame_timer_armed_ = false;
  ++frame_gen_;
  frame_timer_.cancel();
}

void Conn::armCloseTimer(uint32_t ms, std::string reason) {
  const uint64_t gen = ++close_gen_;
  close_timer_.expires_after(Ms(ms));
  close_timer_.async_wait([self = shared_from_this(), gen, reason = std::move(reason)](const asio::error_code&) {
    if (self->close_gen_ != gen || self->phase_ == Phase::Closed) return;
    self->close(reason);
  });
}

void Conn::push(OutFrame f) {
  out_bytes_ += f.bytes->size();
  outq_.push_back(std::move(f));
  startWrite();
}

void Conn::startWrite() {
  if (writing_ || outq_.empty() || (phase_ != Phase::Open && phase_ != Phase::Draining)) return;
  std::vector<asio::const_buffer> bufs;
  size_t total = 0;
  for (const auto& f : outq_) {
    if (!bufs.empty() && (bufs.size() >= kMaxBatchFrames || total + f.bytes->size() > kMaxBatchBytes)) break;
    bufs.push_back(asio::buffer(*f.bytes));
    in_flight_.push_back(f.bytes);
    total += f.bytes->size();
  }
  writing_ = true;
  stream_.write(bufs, [self = shared_from_this()](const asio::error_code& ec, size_t) {
    self->writing_ = false;
    self->onWritten(ec);
  });
}

void Conn::onWritten(const asio::error_code& ec) {
  const size_t n = in_flight_.size();
  in_flight_.clear();
  if (phase_ == Phase::Closed) return;  // close() already settled every queued frame
  if (ec) {
    close("write failed: " + ec.message());
    return;
  }
  for (size_t i = 0; i < n && !outq_.empty(); ++i) {
    OutFrame f = std::move(outq_.front());
    outq_.pop_front();
    out_bytes_ -= f.bytes->size();
    owner_.onWritten(f);
  }
  if (phase_ == Phase::Draining && outq_.empty()) {
    finishDrain();
    return;
  }
  startWrite();
}

// Removes the queued frames that are not part of the write in progress.
std::deque<OutFrame> Conn::takeUnsent() {
  std::deque<OutFrame> out;
  const size_t keep = std::min(in_flight_.size(), outq_.size());
  while (outq_.size() > keep) {
    out.push_front(std::move(outq_.back()));
    outq_.pop_back();
    out_bytes_ -= out.front().bytes->size();
  }
  return out;
}

void Conn::sendError(std::string_view error, std::string_view detail) {
  push(OutFrame{std::make_shared<const std::string>(encodeFrame(kError, "", errorJson(error, detail))), nullptr,
                kError, false});
}

void Conn::protocolError(std::string_view error, const std::string& detail) {
  owner_.warnLimited(name() + ": " + std::string(error) + ": " + detail + "; closing the connection");
  sendError(error, detail);
  closeAfterFlush(std::string(error), true);
}

// Stops reading, flushes the outbound queue (bounded by kDrainMs), then closes. With linger,
// it first half-closes and waits (bounded) for the peer's EOF, discarding its input: closing
// with unread input would send a RST that can destroy the error frame in flight.
void Conn::closeAfterFlush(const std::string& reason, bool linger) {
  if (phase_ == Phase::Closed || phase_ == Phase::Draining || phase_ == Phase::Lingering) return;
  if (phase_ == Phase::Handshake) {
    close(reason);
    return;
  }
  phase_ = Phase::Draining;
  close_reason_ = reason;
  linger_ = linger;
  paused_ = false;
  ++retry_gen_;
  retry_timer_.cancel();
  disarmFrameTimer();
  if (!writing_ && outq_.empty()) {
    finishDrain();
    return;
  }
  armCloseTimer(kDrainMs, reason + " (outbound data not flushed in time)");
  startWrite();
}

void Conn::finishDrain() {
  asio::error_code ignored;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  if (!linger_) {
    close(close_reason_);
    return;
  }
  phase_ = Phase::Lingering;
  armCloseTimer(kLingerMs, close_reason_);
  startRead();
}

void Conn::close(const std::string& reason) {
  if (phase_ == Phase::Closed) return;
  auto keep = shared_from_this();  // the owner drops its reference in onClosed
  const bool was_ready = phase_ != Phase::Handshake;
  phase_ = Phase::Closed;
  asio::error_code ignored;
  stream_.socket().close(ignored);
  ++retry_gen_;
  ++frame_gen_;
  ++close_gen_;
  retry_timer_.cancel();
  frame_timer_.cancel();
  close_timer_.cancel();
  out_bytes_ = 0;
  std::deque<OutFrame> unsent;
  unsent.swap(outq_);
  owner_.onClosed(*this, was_ready, reason, std::move(unsent));
}

// ---- TcpPlugin: lifecycle ----------------------------------------------------------------

bool TcpPlugin::setupTls() {
  using asio::ssl::context;
  ssl_ = std::make_unique<context>(cfg_.listen ? context::tls_server : context::tls_client);
  asio::error_code ec;
  ssl_->set_options(context::default_workarounds | context::no_sslv2 | context::no_sslv3 | context::no_tlsv1 |
                        context::no_tlsv1_1,
                    ec);
  auto fail = [&](const std::string& key, const std::string& file) {
    host_.error("tcp: " + key + ": cannot use '" + file + "': " + ec.message());
    ssl_.reset();
    return false;
  };
  if (!cfg_.cert_file.empty()) {
    ssl_->use_certificate_chain_file(cfg_.cert_file, ec);
    if (ec) return fail("tls.cert_file", cfg_.cert_file);
  }
  if (!cfg_.key_file.empty()) {
    ssl_->use_private_key_file(cfg_.key_file, context::pem, ec);
    if (ec) return fail("tls.key_file", cfg_.key_file);
  }
  const bool verify = cfg_.listen ? (cfg_.tls_verify && !cfg_.ca_file.empty()) : cfg_.tls_verify;
  if (verify) {
    if (!cfg_.ca_file.empty()) {
      ssl_->load_verify_file(cfg_.ca_file, ec);
      if (ec) return fail("tls.ca_file", cfg_.ca_file);
    } else {
      ssl_->set_default_verify_paths(ec);
      if (ec) return fail("tls.ca_file", "(system default CA paths)");
    }
    ssl_->set_verify_mode(cfg_.listen ? asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert
                                      : asio::ssl::verify_peer,
                          ec);
  } else {
    ssl_->set_verify_mode(asio::ssl::verify_none, ec);
  }
  return true;
}

fg_status TcpPlugin::start() {
  std::string up_detail;
  {
    std::lock_guard lk(life_mu_);
    if (started_) return FG_ERR_STATE;
    if (const fg_status st = open(up_detail); st != FG_OK) return st;
    started_ = running_ = true;
  }
  // Host callbacks outside the lock (a host may publish from inside on_state); the I/O thread
  // starts after UP, so no session event can precede it.
  if (cfg_.listen) {
    host_.info("tcp: " + up_detail);
    host_.onState(FG_STATE_UP, up_detail);
  } else {
    host_.onState(FG_STATE_STARTING, "connecting to " + cfg_.address.text());
  }
  thread_ = std::thread([this] { run(); });
  return FG_OK;
}

// Creates the io_context, the TLS context and (listen mode) the bound acceptor; queues the
// first accept or connect. On failure everything is released and the reason logged.
fg_status TcpPlugin::open(std::string& up_detail) {
  io_ = std::make_unique<asio::io_context>();
  auto cleanup = [&] {
    acceptor_.reset();
    ssl_.reset();
    io_.reset();
  };
  if (cfg_.tls && !setupTls()) {
    cleanup();
    return FG_ERR_INVALID_ARG;
  }
  if (cfg_.listen) {
    asio::error_code ec;
    tcp::resolver resolver(*io_);
    auto results = resolver.resolve(cfg_.address.host, std::to_string(cfg_.address.port),
                                    tcp::resolver::passive | tcp::resolver::numeric_service, ec);
    if (!ec && results.empty()) ec = asio::error::host_not_found;
    if (!ec) {
      const tcp::endpoint ep = results.begin()->endpoint();
      acceptor_ = std::make_unique<tcp::acceptor>(*io_);
      acceptor_->open(ep.protocol(), ec);
      if (!ec) acceptor_->set_option(tcp::acceptor::reuse_address(true), ec);
      if (!ec) acceptor_->bind(ep, ec);
      if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
      if (!ec) {
        const tcp::endpoint bound = acceptor_->local_endpoint(ec);
        up_detail = "listening on " + endpointText(bound) + (cfg_.tls ? " (TLS)" : "");
      }
    }
    if (ec) {
      host_.error("tcp: cannot listen on " + cfg_.address.text() + ": " + ec.message());
      cleanup();
      return FG_ERR_UNAVAILABLE;
    }
    accept_timer_.emplace(*io_);
  } else {
    resolver_.emplace(*io_);
    reconnect_timer_.emplace(*io_);
    keepalive_timer_.emplace(*io_);
    connect_timer_.emplace(*io_);
  }
  work_.emplace(asio::make_work_guard(*io_));
  if (cfg_.listen) accept();
  else asio::post(*io_, [this] { clientConnect(); });
  return FG_OK;
}

void TcpPlugin::run() {
  while (true) {
    try {
      io_->run();
      break;
    } catch (const std::exception& e) {
      host_.error(std::string("tcp: unexpected exception in the I/O thread: ") + e.what());
    } catch (...) {
      host_.error("tcp: unexpected exception in the I/O thread");
    }
  }
  {
    std::lock_guard lk(stop_mu_);
    io_done_ = true;
  }
  stop_cv_.notify_all();
}

fg_status TcpPlugin::stop(uint32_t timeout_ms) {
  {
    std::lock_guard lk(life_mu_);
    if (!running_) return FG_OK;
    running_ = false;  // publish/subscribe post nothing from now on
  }
  const auto deadline = Clock::now() + Ms(timeout_ms);
  // 1. Graceful: stop accepting and reading, flush what is queued.
  asio::post(*io_, [this] { beginStop(); });
  {
    std::unique_lock lk(stop_mu_);
    stop_cv_.wait_until(lk, deadline, [&] { return drained_ || io_done_; });
  }
  // 2. Close whatever is left; every handler then completes and run() returns.
  asio::post(*io_, [this] { hardStop(); });
  work_.reset();
  {
    std::unique_lock lk(stop_mu_);
    if (!stop_cv_.wait_for(lk, std::chrono::seconds(2), [&] { return io_done_; })) {
      host_.warn("tcp: the I/O thread did not finish in time; stopping it");
      io_->stop();
    }
  }
  thread_.join();
  // The thread is gone: tear down the I/O objects before their io_context.
  conns_.clear();
  client_.reset();
  connecting_.reset();
  pending_.clear();
  acceptor_.reset();
  accept_timer_.reset();
  resolver_.reset();
  reconnect_timer_.reset();
  keepalive_timer_.reset();
  connect_timer_.reset();
  io_.reset();
  ssl_.reset();
  host_.info("tcp: stopped");
  host_.onState(FG_STATE_STOPPED, "");
  return FG_OK;
}

void TcpPlugin::beginStop() {
  stopping_ = true;
  asio::error_code ignored;
  if (acceptor_) acceptor_->close(ignored);
  if (accept_timer_) accept_timer_->cancel();
  ++reconnect_gen_;
  ++keepalive_gen_;
  ++connect_gen_;
  if (reconnect_timer_) reconnect_timer_->cancel();
  if (keepalive_timer_) keepalive_timer_->cancel();
  if (connect_timer_) connect_timer_->cancel();
  if (resolver_) resolver_->cancel();
  if (connecting_) connecting_->close(ignored);
  std::vector<std::shared_ptr<Conn>> all;
  for (auto& [id, c] : conns_) all.push_back(c);
  if (client_) all.push_back(client_);
  for (auto& c : all) c->closeAfterFlush("the gateway is stopping", false);
  failPending();
  checkDrained();
}

void TcpPlugin::hardStop() {
  beginStop();
  std::vector<std::shared_ptr<Conn>> all;
  for (auto& [id, c] : conns_) all.push_back(c);
  if (client_) all.push_back(client_);
  for (auto& c : all) c->close("the gateway stopped");
  failPending();
}

void TcpPlugin::checkDrained() {
  if (!stopping_ || !conns_.empty() || client_) return;
  {
    std::lock_guard lk(stop_mu_);
    drained_ = true;
  }
  stop_cv_.notify_all();
}

// ---- TcpPlugin: host calls ---------------------------------------------------------------

fg_status TcpPlugin::publish(const fg_message& msg, uint64_t delivery_id) {
  const std::string_view topic = view(msg.topic), payload = view(msg.payload);
  if (topic.size() > 0xFFFF) {
    host_.warn("tcp: publish refused: the topic is " + std::to_string(topic.size()) + " bytes, at most 65535 fit a frame");
    return FG_ERR_INVALID_ARG;
  }
  const uint64_t rest = 3 + uint64_t(topic.size()) + payload.size();
  if (rest > cfg_.max_frame_bytes) {
    host_.warn("tcp: publish on '" + printable(topic) + "' refused: length-of-rest " + std::to_string(rest) +
               " exceeds max_frame_bytes " + std::to_string(cfg_.max_frame_bytes));
    return FG_ERR_INVALID_ARG;
  }
  const size_t size = 4 + size_t(rest);
  std::lock_guard lk(life_mu_);
  if (!running_) return FG_ERR_STATE;
  std::atomic<size_t>& budget = cfg_.listen ? posted_bytes_ : client_bytes_;
  const size_t used = budget.load();
  if (used > 0 && used + size > cfg_.max_outbound_bytes) return FG_RETRY;
  budget += size;
  auto frame = std::make_shared<const std::string>(encodeFrame(kPublish, topic, payload));
  if (cfg_.listen) {
    asio::post(*io_, [this, frame = std::move(frame), session = msg.session, delivery_id] {
      posted_bytes_ -= frame->size();
      serverDeliver(frame, session, delivery_id);
    });
  } else {
    asio::post(*io_, [this, frame = std::move(frame), delivery_id] { clientSend(frame, delivery_id); });
  }
  return FG_OK;
}

fg_status TcpPlugin::subscribe(std::string_view filter, uint64_t sub_id) {
  if (cfg_.listen) return FG_OK;  // sessions: every client publish reaches the host with sub_id 0
  if (!isValidFilter(filter) || filter.size() > 0xFFFF) return FG_ERR_INVALID_ARG;
  {
    std::lock_guard lk(subs_mu_);
    std::erase_if(subs_, [&](const Sub& s) { return s.id == sub_id; });
    subs_.push_back(Sub{sub_id, std::string(filter)});
  }
  std::lock_guard lk(life_mu_);
  if (running_) asio::post(*io_, [this, f = std::string(filter)] { clientControl(kSubscribe, f); });
  return FG_OK;
}

fg_status TcpPlugin::unsubscribe(uint64_t sub_id) {
  if (cfg_.listen) return FG_OK;
  std::string filter;
  bool still_used = false;
  {
    std::lock_guard lk(subs_mu_);
    auto it = std::find_if(subs_.begin(), subs_.end(), [&](const Sub& s) { return s.id == sub_id; });
    if (it == subs_.end()) return FG_OK;
    filter = it->filter;
    subs_.erase(it);
    still_used = std::any_of(subs_.begin(), subs_.end(), [&](const Sub& s) { return s.filter == filter; });
  }
  if (still_used) return FG_OK;  // the server holds filters, not ids
  std::lock_guard lk(life_mu_);
  if (running_) asio::post(*io_, [this, filter] { clientControl(kUnsubscribe, filter); });
  return FG_OK;
}

// ---- TcpPlugin: shared io-thread paths ---------------------------------------------------

FrameResult TcpPlugin::onFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload) {
  return c.server_ ? serverFrame(c, kind, topic, payload) : clientFrame(c, kind, topic, payload);
}

void TcpPlugin::onReady(Conn& c) {
  if (c.server_) {
    host_.debug("tcp: " + c.name() + " opened");
    host_.onSession(c.session_, FG_SESSION_OPENED);
  } else {
    clientReady(c);
  }
}

void TcpPlugin::onWritten(OutFrame& f) {
  if (f.counted) client_bytes_ -= f.bytes->size();
  settle(f.tracker, true);
}

void TcpPlugin::settle(const std::shared_ptr<Tracker>& t, bool written) {
  if (!t || t->remaining == 0) return;
  if (written) ++t->written;
  if (--t->remaining == 0) host_.onDelivery(t->delivery_id, t->written ? FG_DELIVERY_OK : FG_DELIVERY_FAILED);
}

void TcpPlugin::onClosed(Conn& c, bool was_ready, const std::string& reason, std::deque<OutFrame> unsent) {
  if (c.server_) {
    for (auto& f : unsent) settle(f.tracker, false);
    conns_.erase(c.session_);
    if (was_ready) {
      host_.info("tcp: " + c.name() + " closed: " + reason);
      host_.onSession(c.session_, FG_SESSION_CLOSED);
    } else {
      host_.debug("tcp: connection from " + c.peer_ + " closed before the TLS handshake completed: " + reason);
    }
    checkDrained();
    return;
  }
  if (client_.get() == &c) client_.reset();
  ++keepalive_gen_;
  if (keepalive_timer_) keepalive_timer_->cancel();
  // Publishes not yet written go back to the front of the queue, in order; control frames
  // (subscriptions, pings) are rebuilt after the next connect.
  for (auto it = unsent.rbegin(); it != unsent.rend(); ++it)
    if (it->kind == kPublish) pending_.push_front(std::move(*it));
  if (stopping_) {
    failPending();
    checkDrained();
    return;
  }
  const std::string what = (was_ready ? "connection to " : "cannot connect to ") + cfg_.address.text() + ": " + reason;
  if (!down_reported_) {
    down_reported_ = true;
    host_.warn("tcp: " + what + "; reconnecting");
    host_.onState(FG_STATE_DOWN, what);
  } else {
    host_.debug("tcp: " + what);
  }
  scheduleReconnect();
}

// ---- TcpPlugin: listen mode --------------------------------------------------------------

void TcpPlugin::accept() {
  acceptor_->async_accept([this](const asio::error_code& ec, tcp::socket sock) {
    if (stopping_ || !acceptor_->is_open()) return;
    if (ec) {
      warnLimited("accept failed: " + ec.message());
      accept_timer_->expires_after(Ms(kAcceptRetryMs));
      accept_timer_->async_wait([this](const asio::error_code& e) {
        if (!e && !stopping_) accept();
      });
      return;
    }
    asio::error_code ignored;
    sock.set_option(tcp::no_delay(true), ignored);
    const std::string peer = endpointText(sock.remote_endpoint(ignored));
    const uint64_t id = next_session_++;
    auto c = std::make_shared<Conn>(*this, ssl_ ? Stream(std::move(sock), *ssl_) : Stream(std::move(sock)), id, true, peer);
    conns_[id] = c;
    c->start();
    accept();
  });
}

FrameResult TcpPlugin::serverFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload) {
  switch (kind) {
    case kPublish: {
      const auto now_ms = std::chrono::duration_cast<Ms>(std::chrono::system_clock::now().time_since_epoch()).count();
      const fg_message m{str(topic), str(payload), nullptr, 0, static_cast<int64_t>(now_ms), c.session_};
      const fg_status st = host_.onMessage(0, m);
      if (st == FG_RETRY) return FrameResult::Retry;
      if (st != FG_OK)
        warnLimited(c.name() + ": the host refused a publish on '" + printable(topic) + "' (status " + std::to_string(st) +
                    ")");
      return FrameResult::Done;
    }
    case kSubscribe: {
      if (!isValidFilter(topic)) {
        c.sendError("invalid filter", "'" + printable(topic) + "' is not a valid filter");
        return FrameResult::Done;
      }
      std::string reason;
      if (host_.authorizeSubscribe(c.session_, topic, &reason) != FG_OK) {
        host_.debug("tcp: " + c.name() + ": subscribe to '" + printable(topic) + "' refused: " + reason);
        c.sendError("subscribe refused", reason.empty() ? "refused by the gateway" : reason);
        return FrameResult::Done;
      }
      c.filters_.emplace(topic);
      return FrameResult::Done;
    }
    case kUnsubscribe:
      c.filters_.erase(std::string(topic));
      return FrameResult::Done;
    case kPing:
      pushLimited(c, OutFrame{std::make_shared<const std::string>(encodeFrame(kPong, topic, payload)), nullptr, kPong, false});
      return FrameResult::Done;
    default:
      return FrameResult::Done;  // kindAllowed() filtered the rest
  }
}

void TcpPlugin::pushLimited(Conn& c, OutFrame f) {
  if (c.phase_ != Phase::Open) {
    settle(f.tracker, false);
    return;
  }
  if (c.out_bytes_ + f.bytes->size() > cfg_.max_outbound_bytes) {
    warnLimited(c.name() + ": slow consumer: " + std::to_string(c.out_bytes_) + " bytes are waiting and " +
                std::to_string(f.bytes->size()) + " more would exceed max_outbound_bytes " +
                std::to_string(cfg_.max_outbound_bytes) + "; closing the connection");
    settle(f.tracker, false);
    // What is queued would only delay the error frame: it fails now, explicitly.
    for (auto& u : c.takeUnsent()) settle(u.tracker, false);
    c.sendError("slow consumer", "the outbound buffer exceeded max_outbound_bytes (" +
                                     std::to_string(cfg_.max_outbound_bytes) + "); closing the connection");
    c.closeAfterFlush("slow consumer", true);
    return;
  }
  c.push(std::move(f));
}

void TcpPlugin::serverDeliver(const std::shared_ptr<const std::string>& frame, uint64_t session, uint64_t delivery_id) {
  if (stopping_) {
    if (delivery_id) host_.onDelivery(delivery_id, FG_DELIVERY_FAILED);
    return;
  }
  const std::string_view topic = frameTopic(*frame);
  std::vector<std::shared_ptr<Conn>> targets;
  if (session != 0) {
    auto it = conns_.find(session);
    if (it == conns_.end() || it->second->phase_ != Phase::Open) {
      warnLimited("publish on '" + printable(topic) + "' for session " + std::to_string(session) +
                  ": no such session (closed?); not delivered");
      if (delivery_id) host_.onDelivery(delivery_id, FG_DELIVERY_FAILED);
      return;
    }
    targets.push_back(it->second);
  } else {
    for (auto& [id, c] : conns_)
      if (c->phase_ == Phase::Open && c->matches(topic)) targets.push_back(c);
  }
  std::shared_ptr<Tracker> tracker;
  if (delivery_id) {
    if (targets.empty()) {  // no subscriber: nothing to deliver, nothing failed
      host_.onDelivery(delivery_id, FG_DELIVERY_OK);
      return;
    }
    tracker = std::make_shared<Tracker>(Tracker{delivery_id, targets.size(), 0});
  }
  for (auto& c : targets) pushLimited(*c, OutFrame{frame, tracker, kPublish, false});
}

// ---- TcpPlugin: connect mode -------------------------------------------------------------

void TcpPlugin::clientConnect() {
  if (stopping_) return;
  resolver_->async_resolve(
      cfg_.address.host, std::to_string(cfg_.address.port), tcp::resolver::numeric_service,
      [this](const asio::error_code& ec, const tcp::resolver::results_type& results) {
        if (stopping_) return;
        if (ec) {
          clientFailed("cannot resolve the host: " + ec.message());
          return;
        }
        auto sock = std::make_shared<tcp::socket>(*io_);
        connecting_ = sock;
        const uint64_t gen = ++connect_gen_;
        auto timed_out = std::make_shared<bool>(false);
        connect_timer_->expires_after(Ms(kConnectTimeoutMs));
        connect_timer_->async_wait([this, gen, sock, timed_out](const asio::error_code&) {
          if (gen != connect_gen_) return;
          *timed_out = true;
          asio::error_code ignored;
          sock->close(ignored);
        });
        asio::async_connect(*sock, results, [this, gen, sock, timed_out](const asio::error_code& e, const tcp::endpoint&) {
          if (gen == connect_gen_) {
            ++connect_gen_;
            connect_timer_->cancel();
          }
          if (connecting_ == sock) connecting_.reset();
          if (stopping_) return;
          if (e) {
            clientFailed(*timed_out ? "connect timed out" : e.message());
            return;
          }
          asio::error_code ignored;
          sock->set_option(tcp::no_delay(true), ignored);
          auto c = std::make_shared<Conn>(*this, ssl_ ? Stream(std::move(*sock), *ssl_) : Stream(std::move(*sock)), 0,
                                          false, cfg_.address.text());
          if (auto* tls = c->stream_.tls()) {
            if (cfg_.tls_verify) tls->set_verify_callback(asio::ssl::host_name_verification(cfg_.address.host), ignored);
            asio::error_code not_ip;
            asio::ip::make_address(cfg_.address.host, not_ip);
            if (not_ip) SSL_set_tlsext_host_name(tls->native_handle(), cfg_.address.host.c_str());
          }
          client_ = c;
          c->start();
        });
      });
}

void TcpPlugin::clientFailed(const std::string& why) {
  const std::string what = "cannot connect to " + cfg_.address.text() + ": " + why;
  if (!down_reported_) {
    down_reported_ = true;
    host_.warn("tcp: " + what + "; retrying");
    host_.onState(FG_STATE_DOWN, what);
  } else {
    host_.debug("tcp: " + what);
  }
  scheduleReconnect();
}

// Jittered exponential backoff: base = min(reconnect_max_ms, 100 ms * 2^attempt), the delay
// is uniform in [max(100 ms, base/2), base].
void TcpPlugin::scheduleReconnect() {
  if (stopping_) return;
  const double base = std::min<double>(cfg_.reconnect_max_ms, double(kBackoffMinMs) * double(1u << std::min(attempt_, 20u)));
  ++attempt_;
  std::uniform_real_distribution<double> jitter(std::max<double>(kBackoffMinMs, base / 2), base);
  const auto delay = Ms(static_cast<int64_t>(jitter(rng_)));
  const uint64_t gen = ++reconnect_gen_;
  reconnect_timer_->expires_after(delay);
  reconnect_timer_->async_wait([this, gen](const asio::error_code&) {
    if (gen != reconnect_gen_ || stopping_) return;
    clientConnect();
  });
}

// A new connection: re-send every subscription, then a ping whose pong confirms that the
// server stored them all (-> UP the first time, RECONNECTED after that); then the publishes
// that waited.
void TcpPlugin::clientReady(Conn& c) {
  restored_ = false;
  restore_token_ = "fingate-restore-" + std::to_string(++restore_seq_);
  std::vector<std::string> filters;
  {
    std::lock_guard lk(subs_mu_);
    for (const auto& s : subs_)
      if (std::find(filters.begin(), filters.end(), s.filter) == filters.end()) filters.push_back(s.filter);
  }
  for (const auto& f : filters)
    c.push(OutFrame{std::make_shared<const std::string>(encodeFrame(kSubscribe, f, "")), nullptr, kSubscribe, false});
  c.push(OutFrame{std::make_shared<const std::string>(encodeFrame(kPing, "", restore_token_)), nullptr, kPing, false});
  while (!pending_.empty()) {
    c.push(std::move(pending_.front()));
    pending_.pop_front();
  }
  host_.debug("tcp: connected to " + cfg_.address.text() + ", restoring " + std::to_string(filters.size()) +
              " subscription(s)");
  armKeepalive();
}

FrameResult TcpPlugin::clientFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload) {
  switch (kind) {
    case kPublish: {
      uint64_t sub_id = 0;
      {
        std::lock_guard lk(subs_mu_);
        for (const auto& s : subs_)
          if (topicMatches(s.filter, topic)) {
            sub_id = s.id;
            break;
          }
      }
      const auto now_ms = std::chrono::duration_cast<Ms>(std::chrono::system_clock::now().time_since_epoch()).count();
      const fg_message m{str(topic), str(payload), nullptr, 0, static_cast<int64_t>(now_ms), 0};
      const fg_status st = host_.onMessage(sub_id, m);
      if (st == FG_RETRY) return FrameResult::Retry;
      if (st != FG_OK)
        warnLimited("the host refused a message on '" + printable(topic) + "' (status " + std::to_string(st) + ")");
      return FrameResult::Done;
    }
    case kPing:
      c.push(OutFrame{std::make_shared<const std::string>(encodeFrame(kPong, topic, payload)), nullptr, kPong, false});
      return FrameResult::Done;
    case kPong:
      if (!restored_ && payload == restore_token_ && client_.get() == &c) {
        restored_ = true;
        attempt_ = 0;
        down_reported_ = false;
        const std::string detail = "connected to " + cfg_.address.text();
        host_.info("tcp: " + detail);
        host_.onState(ever_up_ ? FG_STATE_RECONNECTED : FG_STATE_UP, detail);
        ever_up_ = true;
      }
      return FrameResult::Done;
    case kError:
      warnLimited("the server at " + cfg_.address.text() + " sent an error: " + printable(payload, 1024));
      return FrameResult::Done;
    default:
      return FrameResult::Done;
  }
}

void TcpPlugin::clientSend(const std::shared_ptr<const std::string>& frame, uint64_t delivery_id) {
  OutFrame f{frame, delivery_id ? std::make_shared<Tracker>(Tracker{delivery_id, 1, 0}) : nullptr, kPublish, true};
  if (client_ && client_->phase_ == Phase::Open) {
    client_->push(std::move(f));
    return;
  }
  pending_.push_back(std::move(f));
  if (stopping_) failPending();
}

void TcpPlugin::clientControl(uint8_t kind, const std::string& filter) {
  if (client_ && client_->phase_ == Phase::Open)
    client_->push(OutFrame{std::make_shared<const std::string>(encodeFrame(kind, filter, "")), nullptr, kind, false});
  // Not connected: the next connect sends the whole current subscription set.
}

void TcpPlugin::armKeepalive() {
  const uint64_t gen = ++keepalive_gen_;
  keepalive_timer_->expires_after(Ms(cfg_.keepalive_ms));
  keepalive_timer_->async_wait([this, gen](const asio::error_code&) {
    if (gen != keepalive_gen_ || stopping_ || !client_ || client_->phase_ != Phase::Open) return;
    if (!client_->paused_ && Clock::now() - client_->last_rx_ > 3 * Ms(cfg_.keepalive_ms)) {
      client_->close("nothing received for 3 keepalive periods");
      return;
    }
    client_->push(OutFrame{std::make_shared<const std::string>(encodeFrame(kPing, "", "keepalive")), nullptr, kPing, false});
    armKeepalive();
  });
}

void TcpPlugin::failPending() {
  while (!pending_.empty()) {
    OutFrame f = std::move(pending_.front());
    pending_.pop_front();
    if (f.counted) client_bytes_ -= f.bytes->size();
    settle(f.tracker, false);
  }
}

}  // namespace
}  // namespace fingate

FG_DEFINE_PLUGIN(fingate::TcpPlugin, "tcp", "0.1.0", FG_CAP_SESSIONS | FG_CAP_DELIVERY, "listen", "connect",
                 "max_frame_bytes", "max_outbound_bytes", "reconnect_max_ms", "frame_timeout_ms", "keepalive_ms",
                 "tls.enabled", "tls.cert_file", "tls.key_file", "tls.ca_file", "tls.verify")
