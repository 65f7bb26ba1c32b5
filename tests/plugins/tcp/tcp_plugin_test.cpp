// Tests of libfingate-tcp.so through the C ABI: real sockets on 127.0.0.1, real plugin
// instances (listen and connect mode talking to each other), a real TLS certificate made
// with `openssl req`. No timing assertions: every wait is bounded and polls for a condition.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"

namespace fingate::test {
namespace {

using Cfg = std::vector<std::pair<std::string, std::string>>;

std::shared_ptr<PluginLibrary> tcpLib() {
  static std::shared_ptr<PluginLibrary> lib = loadBuiltPlugin("tcp");
  return lib;
}

// One plugin instance with its own recording host (the host outlives the instance).
struct Node {
  explicit Node(const Cfg& cfg) : inst(std::make_unique<PluginInstance>(tcpLib(), host, cfg)) {}
  RecordingHost host;
  std::unique_ptr<PluginInstance> inst;
  int port = 0;

  fg_status publish(const std::string& topic, const std::string& payload, uint64_t session = 0,
                    uint64_t delivery_id = 0) {
    fg_message m{{topic.data(), topic.size()}, {payload.data(), payload.size()}, nullptr, 0, 0, session};
    return inst->publish(m, delivery_id);
  }
  // Publishes, retrying while the plugin answers FG_RETRY (bounded).
  fg_status publishRetrying(const std::string& topic, const std::string& payload, uint64_t session = 0,
                            uint64_t delivery_id = 0) {
    fg_status st = FG_RETRY;
    for (int i = 0; i < 5000 && st == FG_RETRY; ++i) {
      st = publish(topic, payload, session, delivery_id);
      if (st == FG_RETRY) std::this_thread::sleep_for(1ms);
    }
    return st;
  }
  bool hasLog(const std::string& needle) {
    for (auto& l : host.logs())
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }
  bool hasSession(uint64_t id, fg_session_event ev) {
    for (auto& [s, e] : host.sessions())
      if (s == id && e == ev) return true;
    return false;
  }
  std::optional<fg_delivery> delivery(uint64_t id) {
    auto d = host.deliveries();
    auto it = d.find(id);
    if (it == d.end()) return std::nullopt;
    return it->second;
  }
};

std::unique_ptr<Node> startListener(const Cfg& extra = {}, const std::string& listen = "127.0.0.1:0") {
  Cfg cfg{{"listen", listen}};
  cfg.insert(cfg.end(), extra.begin(), extra.end());
  auto n = std::make_unique<Node>(cfg);
  EXPECT_EQ(n->inst->start(), FG_OK);
  EXPECT_TRUE(n->host.waitState(FG_STATE_UP));
  n->port = portFromLine(n->host.stateDetail(FG_STATE_UP));
  EXPECT_GT(n->port, 0) << n->host.stateDetail(FG_STATE_UP);
  return n;
}

// The session id of a connected client: it publishes once and the host reports the session.
uint64_t sessionOf(FrameClient& c, Node& n, const std::string& tag) {
  EXPECT_TRUE(c.publish("whoami", tag));
  auto m = n.host.next();
  EXPECT_TRUE(m.has_value());
  if (!m) return 0;
  EXPECT_EQ(m->payload, tag);
  return m->session;
}

// True when nothing but the barrier's pong arrives (what was sent before the barrier is in).
bool nothingPending(FrameClient& c) {
  if (!c.barrier()) return false;
  return !c.recv(20ms).has_value();
}

std::string rawHeader(uint32_t rest, uint8_t kind, uint16_t topic_len) {
  std::string s;
  s.push_back(char(rest >> 24));
  s.push_back(char(rest >> 16));
  s.push_back(char(rest >> 8));
  s.push_back(char(rest));
  s.push_back(char(kind));
  s.push_back(char(topic_len >> 8));
  s.push_back(char(topic_len));
  return s;
}

// ---- listen mode -------------------------------------------------------------------------

TEST(TcpListen, DescriptorDeclaresKeysAndCapabilities) {
  auto lib = tcpLib();
  EXPECT_EQ(lib->name(), "tcp");
  EXPECT_EQ(lib->capabilities() & (FG_CAP_SESSIONS | FG_CAP_DELIVERY), FG_CAP_SESSIONS | FG_CAP_DELIVERY);
  for (const char* k : {"listen", "connect", "max_frame_bytes", "session_buffer_bytes", "max_outbound_bytes",
                        "max_connections", "max_connections_per_ip", "max_pending_bytes", "max_subscriptions",
                        "reconnect_max_ms", "frame_timeout_ms", "keepalive_ms", "tls.enabled", "tls.cert_file",
                        "tls.key_file", "tls.ca_file", "tls.verify"})
    EXPECT_TRUE(lib->acceptsKey(k)) << k;
  EXPECT_NE(lib->descriptor().close_session, nullptr);
  EXPECT_FALSE(lib->acceptsKey("tls.bogus"));
  EXPECT_FALSE(lib->acceptsKey("url"));
}

TEST(TcpListen, ReportsBoundPortAndAcceptsClients) {
  auto n = startListener();
  EXPECT_NE(n->host.stateDetail(FG_STATE_UP).find("listening on 127.0.0.1:"), std::string::npos);
  FrameClient c(n->port);
  ASSERT_TRUE(c.connected());
  EXPECT_TRUE(c.barrier());
}

// Reads exactly n bytes from fd (bounded wait); fewer on timeout or close.
std::string readExactly(int fd, size_t n, std::chrono::milliseconds timeout = 5s) {
  std::string out;
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (out.size() < n) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, int(left.count())) <= 0) break;
    char buf[4096];
    const ssize_t got = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
    if (got <= 0) break;
    out.append(buf, size_t(got));
  }
  return out;
}

// The exact bytes the gateway writes for a register on "soarca": the hex dump in
// docs/transports.md ("Example: a register frame") is this frame.
TEST(TcpListen, RegisterFrameBytesMatchTheDocumentedDump) {
  auto n = startListener();
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(n->port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const std::string hello = FrameClient::encode(FrameClient::Subscribe, "soarca", "") + FrameClient::encode(FrameClient::Ping, "", "b");
  ASSERT_EQ(::send(fd, hello.data(), hello.size(), 0), ssize_t(hello.size()));
  EXPECT_EQ(readExactly(fd, 8), std::string("\x00\x00\x00\x04\x05\x00\x00" "b", 8));  // the pong
  const std::string reg = vectorBytes("01-a-register.json");
  ASSERT_EQ(reg.size(), 928u);
  ASSERT_EQ(n->publish("soarca", reg), FG_OK);
  const std::string frame = readExactly(fd, 941);
  ::close(fd);
  ASSERT_EQ(frame.size(), 941u);
  // 00 00 03 a9 | 01 | 00 06 | "soarca" | payload
  EXPECT_EQ(frame.substr(0, 13), std::string("\x00\x00\x03\xa9\x01\x00\x06soarca", 13));
  EXPECT_EQ(frame.substr(13), reg);
}

TEST(TcpListen, ClientPublishReachesHostWithSession) {
  auto n = startListener();
  FrameClient c1(n->port), c2(n->port);
  const std::string reg = vectorBytes("01-a-register.json");
  ASSERT_FALSE(reg.empty());
  ASSERT_TRUE(c1.publish("soarca", reg));
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->topic, "soarca");
  EXPECT_EQ(m->payload, reg);  // bytes unchanged
  EXPECT_EQ(m->sub_id, 0u);
  EXPECT_NE(m->session, 0u);
  const uint64_t s2 = sessionOf(c2, *n, "from-c2");
  EXPECT_NE(s2, 0u);
  EXPECT_NE(s2, m->session);
  EXPECT_TRUE(n->hasSession(m->session, FG_SESSION_OPENED));
  // Empty topic and empty payload are legal frames.
  ASSERT_TRUE(c1.publish("", ""));
  auto e = n->host.next();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->topic, "");
  EXPECT_EQ(e->payload, "");
}

