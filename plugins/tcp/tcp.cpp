// tcp: fingate's framed TCP transport (DESIGN §5; the client-facing contract is in
// docs/transports.md, section "TCP"). The frame codec itself is in frame.hpp (no I/O).
//
// Frames, big-endian:  u32 length-of-rest | u8 kind | u16 topic-length | topic | payload
// Kinds: 1 publish, 2 subscribe (topic = filter), 3 unsubscribe, 4 ping, 5 pong, 6 error.
//
// listen mode  a server. Every client connection is a session (a non-zero id, never reused);
//              client publishes go to the host with that session id, subscriptions are local
//              to the connection, host publishes go to one session or to every matching
//              subscriber. Bad frames get an error frame, then that one connection is closed.
//              Per-session back-pressure (ABI 1.1): a publish to a session whose outbound
//              buffer holds session_buffer_bytes or more answers FG_RETRY (the host keeps that
//              session's messages in its own queue); once the buffer drained below half, the
//              host gets FG_EVENT_SESSION_WRITABLE. The host closes a slow session with
//              close_session (error frame, then close; what it still held is FAILED).
//              Limits: max_connections, max_connections_per_ip, max_pending_bytes (unfinished
//              inbound frames of all connections together), max_subscriptions per session.
// connect mode a client of a server speaking the same frames (typically another fingate):
//              reconnects with jittered exponential backoff and re-sends every subscription.
//
// Threading: each instance owns one I/O thread running an asio::io_context. Every socket,
// timer and connection object is touched only from that thread (after start() and before
// stop() has joined it). publish/subscribe/unsubscribe/close_session copy what they need and
// post into it: they never block on the network. publish appends to an inbox (a vector under
// a mutex) and posts one drain for a whole batch, so the hot path costs one lock and one
// allocation (the frame) per message.
#ifndef ASIO_STANDALONE
#define ASIO_STANDALONE
#endif
#include <algorithm>
#include <asio.hpp>
#include <asio/ssl.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "frame.hpp"

namespace fingate {
namespace {

using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;
using sdk::ConfigError;
using sdk::str;
using sdk::view;
using namespace tcpframe;

constexpr size_t kReadChunk = 64 * 1024;       // bytes asked for per read
constexpr size_t kMaxBatchFrames = 64;         // frames per gathered write
constexpr size_t kMaxBatchBytes = 256 * 1024;  // bytes per gathered write
constexpr uint32_t kLingerMs = 1000;           // after an error frame: wait this long for the peer's EOF
constexpr uint32_t kDrainMs = 2000;            // a closing connection gets this long to flush
constexpr uint32_t kConnectTimeoutMs = 10000;  // connect mode: one TCP connect attempt
constexpr uint32_t kBackoffMinMs = 100;        // connect mode: first reconnect delay
constexpr uint32_t kAcceptRetryMs = 100;       // listen mode: after a failed accept (EMFILE ...)
constexpr size_t kMaxDetailTopic = 200;        // topic bytes quoted in error details / logs
constexpr size_t kMaxRejecting = 64;           // connections refused by a limit that still get their error frame

// A frame to send: one allocation holding the encoded bytes, shared by every connection a
// broadcast goes to.
struct FrameBytes {
  std::shared_ptr<char[]> data;
  size_t size = 0;
  std::string_view topic() const {
    return std::string_view(data.get() + kHeaderBytes, be16(reinterpret_cast<const unsigned char*>(data.get()) + 5));
  }
};

FrameBytes makeFrame(uint8_t kind, std::string_view topic, std::string_view payload) {
  const size_t n = frameSize(topic.size(), payload.size());
  FrameBytes f{std::make_shared_for_overwrite<char[]>(n), n};
  encodeFrameInto(f.data.get(), kind, topic, payload);
  return f;
}

std::string printable(std::string_view s, size_t max = kMaxDetailTopic) { return sdk::printable(s, max); }

// A FIFO on one power-of-two array: a connection's outbound queue pushes and pops a frame per
// message, and unlike std::deque it allocates nothing once it has grown to its working size.
template <class T>
class Ring {
 public:
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return buf_[(head_ + i) & (buf_.size() - 1)]; }
  T& front() { return (*this)[0]; }
  T& back() { return (*this)[size_ - 1]; }
  void push_back(T v) {
    if (size_ == buf_.size()) grow();
    (*this)[size_] = std::move(v);
    ++size_;
  }
  void pop_front() {
    front() = T();
    head_ = (head_ + 1) & (buf_.size() - 1);
    --size_;
  }
  void pop_back() {
    back() = T();
    --size_;
  }
  // Moves everything out, in order, and releases the array.
  std::deque<T> takeAll() {
    std::deque<T> out;
    for (size_t i = 0; i < size_; ++i) out.push_back(std::move((*this)[i]));
    buf_.clear();
    buf_.shrink_to_fit();
    head_ = size_ = 0;
    return out;
  }
  template <class F>
  void forEach(F&& f) const {
    for (size_t i = 0; i < size_; ++i) f(buf_[(head_ + i) & (buf_.size() - 1)]);
  }