TEST(TcpListen, SessionOpenAndCloseEvents) {
  auto n = startListener();
  auto c = std::make_unique<FrameClient>(n->port);
  const uint64_t id = sessionOf(*c, *n, "hello");
  ASSERT_NE(id, 0u);
  EXPECT_TRUE(n->hasSession(id, FG_SESSION_OPENED));
  EXPECT_FALSE(n->hasSession(id, FG_SESSION_CLOSED));
  c.reset();
  EXPECT_TRUE(waitFor([&] { return n->hasSession(id, FG_SESSION_CLOSED); }));
  // A new connection never reuses the id.
  FrameClient c2(n->port);
  const uint64_t id2 = sessionOf(c2, *n, "again");
  EXPECT_NE(id2, 0u);
  EXPECT_NE(id2, id);
}

TEST(TcpListen, BroadcastReachesOnlyMatchingSubscribers) {
  auto n = startListener();
  FrameClient a(n->port), b(n->port), none(n->port);
  ASSERT_TRUE(a.subscribe("soarca"));
  ASSERT_TRUE(a.subscribe("#"));  // overlaps: still one copy per connection
  ASSERT_TRUE(b.subscribe("fins/+"));
  ASSERT_TRUE(a.barrier());
  ASSERT_TRUE(b.barrier());
  ASSERT_TRUE(none.barrier());

  ASSERT_EQ(n->publish("soarca", "to-soarca", 0, 101), FG_OK);
  auto f = a.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->kind, FrameClient::Publish);
  EXPECT_EQ(f->topic, "soarca");
  EXPECT_EQ(f->payload, "to-soarca");
  EXPECT_TRUE(nothingPending(a));  // exactly once
  EXPECT_TRUE(nothingPending(b));
  EXPECT_TRUE(nothingPending(none));
  EXPECT_TRUE(waitFor([&] { return n->delivery(101) == FG_DELIVERY_OK; }));

  ASSERT_EQ(n->publish("fins/x", "to-fins"), FG_OK);
  auto fa = a.recv(), fb = b.recv();
  ASSERT_TRUE(fa);
  ASSERT_TRUE(fb);
  EXPECT_EQ(fb->topic, "fins/x");
  EXPECT_EQ(fb->payload, "to-fins");
  EXPECT_TRUE(nothingPending(none));

  // A broadcast nobody subscribed to: nothing to deliver, the delivery is still settled.
  ASSERT_TRUE(b.send(FrameClient::Unsubscribe, "fins/+"));
  ASSERT_TRUE(b.barrier());
  ASSERT_EQ(n->publish("fins/y", "nobody-but-a", 0, 102), FG_OK);
  EXPECT_TRUE(a.recv().has_value());
  EXPECT_TRUE(nothingPending(b));  // unsubscribed
  EXPECT_TRUE(waitFor([&] { return n->delivery(102) == FG_DELIVERY_OK; }));
}

TEST(TcpListen, SessionTargetedPublishReachesOnlyThatSession) {
  auto n = startListener();
  FrameClient c1(n->port), c2(n->port);
  ASSERT_TRUE(c1.subscribe("fin-7"));  // subscribed, but the publish targets c2's session
  ASSERT_TRUE(c1.barrier());
  const uint64_t s2 = sessionOf(c2, *n, "c2");
  ASSERT_NE(s2, 0u);
  ASSERT_EQ(n->publish("fin-7", "only-for-c2", s2, 201), FG_OK);
  auto f = c2.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->kind, FrameClient::Publish);
  EXPECT_EQ(f->topic, "fin-7");
  EXPECT_EQ(f->payload, "only-for-c2");
  EXPECT_TRUE(nothingPending(c1));
  EXPECT_TRUE(waitFor([&] { return n->delivery(201) == FG_DELIVERY_OK; }));
}

// ABI 1.1: a publish to a session that is not there (never was, or closed) is refused at once
// with FG_ERR_STATE; nothing is reported later.
TEST(TcpListen, UnknownSessionIsRefusedWithErrState) {
  auto n = startListener();
  EXPECT_EQ(n->publish("fin-7", "nobody", 987654, 301), FG_ERR_STATE);
  auto c = std::make_unique<FrameClient>(n->port);
  const uint64_t id = sessionOf(*c, *n, "x");
  c.reset();
  ASSERT_TRUE(waitFor([&] { return n->hasSession(id, FG_SESSION_CLOSED); }));
  EXPECT_EQ(n->publish("fin-7", "late", id, 302), FG_ERR_STATE);
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(n->delivery(301).has_value());
  EXPECT_FALSE(n->delivery(302).has_value());
}

// ABI 1.1: a broadcast that no connection is subscribed to is accepted and reported
// FG_DELIVERY_NO_RECEIVER (the host dead-letters it); with a subscriber it is OK.
TEST(TcpListen, BroadcastWithoutSubscriberIsNoReceiver) {
  auto n = startListener();
  FrameClient c(n->port);
  ASSERT_TRUE(c.barrier());
  EXPECT_EQ(n->publish("nobody/listens", "x", 0, 77), FG_OK);
  EXPECT_TRUE(waitFor([&] { return n->delivery(77).has_value(); }));
  EXPECT_EQ(n->delivery(77), FG_DELIVERY_NO_RECEIVER);
  EXPECT_EQ(n->publish("nobody/listens", "no id wanted"), FG_OK);
  ASSERT_TRUE(c.subscribe("nobody/#"));
  ASSERT_TRUE(c.barrier());
  EXPECT_EQ(n->publish("nobody/listens", "y", 0, 78), FG_OK);
  auto f = c.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->payload, "y");
  EXPECT_TRUE(waitFor([&] { return n->delivery(78) == FG_DELIVERY_OK; }));
}

TEST(TcpListen, RefusedSubscribeSendsErrorAndKeepsConnection) {
  auto n = startListener();
  std::atomic<uint64_t> asked_session{0};
  n->host.authorize = [&](uint64_t session, std::string_view filter, std::string& reason) -> fg_status {
    asked_session = session;
    if (filter == "bound-elsewhere") {
      reason = "capability \"bound-elsewhere\" is bound to another session";
      return FG_ERR_STATE;
    }
    return FG_OK;
  };
  FrameClient c(n->port);
  const uint64_t id = sessionOf(c, *n, "me");
  ASSERT_TRUE(c.subscribe("bound-elsewhere"));
  auto e = c.recv();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, FrameClient::Error);
  EXPECT_EQ(e->payload,
            R"({"error":"subscribe refused","detail":"capability \"bound-elsewhere\" is bound to another session"})");
  EXPECT_EQ(asked_session.load(), id);
  // Still usable: not subscribed to the refused filter, publishes and other subscriptions work.
  ASSERT_TRUE(c.barrier());
  ASSERT_EQ(n->publish("bound-elsewhere", "must-not-arrive"), FG_OK);
  EXPECT_TRUE(nothingPending(c));
  ASSERT_TRUE(c.subscribe("mine"));
  ASSERT_TRUE(c.barrier());
  ASSERT_EQ(n->publish("mine", "arrives"), FG_OK);
  auto f = c.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->payload, "arrives");
  ASSERT_TRUE(c.publish("soarca", "still-here"));
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "still-here");
  // An invalid filter is refused the same way, before the host is asked.
  ASSERT_TRUE(c.subscribe("a/#/b"));
  auto inv = c.recv();
  ASSERT_TRUE(inv);
  EXPECT_EQ(inv->kind, FrameClient::Error);
  EXPECT_NE(inv->payload.find(R"("error":"invalid filter")"), std::string::npos);
  EXPECT_TRUE(c.barrier());
}

TEST(TcpListen, PingPongEchoesTopicAndPayload) {
  auto n = startListener();
  FrameClient c(n->port);
  const std::string payload("echo\0me", 7);
  ASSERT_TRUE(c.send(FrameClient::Ping, "some/topic", payload));
  auto f = c.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->kind, FrameClient::Pong);
  EXPECT_EQ(f->topic, "some/topic");
  EXPECT_EQ(f->payload, payload);
}

TEST(TcpListen, BackPressureRetriesInOrderAndPongWaits) {
  auto n = startListener();
  FrameClient c(n->port);
  ASSERT_TRUE(c.barrier());
  n->host.retry_budget = 25;  // the host answers FG_RETRY 25 times
  ASSERT_TRUE(c.publish("t", "m1"));
  ASSERT_TRUE(c.publish("t", "m2"));
  ASSERT_TRUE(c.barrier());
  // The pong came, so both publishes must already be with the host, in order, once each.
  EXPECT_EQ(n->host.retry_budget.load(), 0);
  auto a = n->host.next(0ms);
  auto b = n->host.next(0ms);
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->payload, "m1");
  EXPECT_EQ(b->payload, "m2");
  EXPECT_FALSE(n->host.next(100ms).has_value());
}

struct BadFrame {
  const char* name;
  std::string bytes;
  const char* error;
};

TEST(TcpListen, FramingErrorsCloseOnlyThatConnection) {
  auto n = startListener({{"max_frame_bytes", "1024"}});
  FrameClient good(n->port);
  const uint64_t good_id = sessionOf(good, *n, "good");
  const std::vector<BadFrame> cases = {
      {"short length", rawHeader(2, 1, 0).substr(0, 6), "frame too short"},
      {"oversized", rawHeader(2000, 1, 0) + std::string(100, 'x'), "frame too large"},
      {"topic past frame", rawHeader(5, 1, 10) + "ab", "topic length past frame"},
      {"unknown kind", rawHeader(3, 9, 0), "unknown kind"},
      {"client sends pong", rawHeader(3, 5, 0), "unknown kind"},
      {"client sends error", rawHeader(3, 6, 0), "unknown kind"},
  };
  for (const auto& bad : cases) {
    SCOPED_TRACE(bad.name);
    FrameClient c(n->port);
    const uint64_t id = sessionOf(c, *n, std::string("bad-") + bad.name);
    ASSERT_TRUE(c.sendRaw(bad.bytes));
    auto e = c.recv();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind, FrameClient::Error);
    EXPECT_NE(e->payload.find(std::string(R"({"error":")") + bad.error + "\""), std::string::npos) << e->payload;
    EXPECT_NE(e->payload.find(R"("detail":")"), std::string::npos) << e->payload;
    EXPECT_TRUE(c.waitClosed());
    c.close();  // the gateway half-closed and waits (bounded) for our EOF
    EXPECT_TRUE(waitFor([&] { return n->hasSession(id, FG_SESSION_CLOSED); }));
    // The other client is unaffected.
    ASSERT_TRUE(good.publish("soarca", bad.name));
    auto m = n->host.next();
    ASSERT_TRUE(m);
    EXPECT_EQ(m->payload, bad.name);
    EXPECT_EQ(m->session, good_id);
    EXPECT_TRUE(good.barrier());
  }
  EXPECT_FALSE(n->hasSession(good_id, FG_SESSION_CLOSED));
  EXPECT_TRUE(n->hasLog("frame too large"));
}

TEST(TcpListen, HalfSentFrameTimesOut) {
  auto n = startListener({{"frame_timeout_ms", "300"}});
  FrameClient good(n->port);
  FrameClient c(n->port);
  const uint64_t id = sessionOf(c, *n, "slowloris");
  ASSERT_TRUE(c.sendRaw(rawHeader(100, 1, 0) + "only-part"));
  auto e = c.recv(5s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, FrameClient::Error);
  EXPECT_NE(e->payload.find(R"("error":"frame timeout")"), std::string::npos) << e->payload;
  EXPECT_TRUE(c.waitClosed());
  EXPECT_TRUE(waitFor([&] { return n->hasSession(id, FG_SESSION_CLOSED); }));
  // A connection that is merely idle (no partial frame) is left alone.
  std::this_thread::sleep_for(500ms);
  EXPECT_TRUE(good.barrier());
}

TEST(TcpListen, LargeFramesCrossManyReads) {
  auto n = startListener();
  FrameClient c(n->port);
  std::string big(700 * 1024, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char(i * 131 + 7);
  ASSERT_TRUE(c.publish("big", big));
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, big);
  ASSERT_EQ(n->publish("big", big, m->session, 401), FG_OK);
  auto f = c.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->payload, big);
  EXPECT_TRUE(waitFor([&] { return n->delivery(401) == FG_DELIVERY_OK; }));
  // Larger than max_frame_bytes: refused at publish, never sent.
  EXPECT_EQ(n->publish("big", std::string(2 * 1024 * 1024, 'x'), m->session), FG_ERR_INVALID_ARG);
}