 private:
  void grow() {
    std::vector<T> bigger(buf_.empty() ? 16 : buf_.size() * 2);
    for (size_t i = 0; i < size_; ++i) bigger[i] = std::move((*this)[i]);
    buf_.swap(bigger);
    head_ = 0;
  }
  std::vector<T> buf_;
  size_t head_ = 0, size_ = 0;
};

// Memory for the one inbox drain that is posted at a time: allocated once, reused for every
// post (asio would otherwise allocate each post made from a thread outside the io_context).
// Allocation happens under the plugin's life_mu_, deallocation on the io thread before the
// drain runs (and takes life_mu_), so the flag needs no lock of its own.
struct HandlerSlot {
  alignas(std::max_align_t) unsigned char mem[1024];
  bool in_use = false;
};

template <class T>
struct SlotAllocator {
  using value_type = T;
  HandlerSlot* slot;
  explicit SlotAllocator(HandlerSlot* s) noexcept : slot(s) {}
  template <class U>
  SlotAllocator(const SlotAllocator<U>& o) noexcept : slot(o.slot) {}
  T* allocate(size_t n) {
    if (!slot->in_use && sizeof(T) * n <= sizeof slot->mem) {
      slot->in_use = true;
      return reinterpret_cast<T*>(slot->mem);
    }
    return static_cast<T*>(::operator new(sizeof(T) * n));
  }
  void deallocate(T* p, size_t) noexcept {
    if (reinterpret_cast<unsigned char*>(p) == slot->mem) {
      slot->in_use = false;
      return;
    }
    ::operator delete(p);
  }
  template <class U>
  bool operator==(const SlotAllocator<U>& o) const noexcept {
    return slot == o.slot;
  }
  template <class U>
  bool operator!=(const SlotAllocator<U>& o) const noexcept {
    return slot != o.slot;
  }
};

// ---- configuration -----------------------------------------------------------------------

std::string endpointText(const tcp::endpoint& ep) {
  const std::string a = ep.address().to_string();
  return (ep.address().is_v6() ? "[" + a + "]" : a) + ":" + std::to_string(ep.port());
}

struct Settings {
  bool listen = true;
  sdk::HostPort address;
  uint32_t max_frame_bytes = 1048576;
  size_t session_buffer_bytes = 256 * 1024;      // listen: FG_RETRY for a session at or above this
  size_t max_outbound_bytes = 8u * 1024 * 1024;  // listen: hard cap of one connection (broadcasts);
                                                 // connect: the send queue while disconnected
  size_t max_connections = 1024;
  size_t max_connections_per_ip = 64;
  size_t max_pending_bytes = 64u * 1024 * 1024;
  size_t max_subscriptions = 1024;
  uint32_t reconnect_max_ms = 5000;
  uint32_t frame_timeout_ms = 30000;
  uint32_t keepalive_ms = 10000;
  bool tls = false;
  std::string cert_file, key_file, ca_file;
  bool tls_verify = true;
};

#define FG_TCP_KEYS                                                                                               \
  "listen", "connect", "max_frame_bytes", "session_buffer_bytes", "max_outbound_bytes", "max_connections",        \
      "max_connections_per_ip", "max_pending_bytes", "max_subscriptions", "reconnect_max_ms", "frame_timeout_ms", \
      "keepalive_ms", "tls.enabled", "tls.cert_file", "tls.key_file", "tls.ca_file", "tls.verify"

const char* const kKnownKeys[] = {FG_TCP_KEYS, "plugin", "role"};

Settings parseSettings(const sdk::Config& cfg) {
  cfg.rejectUnknown(kKnownKeys, "tcp");
  Settings s;
  const bool has_listen = cfg.has("listen"), has_connect = cfg.has("connect");
  if (has_listen && has_connect) throw ConfigError("connect", "give either listen or connect, not both");
  if (!has_listen && !has_connect)
    throw ConfigError("listen", "one of listen (host:port) or connect (host:port) is required");
  s.listen = has_listen;
  s.address = has_listen ? sdk::parseHostPort("listen", cfg.get("listen"), true)
                         : sdk::parseHostPort("connect", cfg.get("connect"), false);
  s.max_frame_bytes = static_cast<uint32_t>(cfg.getInt("max_frame_bytes", 1048576, 16, 1LL << 30));
  s.session_buffer_bytes = static_cast<size_t>(cfg.getInt("session_buffer_bytes", 256 * 1024, 1024, 1LL << 40));
  s.max_outbound_bytes = static_cast<size_t>(cfg.getInt("max_outbound_bytes", 8LL * 1024 * 1024, 1024, 1LL << 40));
  s.max_connections = static_cast<size_t>(cfg.getInt("max_connections", 1024, 1, 1000000));
  s.max_connections_per_ip = static_cast<size_t>(cfg.getInt("max_connections_per_ip", 64, 1, 1000000));
  s.max_pending_bytes = static_cast<size_t>(cfg.getInt("max_pending_bytes", 64LL * 1024 * 1024, 1024, 1LL << 40));
  s.max_subscriptions = static_cast<size_t>(cfg.getInt("max_subscriptions", 1024, 1, 1000000));
  if (s.max_pending_bytes < size_t(s.max_frame_bytes) + kLengthBytes)
    throw ConfigError("max_pending_bytes", "must be at least max_frame_bytes + 4 (" +
                                               std::to_string(size_t(s.max_frame_bytes) + kLengthBytes) +
                                               "), or no frame of the maximum size could ever be received");
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

// Outcome of a broadcast to more than one connection (io thread only).
using Tracker = sdk::FanOutDelivery;  // a broadcast: handed = written to the socket

struct OutFrame {
  FrameBytes bytes;
  std::shared_ptr<Tracker> tracker;  // a broadcast to several connections (else null)
  uint64_t delivery_id = 0;          // one target's delivery report (tracker null); 0: none wanted
  uint8_t kind = kPublish;
  bool counted = false;          // connect mode: counted in the plugin's outbound byte total
  bool session_counted = false;  // listen mode: publish() already counted it in the session's bytes
};

// What publish() shares with the I/O thread about one open session (listen mode).
struct SessionState {
  std::atomic<size_t> bytes{0};           // published to it and not yet written (or failed)
  std::atomic<bool> wants_wakeup{false};  // a publish answered FG_RETRY since the last wake-up
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
    if (tls_)
      tls_->async_read_some(b, std::forward<Handler>(h));
    else
      plain_->async_read_some(b, std::forward<Handler>(h));
  }
  template <class Buffers, class Handler>
  void write(const Buffers& b, Handler&& h) {
    if (tls_)
      asio::async_write(*tls_, b, std::forward<Handler>(h));
    else
      asio::async_write(*plain_, b, std::forward<Handler>(h));
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
  Conn(TcpPlugin& owner, Stream stream, uint64_t session, bool server, std::string peer, asio::ip::address addr = {})
      : stream_(std::move(stream)),
        session_(session),
        server_(server),
        peer_(std::move(peer)),
        addr_(addr),
        state_(std::make_shared<SessionState>()),
        owner_(owner),
        rbuf_(kReadChunk),
        retry_timer_(stream_.socket().get_executor()),
        frame_timer_(stream_.socket().get_executor()),
        close_timer_(stream_.socket().get_executor()) {}

  void start();
  // A connection refused by a limit: after the (TLS) handshake it only gets this error frame.
  void reject(std::string error, std::string detail) {
    reject_error_ = std::move(error);
    reject_detail_ = std::move(detail);
  }
  bool rejected() const { return !reject_error_.empty(); }
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
    if (rejected()) return "refused connection from " + peer_;
    return server_ ? "session " + std::to_string(session_) + " (" + peer_ + ")" : "connection to " + peer_;
  }

  Stream stream_;
  const uint64_t session_;
  const bool server_;
  const std::string peer_;
  const asio::ip::address addr_;
  const std::shared_ptr<SessionState> state_;
  Phase phase_ = Phase::Handshake;
  std::set<std::string, std::less<>> filters_;  // listen mode: this connection's subscriptions
  size_t out_bytes_ = 0;                        // bytes queued in outq_
  bool paused_ = false;                         // a received publish is held by back-pressure
  size_t pending_counted_ = 0;                  // unfinished-frame bytes counted in max_pending_bytes
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
  void leaveOpen();

  TcpPlugin& owner_;
  std::string reject_error_, reject_detail_;
  // read side
  FrameBuffer rbuf_;
  size_t next_frame_size_ = 0;  // size of the unfinished frame at the front, when known
  bool reading_ = false;
  asio::steady_timer retry_timer_, frame_timer_, close_timer_;
  uint64_t retry_gen_ = 0, frame_gen_ = 0, close_gen_ = 0;
  uint32_t retry_delay_ms_ = 0;
  bool frame_timer_armed_ = false;
  // write side
  Ring<OutFrame> outq_;
  std::vector<FrameBytes> in_flight_;  // kept alive during a write
  std::vector<asio::const_buffer> wbufs_;
  bool writing_ = false;
  // closing
  std::string close_reason_;
  bool linger_ = false;
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
  fg_status closeSession(uint64_t session, const char* reason) override;

  // Called by Conn (io thread).
  const Settings& settings() const { return cfg_; }
  FrameResult onFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload);
  void onReady(Conn& c);
  void onWritten(OutFrame& f);
  void onDrained(Conn& c);
  void onLeftOpen(Conn& c);
  void onClosed(Conn& c, bool was_ready, const std::string& reason, std::deque<OutFrame> unsent);
  // Counts the connection's unfinished-frame bytes against max_pending_bytes; false (and
  // nothing counted) when `now` more would exceed it.
  bool accountPending(Conn& c, size_t now);
  void releasePending(Conn& c) {
    pending_total_ -= c.pending_counted_;
    c.pending_counted_ = 0;
  }
  void limitHit(Conn& c, std::string_view error, const std::string& detail, bool close);
  void settle(OutFrame& f, bool written);
  void warnLimited(const std::string& msg) { limited_log_.log(host_, FG_LOG_WARN, "tcp: " + msg); }