// Broadcasts cannot be retried per session: a subscriber whose buffer would pass
// max_outbound_bytes with them is closed by the plugin as a slow consumer.
TEST(TcpListen, SlowBroadcastSubscriberIsClosedWithErrorFrame) {
  auto n = startListener({{"max_outbound_bytes", "65536"}});
  FrameClient slow(n->port), other(n->port);
  ASSERT_TRUE(slow.subscribe("flood"));
  ASSERT_TRUE(slow.barrier());
  const uint64_t slow_id = sessionOf(slow, *n, "slow");
  const std::string chunk(16 * 1024, 'f');
  uint64_t last_id = 0;
  for (uint64_t i = 1; i <= 8000 && !n->hasLog("slow consumer"); ++i) {
    ASSERT_EQ(n->publishRetrying("flood", chunk, 0, 1000 + i), FG_OK);
    last_id = 1000 + i;
  }
  ASSERT_TRUE(waitFor([&] { return n->hasLog("slow consumer"); }));
  // The client reads now: everything the sockets held, then the error frame, then EOF.
  std::optional<FrameClient::Frame> err;
  for (int i = 0; i < 20000; ++i) {
    auto f = slow.recv(5s);
    if (!f) break;
    if (f->kind == FrameClient::Error) {
      err = f;
      break;
    }
  }
  ASSERT_TRUE(err) << "no error frame";
  EXPECT_NE(err->payload.find(R"("error":"slow consumer")"), std::string::npos) << err->payload;
  EXPECT_TRUE(slow.waitClosed());
  EXPECT_TRUE(waitFor([&] { return n->hasSession(slow_id, FG_SESSION_CLOSED); }));
  // Explicit: the publishes that did not make it are reported FAILED; every one is settled.
  EXPECT_TRUE(waitFor([&] { return n->host.deliveries().size() == last_id - 1000; }));
  size_t failed = 0;
  for (auto& [id, st] : n->host.deliveries()) failed += st == FG_DELIVERY_FAILED;
  EXPECT_GE(failed, 1u);
  EXPECT_TRUE(other.barrier());  // another client is unaffected
}

// ---- per-session back-pressure, close_session, limits (ABI 1.1, hardening) -----------------

// A raw client socket: optionally bound to a local address (another client IP on 127/8) and
// with a small receive buffer (so that a client that does not read fills up quickly).
class RawClient {
 public:
  explicit RawClient(int port, const char* local_ip = nullptr, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) return;
    if (rcvbuf > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (local_ip) {
      sockaddr_in l{};
      l.sin_family = AF_INET;
      ::inet_pton(AF_INET, local_ip, &l.sin_addr);
      if (::bind(fd_, reinterpret_cast<sockaddr*>(&l), sizeof l) != 0) {
        close();
        return;
      }
    }
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
  }
  ~RawClient() { close(); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;
  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool sendAll(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += size_t(n);
    }
    return true;
  }
  // Reads what arrives within timeout; false when nothing came (or EOF).
  bool pump(std::chrono::milliseconds timeout) {
    if (fd_ < 0 || eof_) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, int(timeout.count())) <= 0) return false;
    char tmp[65536];
    const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buf_.append(tmp, size_t(n));
    return true;
  }
  std::optional<FrameClient::Frame> pop() {
    if (buf_.size() < 7) return std::nullopt;
    auto u = [&](size_t i) { return uint32_t(static_cast<unsigned char>(buf_[i])); };
    const uint32_t rest = u(0) << 24 | u(1) << 16 | u(2) << 8 | u(3);
    if (buf_.size() < 4 + size_t(rest)) return std::nullopt;
    FrameClient::Frame f;
    f.kind = uint8_t(buf_[4]);
    const size_t tl = u(5) << 8 | u(6);
    f.topic = buf_.substr(7, tl);
    f.payload = buf_.substr(7 + tl, rest - 3 - tl);
    buf_.erase(0, 4 + size_t(rest));
    return f;
  }
  std::optional<FrameClient::Frame> recv(std::chrono::milliseconds timeout = 5s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto f = pop()) return f;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0 || (!pump(left) && eof_)) return pop();
    }
  }
  bool waitEof(std::chrono::milliseconds timeout = 5s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!eof_ && std::chrono::steady_clock::now() < end) pump(10ms);
    return eof_;
  }
  bool eof() const { return eof_; }
  bool ping(const std::string& token) {
    if (!sendAll(FrameClient::encode(FrameClient::Ping, "", token))) return false;
    for (auto f = recv(); f; f = recv())
      if (f->kind == FrameClient::Pong && f->payload == token) return true;
    return false;
  }

 private:
  int fd_ = -1;
  std::string buf_;
  bool eof_ = false;
};

uint64_t rawSessionOf(RawClient& c, Node& n, const std::string& tag) {
  EXPECT_TRUE(c.sendAll(FrameClient::encode(FrameClient::Publish, "whoami", tag)));
  auto m = n.host.next();
  EXPECT_TRUE(m.has_value());
  if (!m) return 0;
  EXPECT_EQ(m->payload, tag);
  return m->session;
}

size_t writableEvents(Node& n, uint64_t session) {
  size_t k = 0;
  for (auto& e : n.host.events()) k += e.kind == FG_EVENT_SESSION_WRITABLE && e.session == session;
  return k;
}

// Publishes 16 KiB frames to a session that does not read until the plugin answers FG_RETRY
// twice in a row, a second apart, with no wake-up in between (the kernel buffers and the
// session's buffer are full). Returns the delivery ids it accepted.
std::vector<uint64_t> fillSession(Node& n, uint64_t session, uint64_t first_id) {
  std::vector<uint64_t> ids;
  const std::string chunk(16 * 1024, 's');
  uint64_t id = first_id;
  bool retried = false;
  for (int i = 0; i < 8192; ++i) {  // at most 128 MiB
    const size_t wakeups = writableEvents(n, session);
    const fg_status st = n.publish("fin-slow", chunk, session, id);
    if (st == FG_OK) {
      ids.push_back(id++);
      retried = false;
      continue;
    }
    EXPECT_EQ(st, FG_RETRY);
    if (st != FG_RETRY) break;
    if (retried) return ids;
    // A transient RETRY (the I/O thread had not caught up) is followed by a wake-up; without
    // one the buffer may still have drained a little (below the limit, not below half).
    retried = !waitFor([&] { return writableEvents(n, session) > wakeups; }, 1000ms);
  }
  ADD_FAILURE() << "the session never filled up";
  return ids;
}

TEST(TcpListen, PerSessionRetryAndWritableWakeup) {
  auto n = startListener({{"session_buffer_bytes", "65536"}});
  RawClient slow(n->port, nullptr, 4096);
  ASSERT_TRUE(slow.ok());
  FrameClient fast(n->port);
  const uint64_t slow_id = rawSessionOf(slow, *n, "slow");
  const uint64_t fast_id = sessionOf(fast, *n, "fast");
  ASSERT_NE(slow_id, 0u);
  // The slow client stops reading: its publishes end in FG_RETRY.
  const auto ids = fillSession(*n, slow_id, 1000);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(n->publish("fin-slow", "still full", slow_id, 1), FG_RETRY);
  const size_t wakeups = writableEvents(*n, slow_id);
  // Another session is not held up.
  for (int i = 0; i < 20; ++i) ASSERT_EQ(n->publish("fin-fast", "f" + std::to_string(i), fast_id, 5000 + i), FG_OK);
  for (int i = 0; i < 20; ++i) {
    auto f = fast.recv();
    ASSERT_TRUE(f) << i;
    EXPECT_EQ(f->payload, "f" + std::to_string(i));
  }
  EXPECT_TRUE(waitFor([&] { return n->delivery(5019) == FG_DELIVERY_OK; }));
  // The slow client reads again: every accepted frame arrives in order, and the plugin says
  // the session can take more.
  for (size_t i = 0; i < ids.size(); ++i) {
    auto f = slow.recv();
    ASSERT_TRUE(f) << "frame " << i << " of " << ids.size();
    ASSERT_EQ(f->payload.size(), 16u * 1024u);
  }
  EXPECT_TRUE(waitFor([&] { return writableEvents(*n, slow_id) > wakeups; }));
  EXPECT_TRUE(waitFor([&] { return n->delivery(ids.back()) == FG_DELIVERY_OK; }));
  for (uint64_t id : ids) EXPECT_EQ(n->delivery(id), FG_DELIVERY_OK) << id;
  ASSERT_EQ(n->publish("fin-slow", "after", slow_id, 2), FG_OK);
  auto f = slow.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->payload, "after");
  EXPECT_FALSE(n->hasSession(slow_id, FG_SESSION_CLOSED));
}

TEST(TcpListen, CloseSessionSendsErrorFrameAndFailsWhatItHeld) {
  // A buffer of several write batches (256 KiB each), so that frames wait behind the write
  // in progress: those are the ones the close fails.
  auto n = startListener({{"session_buffer_bytes", "1048576"}});
  ASSERT_TRUE(n->inst->canCloseSession());
  RawClient slow(n->port, nullptr, 4096);
  FrameClient other(n->port);
  const uint64_t slow_id = rawSessionOf(slow, *n, "slow");
  const uint64_t other_id = sessionOf(other, *n, "other");
  const auto ids = fillSession(*n, slow_id, 1000);
  ASSERT_FALSE(ids.empty());
  ASSERT_EQ(n->inst->closeSession(slow_id, "slow consumer: 12 messages waited for 30000 ms"), FG_OK);
  EXPECT_EQ(n->publish("fin-slow", "late", slow_id, 3), FG_ERR_STATE);  // gone for publishes at once
  EXPECT_EQ(n->inst->closeSession(slow_id, "again"), FG_ERR_STATE);
  EXPECT_EQ(n->inst->closeSession(987654, "nobody"), FG_ERR_STATE);
  // The client reads now: what the sockets held, then the error frame, then EOF.
  size_t published = 0;
  std::optional<FrameClient::Frame> err;
  while (auto f = slow.recv()) {
    if (f->kind == FrameClient::Error) {
      err = f;
      break;
    }
    ASSERT_EQ(f->kind, FrameClient::Publish);
    ++published;
  }
  ASSERT_TRUE(err) << "no error frame after " << published << " frames";
  EXPECT_EQ(err->topic, "");
  EXPECT_EQ(err->payload, R"({"error":"slow consumer","detail":"12 messages waited for 30000 ms"})");
  EXPECT_TRUE(slow.waitEof());
  EXPECT_TRUE(waitFor([&] { return n->hasSession(slow_id, FG_SESSION_CLOSED); }));
  // Every accepted publish is settled: OK exactly for those that reached the socket.
  EXPECT_TRUE(waitFor([&] {
    auto d = n->host.deliveries();
    return std::all_of(ids.begin(), ids.end(), [&](uint64_t id) { return d.count(id) == 1; });
  }));
  size_t ok = 0, failed = 0;
  for (uint64_t id : ids) {
    ok += n->delivery(id) == FG_DELIVERY_OK;
    failed += n->delivery(id) == FG_DELIVERY_FAILED;
  }
  EXPECT_EQ(ok, published);
  EXPECT_EQ(ok + failed, ids.size());
  EXPECT_GE(failed, 1u);
  EXPECT_TRUE(n->hasLog("closed by the gateway"));
  // Another session is unaffected; a reason without a code becomes "closed by the gateway".
  EXPECT_TRUE(other.barrier());
  ASSERT_EQ(n->inst->closeSession(other_id, "Admin request #7"), FG_OK);
  auto e = other.recv();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, FrameClient::Error);
  EXPECT_EQ(e->payload, R"({"error":"closed by the gateway","detail":"Admin request #7"})");
  EXPECT_TRUE(other.waitClosed());
}

TEST(TcpLimits, MaxConnections) {
  auto n = startListener({{"max_connections", "2"}});
  auto c1 = std::make_unique<FrameClient>(n->port);
  FrameClient c2(n->port);
  const uint64_t id1 = sessionOf(*c1, *n, "one");
  ASSERT_TRUE(c2.barrier());
  FrameClient c3(n->port);
  auto e = c3.recv();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, FrameClient::Error);
  EXPECT_EQ(e->payload,
            R"({"error":"too many connections","detail":"max_connections (2) reached on this endpoint"})");
  EXPECT_TRUE(c3.waitClosed());
  EXPECT_TRUE(n->hasLog("too many connections"));
  EXPECT_EQ(n->host.sessions().size(), 2u);  // the refused one never was a session
  // Room again once one closes.
  c1.reset();
  ASSERT_TRUE(waitFor([&] { return n->hasSession(id1, FG_SESSION_CLOSED); }));
  FrameClient c4(n->port);
  EXPECT_TRUE(c4.barrier());
  EXPECT_TRUE(c2.barrier());
}

TEST(TcpLimits, MaxConnectionsPerIp) {
  auto n = startListener({{"max_connections_per_ip", "1"}});
  FrameClient c1(n->port);
  ASSERT_TRUE(c1.barrier());
  FrameClient c2(n->port);
  auto e = c2.recv();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, FrameClient::Error);
  EXPECT_EQ(e->payload,
            R"({"error":"too many connections","detail":"max_connections_per_ip (1) reached for 127.0.0.1"})");
  EXPECT_TRUE(c2.waitClosed());
  // Another address is counted apart.
  RawClient c3(n->port, "127.0.0.2");
  ASSERT_TRUE(c3.ok());
  EXPECT_TRUE(c3.ping("from-127.0.0.2"));
  EXPECT_TRUE(c1.barrier());
}

TEST(TcpLimits, MaxSubscriptionsRefusesTheOneOverWithoutClosing) {
  auto n = startListener({{"max_subscriptions", "2"}});
  FrameClient c(n->port);
  ASSERT_TRUE(c.subscribe("a"));
  ASSERT_TRUE(c.subscribe("b"));
  ASSERT_TRUE(c.subscribe("a"));  // again: not a new subscription
  ASSERT_TRUE(c.barrier());
  EXPECT_FALSE(c.recv(50ms).has_value());
  ASSERT_TRUE(c.subscribe("c"));
  auto e = c.recv();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, FrameClient::Error);
  EXPECT_EQ(e->payload,
            R"({"error":"too many subscriptions","detail":"max_subscriptions (2) reached; 'c' was not subscribed"})");
  EXPECT_TRUE(c.barrier());  // still open
  EXPECT_TRUE(n->hasLog("too many subscriptions"));
  ASSERT_EQ(n->publish("c", "not subscribed", 0, 1), FG_OK);
  EXPECT_TRUE(waitFor([&] { return n->delivery(1) == FG_DELIVERY_NO_RECEIVER; }));
  ASSERT_TRUE(c.send(FrameClient::Unsubscribe, "a"));
  ASSERT_TRUE(c.subscribe("c"));
  ASSERT_TRUE(c.barrier());
  ASSERT_EQ(n->publish("c", "now"), FG_OK);
  auto f = c.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->payload, "now");
}