 private:
  struct Sub {
    uint64_t id;
    std::string filter;
  };
  // A publish handed to the I/O thread.
  struct Posted {
    FrameBytes bytes;
    uint64_t session;
    uint64_t delivery_id;
  };

  bool setupTls();
  fg_status open(std::string& up_detail);
  void run();
  void drainInbox();
  // listen mode
  void accept();
  void admit(tcp::socket sock);
  FrameResult serverFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload);
  void serverDeliver(Posted& p);
  void pushBroadcast(Conn& c, OutFrame f);
  void serverCloseSession(uint64_t session, const std::string& reason);
  // connect mode
  void clientConnect();
  void clientFailed(const std::string& why);
  void scheduleReconnect();
  void clientReady(Conn& c);
  FrameResult clientFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload);
  void clientSend(Posted& p);
  void clientControl(uint8_t kind, const std::string& filter);
  void armKeepalive();
  void failPending();
  // both
  void beginStop();
  void hardStop();
  void checkDrained();
  std::vector<std::shared_ptr<Conn>> allConns();

  const Settings cfg_;
  sdk::RateLimitedLog limited_log_{"tcp: "};

  // Guarded by life_mu_ (host threads: publish/subscribe/close_session vs stop vs the io thread).
  std::mutex life_mu_;
  bool started_ = false;
  bool running_ = false;
  std::vector<Posted> inbox_;  // publishes not yet taken by the io thread
  size_t inbox_bytes_ = 0;     // ... of them broadcasts (listen) or all (connect)
  bool inbox_scheduled_ = false;
  HandlerSlot drain_slot_;                                                // the memory of the posted drain
  std::unordered_map<uint64_t, std::shared_ptr<SessionState>> sessions_;  // open sessions publish may target

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
  std::vector<Posted> inbox_work_;  // the batch being delivered
  std::vector<Conn*> targets_;      // scratch: a broadcast's connections
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::optional<asio::steady_timer> accept_timer_;
  std::unordered_map<uint64_t, std::shared_ptr<Conn>> conns_;
  std::unordered_set<std::shared_ptr<Conn>> rejecting_;  // refused by a limit, sending their error frame
  std::map<asio::ip::address, size_t> per_ip_;           // connections per client address
  size_t pending_total_ = 0;                             // unfinished inbound frame bytes, all connections
  uint64_t next_session_ = 1;

  std::shared_ptr<Conn> client_;
  std::deque<OutFrame> pending_;         // connect mode: publishes waiting for a connection
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
  if (rejected()) {
    sendError(reject_error_, reject_detail_);
    closeAfterFlush(reject_error_, true);
    return;
  }
  owner_.onReady(*this);
  if (phase_ != Phase::Open) return;
  startRead();
  startWrite();
}