// Two connections each send most of a 60000-byte frame; together they would hold more than
// max_pending_bytes: whichever the gateway reads second gets the error frame and is closed,
// the other one's frame completes normally.
TEST(TcpLimits, MaxPendingBytesClosesTheConnectionThatWouldExceedIt) {
  auto n = startListener({{"max_frame_bytes", "65536"}, {"max_pending_bytes", "100000"}});
  RawClient a(n->port), b(n->port);
  const uint64_t ida = rawSessionOf(a, *n, "a"), idb = rawSessionOf(b, *n, "b");
  const std::string payload(60000 - 3 - 1, 'p');
  const std::string frame = FrameClient::encode(FrameClient::Publish, "t", payload);
  ASSERT_TRUE(a.sendAll(frame.substr(0, 50007)));
  ASSERT_TRUE(b.sendAll(frame.substr(0, 50007)));
  RawClient* closed = nullptr;
  RawClient* kept = nullptr;
  for (int i = 0; i < 500 && !closed; ++i) {
    for (RawClient* c : {&a, &b}) {
      auto f = c->recv(10ms);
      if (!f) continue;
      EXPECT_EQ(f->kind, FrameClient::Error);
      EXPECT_EQ(f->payload,
                R"({"error":"pending bytes limit","detail":"unfinished frames of all connections would hold more than max_pending_bytes (100000) bytes"})");
      closed = c;
      kept = c == &a ? &b : &a;
    }
  }
  ASSERT_TRUE(closed) << "no connection was refused";
  EXPECT_TRUE(closed->waitEof());
  const uint64_t closed_id = closed == &a ? ida : idb;
  EXPECT_TRUE(waitFor([&] { return n->hasSession(closed_id, FG_SESSION_CLOSED); }));
  EXPECT_TRUE(n->hasLog("pending bytes limit"));
  ASSERT_TRUE(kept->sendAll(frame.substr(50007)));
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, payload);
  EXPECT_EQ(m->session, closed == &a ? idb : ida);
  EXPECT_TRUE(kept->ping("kept"));
}

long vmRssKiB() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return -1;
}

// The memory bound of issue 8 item 6: 300 connections each send the first half of a 1 MiB
// frame. With the default max_pending_bytes (64 MiB) at most 128 of them can hold their half;
// every other one gets the error frame and is closed. (VmRSS is printed, not asserted.)
TEST(TcpLimits, PendingBudgetBoundsHalfSentFramesOf300Connections) {
  auto n = startListener({{"max_connections_per_ip", "1000"}});
  const long rss_before = vmRssKiB();
  const size_t kConns = 300, kHalf = 512 * 1024;
  const std::string half = rawHeader(1048576, 1, 1) + "t" + std::string(kHalf - 8, 'h');
  std::vector<std::unique_ptr<RawClient>> clients;
  for (size_t i = 0; i < kConns; ++i) {
    clients.push_back(std::make_unique<RawClient>(n->port));
    ASSERT_TRUE(clients.back()->ok()) << i;
  }
  for (auto& c : clients) c->sendAll(half);  // a refused one may be reset midway: fine
  // Collect error frames until nothing changes for 2 s (bounded).
  std::vector<int> state(kConns, 0);  // 0 open, 1 got the error frame
  size_t refused = 0;
  auto last_change = std::chrono::steady_clock::now();
  const auto give_up = last_change + 60s;
  while (std::chrono::steady_clock::now() < give_up &&
         std::chrono::steady_clock::now() - last_change < 2s) {
    for (size_t i = 0; i < kConns; ++i) {
      if (state[i]) continue;
      clients[i]->pump(0ms);
      if (auto f = clients[i]->pop()) {
        EXPECT_EQ(f->kind, FrameClient::Error);
        EXPECT_NE(f->payload.find(R"("error":"pending bytes limit")"), std::string::npos) << f->payload;
        state[i] = 1;
        ++refused;
        last_change = std::chrono::steady_clock::now();
      }
    }
    std::this_thread::sleep_for(20ms);
  }
  const long rss_after = vmRssKiB();
  const size_t kept = kConns - refused;
  std::cout << "[ info     ] 300 connections x 512 KiB of a 1 MiB frame: " << refused << " refused, " << kept
            << " holding their half; VmRSS before " << rss_before << " KiB, after " << rss_after << " KiB\n";
  RecordProperty("vmrss_before_kib", std::to_string(rss_before));
  RecordProperty("vmrss_after_kib", std::to_string(rss_after));
  const size_t max_kept = (64u * 1024 * 1024) / kHalf;  // 128
  EXPECT_GE(refused, kConns - max_kept);
  EXPECT_LE(kept, max_kept);
  EXPECT_GE(kept, 1u);
  // The kept ones are still open (no EOF), the refused ones are closed.
  for (size_t i = 0; i < kConns; ++i) {
    if (state[i]) {
      EXPECT_TRUE(clients[i]->waitEof()) << i;
    } else {
      EXPECT_FALSE(clients[i]->eof()) << i;
    }
  }
  clients.clear();
  EXPECT_TRUE(n->hasLog("pending bytes limit"));
}

TEST(TcpListen, BindFailureIsReturnedAndLogged) {
  auto first = startListener();
  Node second({{"listen", "127.0.0.1:" + std::to_string(first->port)}});
  EXPECT_NE(second.inst->start(), FG_OK);
  EXPECT_TRUE(second.hasLog("cannot listen on 127.0.0.1:" + std::to_string(first->port)));
  EXPECT_FALSE(second.host.waitState(FG_STATE_UP, 100ms));
}

// ---- connect mode (gateway to gateway) ---------------------------------------------------

TEST(TcpConnect, GatewayToGatewayAndResubscribeAfterRestart) {
  auto a = startListener();
  const int port = a->port;
  Node b({{"connect", "127.0.0.1:" + std::to_string(port)}, {"reconnect_max_ms", "300"}});
  ASSERT_EQ(b.inst->subscribe("fin-1", 7), FG_OK);  // before start: sent on connect
  ASSERT_EQ(b.inst->start(), FG_OK);
  ASSERT_TRUE(b.host.waitState(FG_STATE_UP));
  EXPECT_EQ(b.host.stateDetail(FG_STATE_UP), "connected to 127.0.0.1:" + std::to_string(port));
  ASSERT_EQ(b.inst->subscribe("soarca", 8), FG_OK);  // while connected

  // B -> A: arrives at A with B's session.
  ASSERT_EQ(b.publish("soarca", "hello-from-b", 0, 11), FG_OK);
  auto m = a->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->topic, "soarca");
  EXPECT_EQ(m->payload, "hello-from-b");
  const uint64_t b_session = m->session;
  EXPECT_NE(b_session, 0u);
  EXPECT_TRUE(a->hasSession(b_session, FG_SESSION_OPENED));
  EXPECT_TRUE(waitFor([&] { return b.delivery(11) == FG_DELIVERY_OK; }));

  // A -> B: broadcast by subscription, and session-targeted.
  ASSERT_EQ(a->publish("fin-1", "cmd-1"), FG_OK);
  auto in = b.host.next();
  ASSERT_TRUE(in);
  EXPECT_EQ(in->topic, "fin-1");
  EXPECT_EQ(in->payload, "cmd-1");
  EXPECT_EQ(in->sub_id, 7u);
  EXPECT_EQ(in->session, 0u);
  ASSERT_EQ(a->publish("not-subscribed", "direct", b_session), FG_OK);
  auto direct = b.host.next();
  ASSERT_TRUE(direct);
  EXPECT_EQ(direct->payload, "direct");
  EXPECT_EQ(direct->sub_id, 0u);  // no subscription matches
  // "soarca" (sub 8) reaches B once the subscription is in; poll with a bounded loop.
  bool got_soarca = false;
  for (int i = 0; i < 100 && !got_soarca; ++i) {
    ASSERT_EQ(a->publish("soarca", "bcast"), FG_OK);
    if (auto s = b.host.next(50ms)) got_soarca = s->sub_id == 8 && s->payload == "bcast";
  }
  EXPECT_TRUE(got_soarca);
  while (b.host.next(100ms)) {
  }

  // The listener goes away: B reports DOWN and queues what it is given.
  a->inst->stop(1000);
  a.reset();
  ASSERT_TRUE(b.host.waitState(FG_STATE_DOWN));
  EXPECT_NE(b.host.stateDetail(FG_STATE_DOWN).find("127.0.0.1:" + std::to_string(port)), std::string::npos);
  ASSERT_EQ(b.publish("soarca", "queued-while-down", 0, 12), FG_OK);

  // A new listener on the same port: B reconnects, restores both subscriptions, flushes.
  auto a2 = startListener({}, "127.0.0.1:" + std::to_string(port));
  ASSERT_EQ(a2->port, port);
  ASSERT_TRUE(b.host.waitState(FG_STATE_RECONNECTED));
  auto q = a2->host.next();
  ASSERT_TRUE(q);
  EXPECT_EQ(q->payload, "queued-while-down");
  EXPECT_NE(q->session, 0u);
  EXPECT_TRUE(waitFor([&] { return b.delivery(12) == FG_DELIVERY_OK; }));
  // RECONNECTED means the server stored the subscriptions: no polling needed here.
  ASSERT_EQ(a2->publish("fin-1", "cmd-2"), FG_OK);
  auto in2 = b.host.next();
  ASSERT_TRUE(in2);
  EXPECT_EQ(in2->payload, "cmd-2");
  EXPECT_EQ(in2->sub_id, 7u);
  ASSERT_EQ(a2->publish("soarca", "bcast-2"), FG_OK);
  auto in3 = b.host.next();
  ASSERT_TRUE(in3);
  EXPECT_EQ(in3->payload, "bcast-2");
  EXPECT_EQ(in3->sub_id, 8u);

  // Unsubscribe: after it, A2's "soarca" no longer reaches B (fin-1 still does).
  ASSERT_EQ(b.inst->unsubscribe(8), FG_OK);
  bool stopped = false;
  for (int i = 0; i < 100 && !stopped; ++i) {
    ASSERT_EQ(a2->publish("soarca", "after-unsub"), FG_OK);
    ASSERT_EQ(a2->publish("fin-1", "marker"), FG_OK);
    auto x = b.host.next();
    ASSERT_TRUE(x);
    if (x->payload == "marker") stopped = true;
    else b.host.next();  // the marker behind it
  }
  EXPECT_TRUE(stopped);
}

TEST(TcpConnect, KeepaliveDetectsASilentServer) {
  auto a = startListener();
  Node b({{"connect", "127.0.0.1:" + std::to_string(a->port)}, {"keepalive_ms", "100"}, {"reconnect_max_ms", "200"}});
  ASSERT_EQ(b.inst->start(), FG_OK);
  ASSERT_TRUE(b.host.waitState(FG_STATE_UP));
  // A's host stops taking messages: A holds B's publish and reads nothing more from B,
  // so B's keepalive pings go unanswered.
  a->host.retry_budget = 1000000000;
  ASSERT_EQ(b.publish("soarca", "held"), FG_OK);
  ASSERT_TRUE(b.host.waitState(FG_STATE_DOWN));
  EXPECT_NE(b.host.stateDetail(FG_STATE_DOWN).find("keepalive"), std::string::npos) << b.host.stateDetail(FG_STATE_DOWN);
  a->host.retry_budget = 0;  // the held message is taken (never dropped), B comes back
  auto m = a->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "held");
  EXPECT_TRUE(b.host.waitState(FG_STATE_RECONNECTED));
}

TEST(TcpConnect, QueueIsBoundedWhileDisconnected) {
  const int port = freePort();
  Node b({{"connect", "127.0.0.1:" + std::to_string(port)}, {"max_outbound_bytes", "4096"}});
  ASSERT_EQ(b.inst->start(), FG_OK);
  ASSERT_TRUE(b.host.waitState(FG_STATE_DOWN));
  const std::string chunk(1000, 'q');
  int ok = 0;
  fg_status st = FG_OK;
  for (int i = 0; i < 100 && st == FG_OK; ++i) {
    st = b.publish("t", chunk, 0, 500 + i);
    if (st == FG_OK) ++ok;
  }
  EXPECT_EQ(st, FG_RETRY);
  EXPECT_GE(ok, 1);
  EXPECT_LE(ok, 5);
  // Stopping fails what never left, explicitly.
  EXPECT_EQ(b.inst->stop(500), FG_OK);
  EXPECT_EQ(b.delivery(500), FG_DELIVERY_FAILED);
}

// ---- TLS ---------------------------------------------------------------------------------

struct Cert {
  std::string cert, key;
};

Cert makeCert(const std::string& dir, const std::string& name, const std::string& cn) {
  Cert c{dir + "/" + name + ".pem", dir + "/" + name + "-key.pem"};
  const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=" +
                          cn + " -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " + c.key + " -out " +
                          c.cert + " > " + dir + "/" + name + ".log 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << readFile(dir + "/" + name + ".log");
  return c;
}

TEST(TcpTls, ListenAndConnect) {
  const std::string dir = tempDir("tcp-tls");
  const Cert server = makeCert(dir, "server", "localhost");
  auto a = startListener({{"tls.enabled", "true"}, {"tls.cert_file", server.cert}, {"tls.key_file", server.key}});
  EXPECT_NE(a->host.stateDetail(FG_STATE_UP).find("(TLS)"), std::string::npos);
  Node b({{"connect", "127.0.0.1:" + std::to_string(a->port)},
          {"tls.enabled", "true"},
          {"tls.ca_file", server.cert},
          {"tls.verify", "true"}});
  ASSERT_EQ(b.inst->subscribe("fin-tls", 3), FG_OK);
  ASSERT_EQ(b.inst->start(), FG_OK);
  ASSERT_TRUE(b.host.waitState(FG_STATE_UP));
  ASSERT_EQ(b.publish("soarca", "over-tls", 0, 9), FG_OK);
  auto m = a->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "over-tls");
  EXPECT_NE(m->session, 0u);
  EXPECT_TRUE(waitFor([&] { return b.delivery(9) == FG_DELIVERY_OK; }));
  ASSERT_EQ(a->publish("fin-tls", "back-over-tls"), FG_OK);
  auto in = b.host.next();
  ASSERT_TRUE(in);
  EXPECT_EQ(in->payload, "back-over-tls");
  EXPECT_EQ(in->sub_id, 3u);

  // A plain-TCP client on the TLS port gets no session: the handshake fails, it is closed.
  const size_t sessions_before = a->host.sessions().size();
  FrameClient plain(a->port);
  ASSERT_TRUE(plain.connected());
  plain.send(FrameClient::Ping, "", "x");
  EXPECT_TRUE(plain.waitClosed());
  EXPECT_EQ(a->host.sessions().size(), sessions_before);

  // A client that verifies against another CA refuses the server.
  const Cert other = makeCert(dir, "other", "localhost");
  Node c({{"connect", "127.0.0.1:" + std::to_string(a->port)}, {"tls.enabled", "true"}, {"tls.ca_file", other.cert}});
  ASSERT_EQ(c.inst->start(), FG_OK);
  ASSERT_TRUE(c.host.waitState(FG_STATE_DOWN));
  EXPECT_NE(c.host.stateDetail(FG_STATE_DOWN).find("certificate verify failed"), std::string::npos)
      << c.host.stateDetail(FG_STATE_DOWN);
  EXPECT_FALSE(c.host.waitState(FG_STATE_UP, 300ms));
}