void Conn::startRead() {
  if (reading_ || phase_ == Phase::Closed || phase_ == Phase::Handshake) return;
  if (phase_ == Phase::Open && paused_) return;
  if (phase_ != Phase::Open) {  // closing: input is discarded
    rbuf_.clear();
    next_frame_size_ = 0;
  }
  const FrameBuffer::Window w = rbuf_.prepare(next_frame_size_);
  reading_ = true;
  stream_.readSome(asio::buffer(w.data, w.size), [self = shared_from_this()](const asio::error_code& ec, size_t n) {
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
  rbuf_.commit(n);
  last_rx_ = Clock::now();
  processFrames();
}

// Consumes every complete frame in order. A frame is consumed only once the plugin took it,
// so a publish held by back-pressure also holds everything behind it (pings included).
void Conn::processFrames() {
  const Settings& cfg = owner_.settings();
  const uint32_t allowed = server_ ? kFromClients : kFromServer;
  bool consumed = false;
  next_frame_size_ = 0;
  while (phase_ == Phase::Open && !paused_) {
    const Decoded d = decodeFrame(rbuf_.data(), cfg.max_frame_bytes, allowed);
    if (d.status == Decoded::kError) return protocolError(d.error, d.detail);
    if (d.status == Decoded::kNeedMore) {
      next_frame_size_ = d.size;
      break;
    }
    if (owner_.onFrame(*this, d.kind, d.topic, d.payload) == FrameResult::Retry) {
      pause();
      return;
    }
    if (phase_ != Phase::Open) return;  // the frame made the connection close
    retry_delay_ms_ = 0;
    rbuf_.consume(d.size);
    consumed = true;
  }
  if (phase_ != Phase::Open || paused_) return;
  // What is left is one unfinished frame: its bytes count against max_pending_bytes.
  if (!owner_.accountPending(*this, rbuf_.size())) {
    owner_.limitHit(*this, "pending bytes limit",
                    "unfinished frames of all connections would hold more than max_pending_bytes (" +
                        std::to_string(cfg.max_pending_bytes) + ") bytes",
                    true);
    return;
  }
  if (rbuf_.empty())
    disarmFrameTimer();
  else if (consumed || !frame_timer_armed_)
    armFrameTimer();  // a new partial frame began
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
  const size_t n = f.bytes.size;
  out_bytes_ += n;
  if (!f.session_counted) {
    state_->bytes.fetch_add(n);
    f.session_counted = true;
  }
  outq_.push_back(std::move(f));
  startWrite();
}

void Conn::startWrite() {
  if (writing_ || outq_.empty() || (phase_ != Phase::Open && phase_ != Phase::Draining)) return;
  wbufs_.clear();
  size_t total = 0;
  for (size_t i = 0; i < outq_.size(); ++i) {
    const OutFrame& f = outq_[i];
    if (!wbufs_.empty() && (wbufs_.size() >= kMaxBatchFrames || total + f.bytes.size > kMaxBatchBytes)) break;
    wbufs_.push_back(asio::buffer(f.bytes.data.get(), f.bytes.size));
    in_flight_.push_back(f.bytes);
    total += f.bytes.size;
  }
  writing_ = true;
  stream_.write(wbufs_, [self = shared_from_this()](const asio::error_code& ec, size_t) {
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
    out_bytes_ -= f.bytes.size;
    state_->bytes.fetch_sub(f.bytes.size);
    owner_.onWritten(f);
  }
  if (phase_ == Phase::Draining && outq_.empty()) {
    finishDrain();
    return;
  }
  owner_.onDrained(*this);
  startWrite();
}

// Removes the queued frames that are not part of the write in progress.
std::deque<OutFrame> Conn::takeUnsent() {
  std::deque<OutFrame> out;
  const size_t keep = std::min(in_flight_.size(), outq_.size());
  while (outq_.size() > keep) {
    out.push_front(std::move(outq_.back()));
    outq_.pop_back();
    out_bytes_ -= out.front().bytes.size;
    state_->bytes.fetch_sub(out.front().bytes.size);
  }
  return out;
}

void Conn::sendError(std::string_view error, std::string_view detail) {
  push(OutFrame{makeFrame(kError, "", errorJson(error, detail)), nullptr, 0, kError, false, false});
}

void Conn::protocolError(std::string_view error, const std::string& detail) {
  owner_.warnLimited(name() + ": " + std::string(error) + ": " + detail + "; closing the connection");
  sendError(error, detail);
  closeAfterFlush(std::string(error), true);
}

// The connection stops being usable for new work (it is closing). Its unfinished input no
// longer counts; the buffer itself is dropped by the next startRead() (never here: a read in
// progress may still be filling it).
void Conn::leaveOpen() {
  disarmFrameTimer();
  next_frame_size_ = 0;
  owner_.onLeftOpen(*this);
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
  leaveOpen();
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
  const bool was_open = phase_ == Phase::Open;
  phase_ = Phase::Closed;
  if (was_open) leaveOpen();
  asio::error_code ignored;
  stream_.socket().close(ignored);
  ++retry_gen_;
  ++frame_gen_;
  ++close_gen_;
  retry_timer_.cancel();
  frame_timer_.cancel();
  close_timer_.cancel();
  if (!reading_) rbuf_.clear();  // else the read's handler still owns the window (freed with the Conn)
  out_bytes_ = 0;
  std::deque<OutFrame> unsent = outq_.takeAll();
  for (auto& f : unsent) state_->bytes.fetch_sub(f.bytes.size);
  owner_.onClosed(*this, was_ready, reason, std::move(unsent));
}

// ---- TcpPlugin: lifecycle ----------------------------------------------------------------

bool TcpPlugin::setupTls() {
  using asio::ssl::context;
  ssl_ = std::make_unique<context>(cfg_.listen ? context::tls_server : context::tls_client);
  asio::error_code ec;
  ssl_->set_options(
      context::default_workarounds | context::no_sslv2 | context::no_sslv3 | context::no_tlsv1 | context::no_tlsv1_1,
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
    ssl_->set_verify_mode(
        cfg_.listen ? asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert : asio::ssl::verify_peer, ec);
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
  io_ = std::make_unique<asio::io_context>(1);
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
  if (cfg_.listen)
    accept();
  else
    asio::post(*io_, [this] { clientConnect(); });
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
    running_ = false;  // publish/subscribe/close_session post nothing from now on
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
  // The thread is gone. Publishes it never took are failed explicitly.
  {
    std::lock_guard lk(life_mu_);
    for (auto& p : inbox_)
      if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_FAILED);
    inbox_.clear();
    inbox_bytes_ = 0;
    sessions_.clear();
  }
  // Tear down the I/O objects before their io_context.
  conns_.clear();
  rejecting_.clear();
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

std::vector<std::shared_ptr<Conn>> TcpPlugin::allConns() {
  std::vector<std::shared_ptr<Conn>> all;
  for (auto& [id, c] : conns_) all.push_back(c);
  for (auto& c : rejecting_) all.push_back(c);
  if (client_) all.push_back(client_);
  return all;
}

void TcpPlugin::beginStop() {
  drainInbox();  // publishes taken before stop() are queued (and flushed below) in order
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
  for (auto& c : allConns()) c->closeAfterFlush("the gateway is stopping", false);
  failPending();
  checkDrained();
}

void TcpPlugin::hardStop() {
  beginStop();
  for (auto& c : allConns()) c->close("the gateway stopped");
  failPending();
}

void TcpPlugin::checkDrained() {
  if (!stopping_ || !conns_.empty() || !rejecting_.empty() || client_) return;
  {
    std::lock_guard lk(stop_mu_);
    drained_ = true;
  }
  stop_cv_.notify_all();
}

// ---- TcpPlugin: host calls ---------------------------------------------------------------

fg_status TcpPlugin::publish(const fg_message& msg, uint64_t delivery_id) {
  const std::string_view topic = view(msg.topic), payload = view(msg.payload);
  if (topic.size() > kMaxTopicBytes) {
    host_.warn("tcp: publish refused: the topic is " + std::to_string(topic.size()) +
               " bytes, at most 65535 fit a frame");
    return FG_ERR_INVALID_ARG;
  }
  const uint64_t rest = 3 + uint64_t(topic.size()) + payload.size();
  if (rest > cfg_.max_frame_bytes) {
    host_.warn("tcp: publish on '" + printable(topic) + "' refused: length-of-rest " + std::to_string(rest) +
               " exceeds max_frame_bytes " + std::to_string(cfg_.max_frame_bytes));
    return FG_ERR_INVALID_ARG;
  }
  // The frame is built outside the lock (the copy of the payload is the one cost that grows
  // with the message); a FG_RETRY below throws it away, which only happens under back-pressure.
  FrameBytes frame = makeFrame(kPublish, topic, payload);
  const size_t size = frame.size;
  const uint64_t session = cfg_.listen ? msg.session : 0;
  std::lock_guard lk(life_mu_);
  if (!running_) return FG_ERR_STATE;
  if (session != 0) {
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return FG_ERR_STATE;  // no such session (closed, or closing)
    SessionState& s = *it->second;
    const size_t limit = cfg_.session_buffer_bytes;
    if (s.bytes.load() >= limit) {
      // Ask for a wake-up, then look again: the I/O thread drains and then reads the flag
      // (both sequentially consistent), so either it sees the flag or this sees the room.
      s.wants_wakeup.store(true);
      if (s.bytes.load() >= limit) return FG_RETRY;
    }
    s.bytes.fetch_add(size);
  } else if (cfg_.listen) {
    if (inbox_bytes_ > 0 && inbox_bytes_ + size > cfg_.max_outbound_bytes) return FG_RETRY;
    inbox_bytes_ += size;
  } else {
    const size_t used = client_bytes_.load();
    if (used > 0 && used + size > cfg_.max_outbound_bytes) return FG_RETRY;
    client_bytes_ += size;
  }
  inbox_.push_back(Posted{std::move(frame), session, delivery_id});
  if (!inbox_scheduled_) {
    inbox_scheduled_ = true;
    asio::post(*io_, asio::bind_allocator(SlotAllocator<void>(&drain_slot_), [this] { drainInbox(); }));
  }
  return FG_OK;
}

void TcpPlugin::drainInbox() {
  {
    std::lock_guard lk(life_mu_);
    inbox_work_.swap(inbox_);
    inbox_bytes_ = 0;
    inbox_scheduled_ = false;
  }
  for (auto& p : inbox_work_) {
    if (cfg_.listen)
      serverDeliver(p);
    else
      clientSend(p);
  }
  inbox_work_.clear();
  if (inbox_work_.capacity() > 65536) std::vector<Posted>().swap(inbox_work_);  // after a burst
}

fg_status TcpPlugin::subscribe(std::string_view filter, uint64_t sub_id) {
  if (cfg_.listen) return FG_OK;  // sessions: every client publish reaches the host with sub_id 0
  if (!isValidFilter(filter) || filter.size() > kMaxTopicBytes) return FG_ERR_INVALID_ARG;
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

fg_status TcpPlugin::closeSession(uint64_t session, const char* reason) {
  if (!cfg_.listen) return FG_ERR_UNSUPPORTED;  // connect mode has no sessions
  std::lock_guard lk(life_mu_);
  if (!running_) return FG_ERR_STATE;
  // From now on publishes to it answer FG_ERR_STATE; what was published before is processed
  // first (the inbox drain was posted earlier), then failed by the close.
  if (sessions_.erase(session) == 0) return FG_ERR_STATE;
  asio::post(*io_, [this, session, r = std::string(reason ? reason : "")] { serverCloseSession(session, r); });
  return FG_OK;
}

// ---- TcpPlugin: shared io-thread paths ---------------------------------------------------

FrameResult TcpPlugin::onFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload) {
  return c.server_ ? serverFrame(c, kind, topic, payload) : clientFrame(c, kind, topic, payload);
}

void TcpPlugin::onReady(Conn& c) {
  if (c.server_) {
    {
      std::lock_guard lk(life_mu_);
      sessions_[c.session_] = c.state_;
    }
    host_.debug("tcp: " + c.name() + " opened");
    host_.onSession(c.session_, FG_SESSION_OPENED);
  } else {
    clientReady(c);
  }
}

void TcpPlugin::onWritten(OutFrame& f) {
  if (f.counted) client_bytes_ -= f.bytes.size;
  settle(f, true);
}

// After a write: a session that answered FG_RETRY and drained below half its buffer can take
// more.
void TcpPlugin::onDrained(Conn& c) {
  if (!c.server_ || c.phase_ != Phase::Open) return;
  SessionState& s = *c.state_;
  if (s.wants_wakeup.load() && s.bytes.load() < cfg_.session_buffer_bytes / 2 && s.wants_wakeup.exchange(false))
    host_.sessionWritable(c.session_);
}

// The connection is closing: publishes can no longer target it, its unfinished input is gone.
void TcpPlugin::onLeftOpen(Conn& c) {
  releasePending(c);
  if (c.server_ && !c.rejected()) {
    std::lock_guard lk(life_mu_);
    auto it = sessions_.find(c.session_);
    if (it != sessions_.end() && it->second == c.state_) sessions_.erase(it);
  }
}

bool TcpPlugin::accountPending(Conn& c, size_t now) {
  if (now <= c.pending_counted_) {
    pending_total_ -= c.pending_counted_ - now;
  } else {
    const size_t more = now - c.pending_counted_;
    if (pending_total_ + more > cfg_.max_pending_bytes) return false;
    pending_total_ += more;
  }
  c.pending_counted_ = now;
  return true;
}

// A limit of this endpoint was hit by one connection: a rate-limited warning, an error frame,
// and (close) the connection is closed after it.
void TcpPlugin::limitHit(Conn& c, std::string_view error, const std::string& detail, bool close) {
  warnLimited(c.name() + ": " + std::string(error) + ": " + detail + (close ? "; closing the connection" : ""));
  c.sendError(error, detail);
  if (close) c.closeAfterFlush(std::string(error), true);
}

void TcpPlugin::settle(OutFrame& f, bool written) {
  if (f.tracker) {
    auto t = std::move(f.tracker);
    fg_delivery st;
    if (t->settle(written, FG_DELIVERY_FAILED, st)) host_.onDelivery(t->delivery_id, st);
  } else if (f.delivery_id) {
    host_.onDelivery(f.delivery_id, written ? FG_DELIVERY_OK : FG_DELIVERY_FAILED);
    f.delivery_id = 0;
  }
}

void TcpPlugin::onClosed(Conn& c, bool was_ready, const std::string& reason, std::deque<OutFrame> unsent) {
  if (c.server_) {
    for (auto& f : unsent) settle(f, false);
    if (c.rejected()) {
      host_.debug("tcp: " + c.name() + " closed: " + reason);
      rejecting_.erase(c.shared_from_this());
      checkDrained();
      return;
    }
    conns_.erase(c.session_);
    if (auto it = per_ip_.find(c.addr_); it != per_ip_.end() && --it->second == 0) per_ip_.erase(it);
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
    if (it->kind == kPublish) {
      it->session_counted = false;  // counted again by the next connection's push
      pending_.push_front(std::move(*it));
    }
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
    admit(std::move(sock));
    accept();
  });
}

// A new connection becomes a session, or is refused by max_connections /
// max_connections_per_ip with an error frame.
void TcpPlugin::admit(tcp::socket sock) {
  asio::error_code ignored;
  sock.set_option(tcp::no_delay(true), ignored);
  const tcp::endpoint remote = sock.remote_endpoint(ignored);
  const std::string peer = endpointText(remote);
  const asio::ip::address addr = remote.address();
  std::string refused;
  if (conns_.size() >= cfg_.max_connections) {
    refused = "max_connections (" + std::to_string(cfg_.max_connections) + ") reached on this endpoint";
  } else if (auto it = per_ip_.find(addr); it != per_ip_.end() && it->second >= cfg_.max_connections_per_ip) {
    refused =
        "max_connections_per_ip (" + std::to_string(cfg_.max_connections_per_ip) + ") reached for " + addr.to_string();
  }
  if (!refused.empty()) {
    if (rejecting_.size() >= kMaxRejecting) {
      warnLimited("connection from " + peer + " refused: " + refused +
                  " (too many refusals in progress: closed without an error frame)");
      sock.close(ignored);
      return;
    }
    warnLimited("connection from " + peer + " refused: too many connections: " + refused);
    auto c = std::make_shared<Conn>(*this, ssl_ ? Stream(std::move(sock), *ssl_) : Stream(std::move(sock)), 0, true,
                                    peer, addr);
    c->reject("too many connections", refused);
    rejecting_.insert(c);
    c->start();
    return;
  }
  const uint64_t id = next_session_++;
  ++per_ip_[addr];
  auto c = std::make_shared<Conn>(*this, ssl_ ? Stream(std::move(sock), *ssl_) : Stream(std::move(sock)), id, true,
                                  peer, addr);
  conns_[id] = c;
  c->start();
}

FrameResult TcpPlugin::serverFrame(Conn& c, uint8_t kind, std::string_view topic, std::string_view payload) {
  switch (kind) {
    case kPublish: {
      const auto now_ms = std::chrono::duration_cast<Ms>(std::chrono::system_clock::now().time_since_epoch()).count();
      const fg_message m{str(topic), str(payload), nullptr, 0, static_cast<int64_t>(now_ms), c.session_};
      const fg_status st = host_.onMessage(0, m);
      if (st == FG_RETRY) return FrameResult::Retry;
      if (st != FG_OK)
        warnLimited(c.name() + ": the host refused a publish on '" + printable(topic) + "' (status " +
                    std::to_string(st) + ")");
      return FrameResult::Done;
    }
    case kSubscribe: {
      if (!isValidFilter(topic)) {
        c.sendError("invalid filter", "'" + printable(topic) + "' is not a valid filter");
        return FrameResult::Done;
      }
      if (c.filters_.find(topic) != c.filters_.end()) return FrameResult::Done;  // already subscribed
      if (c.filters_.size() >= cfg_.max_subscriptions) {
        limitHit(c, "too many subscriptions",
                 "max_subscriptions (" + std::to_string(cfg_.max_subscriptions) + ") reached; '" + printable(topic) +
                     "' was not subscribed",
                 false);
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
      if (auto it = c.filters_.find(topic); it != c.filters_.end()) c.filters_.erase(it);
      return FrameResult::Done;
    case kPing:
      // A pong is a control frame: it is never refused for a full buffer (a client that pings
      // reads; one that does not is bounded by the host's close_session).
      c.push(OutFrame{makeFrame(kPong, topic, payload), nullptr, 0, kPong, false, false});
      return FrameResult::Done;
    default:
      return FrameResult::Done;  // decodeFrame() refused the rest
  }
}

// A broadcast copy for one subscriber. A broadcast cannot be retried per session, so it is
// queued beyond session_buffer_bytes; a connection whose buffer would pass max_outbound_bytes
// with it is closed as a slow consumer (what it held is failed).
void TcpPlugin::pushBroadcast(Conn& c, OutFrame f) {
  if (c.phase_ != Phase::Open) {
    settle(f, false);
    return;
  }
  if (c.out_bytes_ > 0 && c.out_bytes_ + f.bytes.size > cfg_.max_outbound_bytes) {
    settle(f, false);
    for (auto& u : c.takeUnsent()) settle(u, false);
    limitHit(c, "slow consumer",
             "the outbound buffer exceeded max_outbound_bytes (" + std::to_string(cfg_.max_outbound_bytes) +
                 ") with broadcasts; closing the connection",
             true);
    return;
  }
  c.push(std::move(f));
}

void TcpPlugin::serverDeliver(Posted& p) {
  if (stopping_) {
    if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_FAILED);
    return;
  }
  if (p.session != 0) {
    auto it = conns_.find(p.session);
    if (it == conns_.end()) {  // closed after publish() looked (its SessionState went with it)
      if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_FAILED);
      return;
    }
    Conn& c = *it->second;
    if (c.phase_ != Phase::Open) {  // closing
      c.state_->bytes.fetch_sub(p.bytes.size);
      if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_FAILED);
      return;
    }
    c.push(OutFrame{std::move(p.bytes), nullptr, p.delivery_id, kPublish, false, true});
    return;
  }
  const std::string_view topic = p.bytes.topic();
  targets_.clear();
  for (auto& [id, c] : conns_)
    if (c->phase_ == Phase::Open && c->matches(topic)) targets_.push_back(c.get());
  if (targets_.empty()) {  // accepted, but nobody was there to take it
    if (p.delivery_id) host_.onDelivery(p.delivery_id, FG_DELIVERY_NO_RECEIVER);
    return;
  }
  if (targets_.size() == 1) {
    pushBroadcast(*targets_.front(), OutFrame{std::move(p.bytes), nullptr, p.delivery_id, kPublish, false, false});
    return;
  }
  std::shared_ptr<Tracker> tracker;
  if (p.delivery_id) tracker = std::make_shared<Tracker>(Tracker{p.delivery_id, targets_.size(), 0});
  // Closing one target (slow consumer) never touches the others, so the raw pointers hold.
  for (Conn* c : targets_) pushBroadcast(*c, OutFrame{p.bytes, tracker, 0, kPublish, false, false});
}

// close_session: the host gave up on a session (a slow consumer, a limit of its own).
void TcpPlugin::serverCloseSession(uint64_t session, const std::string& reason) {
  auto it = conns_.find(session);
  if (it == conns_.end() || it->second->phase_ != Phase::Open) return;
  auto c = it->second;
  const CloseReason r = splitCloseReason(reason);
  size_t failed = 0;
  for (auto& u : c->takeUnsent()) {
    failed += u.kind == kPublish;
    settle(u, false);
  }
  warnLimited(c->name() +
              ": closed by the gateway: " + (reason.empty() ? std::string(r.error) : printable(reason, 1024)) + " (" +
              std::to_string(failed) + " queued message(s) not delivered)");
  c->sendError(r.error, r.detail.empty() ? std::string_view("closed by the gateway") : r.detail);
  c->closeAfterFlush(std::string(r.error), true);
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
        asio::async_connect(
            *sock, results, [this, gen, sock, timed_out](const asio::error_code& e, const tcp::endpoint&) {
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
              auto c = std::make_shared<Conn>(*this, ssl_ ? Stream(std::move(*sock), *ssl_) : Stream(std::move(*sock)),
                                              0, false, cfg_.address.text());
              if (auto* tls = c->stream_.tls()) {
                if (cfg_.tls_verify)
                  tls->set_verify_callback(asio::ssl::host_name_verification(cfg_.address.host), ignored);
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
  const double base =
      std::min<double>(cfg_.reconnect_max_ms, double(kBackoffMinMs) * double(1u << std::min(attempt_, 20u)));
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
  for (const auto& f : filters) c.push(OutFrame{makeFrame(kSubscribe, f, ""), nullptr, 0, kSubscribe, false, false});
  c.push(OutFrame{makeFrame(kPing, "", restore_token_), nullptr, 0, kPing, false, false});
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
      c.push(OutFrame{makeFrame(kPong, topic, payload), nullptr, 0, kPong, false, false});
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

void TcpPlugin::clientSend(Posted& p) {
  OutFrame f{std::move(p.bytes), nullptr, p.delivery_id, kPublish, true, false};
  if (client_ && client_->phase_ == Phase::Open) {
    client_->push(std::move(f));
    return;
  }
  pending_.push_back(std::move(f));
  if (stopping_) failPending();
}

void TcpPlugin::clientControl(uint8_t kind, const std::string& filter) {
  if (client_ && client_->phase_ == Phase::Open)
    client_->push(OutFrame{makeFrame(kind, filter, ""), nullptr, 0, kind, false, false});
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
    client_->push(OutFrame{makeFrame(kPing, "", "keepalive"), nullptr, 0, kPing, false, false});
    armKeepalive();
  });
}

void TcpPlugin::failPending() {
  while (!pending_.empty()) {
    OutFrame f = std::move(pending_.front());
    pending_.pop_front();
    if (f.counted) client_bytes_ -= f.bytes.size;
    settle(f, false);
  }
}

}  // namespace
}  // namespace fingate

FG_DEFINE_PLUGIN(fingate::TcpPlugin, "tcp", "0.2.0", FG_CAP_SESSIONS | FG_CAP_DELIVERY, FG_TCP_KEYS)