TEST(TcpTls, MutualTlsRequiresClientCertificate) {
  const std::string dir = tempDir("tcp-mtls");
  const Cert server = makeCert(dir, "server", "localhost");
  const Cert client = makeCert(dir, "client", "fin-client");
  auto a = startListener({{"tls.enabled", "true"},
                          {"tls.cert_file", server.cert},
                          {"tls.key_file", server.key},
                          {"tls.ca_file", client.cert},
                          {"tls.verify", "true"}});
  const std::string addr = "127.0.0.1:" + std::to_string(a->port);
  Node anon({{"connect", addr}, {"tls.enabled", "true"}, {"tls.ca_file", server.cert}});
  ASSERT_EQ(anon.inst->start(), FG_OK);
  ASSERT_TRUE(anon.host.waitState(FG_STATE_DOWN));
  EXPECT_FALSE(anon.host.waitState(FG_STATE_UP, 300ms));

  Node authed({{"connect", addr},
               {"tls.enabled", "true"},
               {"tls.ca_file", server.cert},
               {"tls.cert_file", client.cert},
               {"tls.key_file", client.key}});
  ASSERT_EQ(authed.inst->start(), FG_OK);
  ASSERT_TRUE(authed.host.waitState(FG_STATE_UP));
  ASSERT_EQ(authed.publish("soarca", "mutual"), FG_OK);
  auto m = a->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "mutual");
}

// ---- lifecycle and configuration ---------------------------------------------------------

TEST(TcpLifecycle, StopTwiceStartTwiceDestroyWithoutStop) {
  {
    Node n(Cfg{{"listen", "127.0.0.1:0"}});
    EXPECT_EQ(n.inst->stop(100), FG_OK);  // never started
    ASSERT_EQ(n.inst->start(), FG_OK);
    EXPECT_EQ(n.inst->start(), FG_ERR_STATE);
    ASSERT_TRUE(n.host.waitState(FG_STATE_UP));
    FrameClient c(portFromLine(n.host.stateDetail(FG_STATE_UP)));
    ASSERT_TRUE(c.barrier());
    EXPECT_EQ(n.inst->stop(1000), FG_OK);
    EXPECT_TRUE(n.host.waitState(FG_STATE_STOPPED, 0ms));
    EXPECT_EQ(n.inst->stop(1000), FG_OK);
    EXPECT_TRUE(c.waitClosed());
    EXPECT_EQ(n.publish("t", "after-stop"), FG_ERR_STATE);
    EXPECT_EQ(n.inst->start(), FG_ERR_STATE);
    auto s = n.host.sessions();
    ASSERT_EQ(s.size(), 2u);
    EXPECT_EQ(s[1].second, FG_SESSION_CLOSED);  // reported before stop returned
  }
  {
    // Destroyed while running, with a client attached and a publish in flight.
    Node n(Cfg{{"listen", "127.0.0.1:0"}});
    ASSERT_EQ(n.inst->start(), FG_OK);
    FrameClient c(portFromLine(n.host.stateDetail(FG_STATE_UP)));
    ASSERT_TRUE(c.subscribe("x"));
    ASSERT_TRUE(c.barrier());
    EXPECT_EQ(n.publish("x", "bye", 0, 77), FG_OK);
    n.inst.reset();
    EXPECT_TRUE(n.delivery(77).has_value());  // settled one way or the other, before destroy returned
  }
  {
    // A connect-mode instance that never reached its server.
    Node n({{"connect", "127.0.0.1:" + std::to_string(freePort())}});
    ASSERT_EQ(n.inst->start(), FG_OK);
    EXPECT_TRUE(n.host.waitState(FG_STATE_DOWN));
    n.inst.reset();
    EXPECT_TRUE(n.host.waitState(FG_STATE_STOPPED, 0ms));
  }
}

TEST(TcpConfig, RejectsBadConfiguration) {
  RecordingHost host;
  auto expectError = [&](const Cfg& cfg, const std::string& prefix) {
    try {
      PluginInstance inst(tcpLib(), host, cfg);
      ADD_FAILURE() << "accepted, expected an error starting with " << prefix;
    } catch (const PluginError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
    }
  };
  expectError({}, "listen: ");
  expectError({{"listen", "127.0.0.1:0"}, {"connect", "127.0.0.1:1"}}, "connect: ");
  expectError({{"listen", "no-port"}}, "listen: ");
  expectError({{"listen", "127.0.0.1:99999"}}, "listen: ");
  expectError({{"connect", "127.0.0.1:0"}}, "connect: ");
  expectError({{"listen", "127.0.0.1:0"}, {"max_frame_bytes", "big"}}, "max_frame_bytes: ");
  expectError({{"listen", "127.0.0.1:0"}, {"tls.enabled", "true"}}, "tls.cert_file: ");
  expectError({{"listen", "127.0.0.1:0"}, {"tls.enabled", "maybe"}}, "tls.enabled: ");
  expectError({{"listen", "127.0.0.1:0"}, {"bogus", "1"}}, "bogus: ");
  expectError({{"listen", "127.0.0.1:0"}, {"session_buffer_bytes", "10"}}, "session_buffer_bytes: ");
  expectError({{"listen", "127.0.0.1:0"}, {"max_connections", "0"}}, "max_connections: ");
  expectError({{"listen", "127.0.0.1:0"}, {"max_connections_per_ip", "x"}}, "max_connections_per_ip: ");
  expectError({{"listen", "127.0.0.1:0"}, {"max_subscriptions", "-1"}}, "max_subscriptions: ");
  expectError({{"listen", "127.0.0.1:0"}, {"max_frame_bytes", "2000000"}, {"max_pending_bytes", "1048576"}},
              "max_pending_bytes: ");
  // create() opens nothing: a valid config on a busy port only fails at start().
  PluginInstance ok(tcpLib(), host, {{"listen", "[::1]:0"}});
}

TEST(TcpConfig, MissingCertificateFailsStart) {
  Node n({{"listen", "127.0.0.1:0"},
          {"tls.enabled", "true"},
          {"tls.cert_file", "/nonexistent/cert.pem"},
          {"tls.key_file", "/nonexistent/key.pem"}});
  EXPECT_NE(n.inst->start(), FG_OK);
  EXPECT_TRUE(n.hasLog("tls.cert_file"));
}

}  // namespace
}  // namespace fingate::test
