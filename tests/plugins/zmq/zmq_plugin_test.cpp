// Tests of libfingate-zmq.so through the C ABI: a RecordingHost, real DEALER clients (cppzmq)
// on 127.0.0.1, real CURVE keys. No timing assertions: every wait is bounded and polls for a
// condition.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.hpp"
#include "zmq_test_client.hpp"

namespace fingate::test {
namespace {

using Cfg = std::vector<std::pair<std::string, std::string>>;
using Msg = ZmqClient::Msg;

std::shared_ptr<PluginLibrary> zmqLib() {
  static std::shared_ptr<PluginLibrary> lib = loadBuiltPlugin("zmq");
  return lib;
}

struct Node {
  explicit Node(const Cfg& cfg) : inst(std::make_unique<PluginInstance>(zmqLib(), host, cfg)) {}
  RecordingHost host;
  std::unique_ptr<PluginInstance> inst;
  std::string endpoint;  // tcp://127.0.0.1:PORT

  fg_status publish(const std::string& topic, const std::string& payload, uint64_t session = 0,
                    uint64_t delivery_id = 0) {
    fg_message m{{topic.data(), topic.size()}, {payload.data(), payload.size()}, nullptr, 0, 0, session};
    return inst->publish(m, delivery_id);
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
  size_t count(fg_session_event ev) {
    size_t n = 0;
    for (auto& [s, e] : host.sessions()) n += e == ev;
    return n;
  }
  std::optional<fg_delivery> delivery(uint64_t id) {
    auto d = host.deliveries();
    auto it = d.find(id);
    if (it == d.end()) return std::nullopt;
    return it->second;
  }
};

std::unique_ptr<Node> startBound(const Cfg& extra = {}) {
  Cfg cfg{{"bind", "tcp://127.0.0.1:*"}};
  cfg.insert(cfg.end(), extra.begin(), extra.end());
  auto n = std::make_unique<Node>(cfg);
  EXPECT_EQ(n->inst->start(), FG_OK);
  EXPECT_TRUE(n->host.waitState(FG_STATE_UP));
  const int port = portFromLine(n->host.stateDetail(FG_STATE_UP));
  EXPECT_GT(port, 0) << n->host.stateDetail(FG_STATE_UP);
  n->endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  return n;
}

// The session of a client: it publishes once and the host reports the session.
uint64_t sessionOf(ZmqClient& c, Node& n, const std::string& tag) {
  EXPECT_TRUE(c.publish("whoami", tag));
  auto m = n.host.next();
  EXPECT_TRUE(m.has_value());
  if (!m) return 0;
  EXPECT_EQ(m->payload, tag);
  return m->session;
}

::testing::AssertionResult isErr(const std::optional<Msg>& m, const std::string& code) {
  if (!m) return ::testing::AssertionFailure() << "nothing received (expected ERR " << code << ")";
  if (m->frames != 3 || m->verb != "ERR" || !m->topic.empty() ||
      m->payload.find("{\"error\":\"" + code + "\",\"detail\":\"") != 0)
    return ::testing::AssertionFailure() << m->frames << " frames: " << m->verb << " '" << m->topic << "' "
                                         << m->payload;
  return ::testing::AssertionSuccess();
}

// A normal exchange still works for a client: publish reaches the host, a message reaches it.
void exchangeWorks(Node& n, ZmqClient& c, const std::string& tag) {
  const uint64_t s = sessionOf(c, n, tag);
  ASSERT_NE(s, 0u);
  ASSERT_EQ(n.publish("fin-" + tag, "to-" + tag, s, 0), FG_OK);
  auto m = c.recv();
  ASSERT_TRUE(m) << tag;
  EXPECT_EQ(m->verb, "MSG");
  EXPECT_EQ(m->topic, "fin-" + tag);
  EXPECT_EQ(m->payload, "to-" + tag);
}

TEST(ZmqPlugin, DescriptorDeclaresKeysAndCapabilities) {
  auto lib = zmqLib();
  EXPECT_EQ(lib->name(), "zmq");
  EXPECT_EQ(lib->capabilities() & (FG_CAP_SESSIONS | FG_CAP_DELIVERY), FG_CAP_SESSIONS | FG_CAP_DELIVERY);
  for (const char* k : {"bind", "connect", "max_frame_bytes", "heartbeat_ms", "send_hwm", "recv_hwm",
                        "session_buffer_bytes", "max_outbound_bytes", "max_peers", "max_subscriptions",
                        "curve.server_secret_key", "curve.allowed_client_keys", "curve.allowed_clients_file"})
    EXPECT_TRUE(lib->acceptsKey(k)) << k;
  EXPECT_FALSE(lib->acceptsKey("listen"));
  EXPECT_FALSE(lib->acceptsKey("curve.bogus"));
  EXPECT_NE(lib->descriptor().close_session, nullptr);
}

TEST(ZmqPlugin, PublishesReachTheHostWithOneSessionPerPeer) {
  auto n = startBound();
  EXPECT_NE(n->host.stateDetail(FG_STATE_UP).find("listening on tcp://127.0.0.1:"), std::string::npos);
  ZmqClient a(n->endpoint), b(n->endpoint);
  const std::string reg = vectorBytes("01-a-register.json");
  ASSERT_FALSE(reg.empty());
  ASSERT_TRUE(a.publish("soarca", reg));
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->topic, "soarca");
  EXPECT_EQ(m->payload, reg);  // bytes unchanged
  EXPECT_EQ(m->sub_id, 0u);
  EXPECT_NE(m->session, 0u);
  EXPECT_TRUE(n->hasSession(m->session, FG_SESSION_OPENED));
  const uint64_t sb = sessionOf(b, *n, "from-b");
  EXPECT_NE(sb, 0u);
  EXPECT_NE(sb, m->session);
  EXPECT_EQ(sessionOf(a, *n, "again-a"), m->session);  // the same peer stays one session
}

TEST(ZmqPlugin, SessionTargetedAndBroadcastDelivery) {
  auto n = startBound();
  ZmqClient a(n->endpoint), b(n->endpoint);
  const uint64_t sa = sessionOf(a, *n, "a"), sb = sessionOf(b, *n, "b");
  ASSERT_TRUE(a.subscribe("soarca"));
  ASSERT_TRUE(a.barrier());
  ASSERT_TRUE(b.barrier());
  // To one session, whether or not it subscribed (implicit binding).
  ASSERT_EQ(n->publish("fin-b", "only-b", sb, 11), FG_OK);
  auto mb = b.recv();
  ASSERT_TRUE(mb);
  EXPECT_EQ(mb->frames, 3u);
  EXPECT_EQ(mb->verb, "MSG");
  EXPECT_EQ(mb->topic, "fin-b");
  EXPECT_EQ(mb->payload, "only-b");
  EXPECT_TRUE(waitFor([&] { return n->delivery(11) == FG_DELIVERY_OK; }));
  // A broadcast reaches the subscribers only.
  ASSERT_EQ(n->publish("soarca", "bcast", 0, 12), FG_OK);
  auto ma = a.recv();
  ASSERT_TRUE(ma);
  EXPECT_EQ(ma->payload, "bcast");
  EXPECT_TRUE(waitFor([&] { return n->delivery(12) == FG_DELIVERY_OK; }));
  ASSERT_TRUE(b.barrier());
  EXPECT_FALSE(b.recv(std::chrono::milliseconds(20)));
  // Nobody subscribed: no receiver. Unknown session: refused.
  ASSERT_EQ(n->publish("nobody", "x", 0, 13), FG_OK);
  EXPECT_TRUE(waitFor([&] { return n->delivery(13) == FG_DELIVERY_NO_RECEIVER; }));
  EXPECT_EQ(n->publish("fin", "x", 999999, 14), FG_ERR_STATE);
  // Unsubscribed: no more broadcasts.
  ASSERT_TRUE(a.send("UNSUB", "soarca"));
  ASSERT_TRUE(a.barrier());
  ASSERT_EQ(n->publish("soarca", "after-unsub", 0, 15), FG_OK);
  EXPECT_TRUE(waitFor([&] { return n->delivery(15) == FG_DELIVERY_NO_RECEIVER; }));
  EXPECT_NE(sa, sb);
}

TEST(ZmqPlugin, SubscribeIsAuthorizedByTheHost) {
  auto n = startBound();
  std::atomic<uint64_t> asked{0};
  n->host.authorize = [&](uint64_t session, std::string_view filter, std::string& reason) -> fg_status {
    asked = session;
    if (filter == "bound-elsewhere") {
      reason = "capability \"bound-elsewhere\" is bound to another session";
      return FG_ERR_STATE;
    }
    return FG_OK;
  };
  ZmqClient c(n->endpoint);
  const uint64_t id = sessionOf(c, *n, "me");
  ASSERT_TRUE(c.subscribe("bound-elsewhere"));
  auto e = c.recv();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->verb, "ERR");
  EXPECT_EQ(e->payload,
            R"({"error":"subscribe refused","detail":"capability \"bound-elsewhere\" is bound to another session"})");
  EXPECT_EQ(asked.load(), id);
  ASSERT_TRUE(c.subscribe("a/#/b"));
  EXPECT_TRUE(isErr(c.recv(), "invalid filter"));
  ASSERT_TRUE(c.subscribe("mine"));
  ASSERT_TRUE(c.barrier());
  ASSERT_EQ(n->publish("bound-elsewhere", "must-not-arrive", 0, 21), FG_OK);
  EXPECT_TRUE(waitFor([&] { return n->delivery(21) == FG_DELIVERY_NO_RECEIVER; }));
  ASSERT_EQ(n->publish("mine", "arrives"), FG_OK);
  auto f = c.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->payload, "arrives");
  EXPECT_FALSE(n->hasSession(id, FG_SESSION_CLOSED));  // refusals keep the session
}

TEST(ZmqPlugin, PingIsEchoedAfterEverythingBefore) {
  auto n = startBound();
  ZmqClient c(n->endpoint);
  const std::string payload("echo\0me", 7);
  ASSERT_TRUE(c.send("PING", "some/topic", payload));
  auto f = c.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->frames, 3u);
  EXPECT_EQ(f->verb, "PONG");
  EXPECT_EQ(f->topic, "some/topic");
  EXPECT_EQ(f->payload, payload);
  // Back-pressure: the host refuses 25 times; the pong still comes after both publishes.
  n->host.retry_budget = 25;
  ASSERT_TRUE(c.publish("t", "m1"));
  ASSERT_TRUE(c.publish("t", "m2"));
  ASSERT_TRUE(c.barrier());
  EXPECT_EQ(n->host.retry_budget.load(), 0);
  auto a = n->host.next(std::chrono::milliseconds(0));
  auto b = n->host.next(std::chrono::milliseconds(0));
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->payload, "m1");
  EXPECT_EQ(b->payload, "m2");
  EXPECT_FALSE(n->host.next(std::chrono::milliseconds(50)).has_value());
}

// A client-chosen routing id could be taken by another connection once its owner drops (and
// inherit its session and bindings): such peers are refused, nothing reaches the host.
TEST(ZmqPlugin, ClientChosenRoutingIdsAreRefused) {
  auto n = startBound();
  ZmqClientOptions o;
  o.routing_id = "fin-a";
  ZmqClient chosen(n->endpoint, o);
  ASSERT_TRUE(chosen.publish("soarca", vectorBytes("01-a-register.json")));
  EXPECT_TRUE(isErr(chosen.recv(), "routing id refused"));
  ZmqClient good(n->endpoint);
  exchangeWorks(*n, good, "after-chosen");  // the first message the host sees is good's
}

TEST(ZmqPlugin, HostileMessagesGetAnErrAndOthersContinue) {
  auto n = startBound({{"max_frame_bytes", "1024"}});
  ZmqClient good(n->endpoint);
  exchangeWorks(*n, good, "good0");
  struct Case {
    std::vector<std::string> frames;
    const char* error;
    bool closes;
  };
  const std::string bad_utf8("fin-\xff\xfe", 6);
  const std::vector<Case> cases = {
      {{"PUB"}, "wrong frame count", true},
      {{"PUB", "topic"}, "wrong frame count", true},
      {{"PUB", "topic", "payload", "extra"}, "wrong frame count", true},
      {{"PUBLISH", "topic", "payload"}, "unknown verb", true},
      {{"MSG", "topic", "payload"}, "unknown verb", true},
      {{"PUB", "topic", std::string(1500, 'x')}, "frame too large", true},
      {{"PUB", bad_utf8, "{}"}, "invalid topic", false},
      {{"PUB", "fin/+", "{}"}, "invalid topic", false},
      {{"PUB", "#", "{}"}, "invalid topic", false},
      {{"PUB", "", "{}"}, "invalid topic", false},
  };
  int i = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.error + std::string(" #") + std::to_string(i));
    ZmqClient bad(n->endpoint);
    const uint64_t s = sessionOf(bad, *n, "bad" + std::to_string(i));
    ASSERT_TRUE(bad.sendFrames(c.frames));
    EXPECT_TRUE(isErr(bad.recv(), c.error));
    if (c.closes)
      EXPECT_TRUE(waitFor([&] { return n->hasSession(s, FG_SESSION_CLOSED); }));
    else {
      ASSERT_TRUE(bad.barrier());
      EXPECT_FALSE(n->hasSession(s, FG_SESSION_CLOSED));
    }
    // Nothing of the bad message reached the host, and everyone else goes on.
    exchangeWorks(*n, good, "good" + std::to_string(++i));
    EXPECT_FALSE(n->host.next(std::chrono::milliseconds(0)).has_value());
  }
  // A peer without a session gets the ERR too, and no session is made for it.
  const size_t opened = n->count(FG_SESSION_OPENED);
  ZmqClient stranger(n->endpoint);
  ASSERT_TRUE(stranger.sendFrames({"HELLO"}));
  EXPECT_TRUE(isErr(stranger.recv(), "wrong frame count"));
  EXPECT_EQ(n->count(FG_SESSION_OPENED), opened);
  EXPECT_TRUE(n->hasLog("bad messages on this endpoint so far"));
  // A part over twice max_frame_bytes: libzmq drops that connection before the plugin sees it.
  {
    ZmqClient huge(n->endpoint);
    ASSERT_TRUE(huge.sendFrames({"PUB", "topic", std::string(64 * 1024, 'y')}));
    ASSERT_TRUE(good.barrier());
  }
  exchangeWorks(*n, good, "after-huge");
  EXPECT_FALSE(n->host.next(std::chrono::milliseconds(0)).has_value());
}

TEST(ZmqPlugin, RawGarbageOnThePortDoesNotHurt) {
  auto n = startBound();
  ZmqClient good(n->endpoint);
  exchangeWorks(*n, good, "before");
  const int port = std::stoi(n->endpoint.substr(n->endpoint.rfind(':') + 1));
  for (const std::string& junk : {std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), std::string(4096, '\xff'),
                                  std::string("\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x00NOPE", 16)}) {
    int fd = connectLoopback(port);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL), ssize_t(junk.size()));
    char buf[256];
    // libzmq answers with its greeting or closes; either way the exchange below must work.
    (void)::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    ::close(fd);
    exchangeWorks(*n, good, "after-junk-" + std::to_string(junk.size()));
  }
  EXPECT_FALSE(n->host.next(std::chrono::milliseconds(0)).has_value());
}

TEST(ZmqPlugin, PerSessionRetryAndWritableWakeup) {
  auto n = startBound({{"send_hwm", "4"}, {"session_buffer_bytes", "65536"}});
  ZmqClientOptions slow_opts;
  slow_opts.rcvhwm = 4;
  slow_opts.rcvbuf = 4096;
  ZmqClient slow(n->endpoint, slow_opts), fast(n->endpoint);
  const uint64_t slow_id = sessionOf(slow, *n, "slow"), fast_id = sessionOf(fast, *n, "fast");
  // The slow client does not read: its publishes end in FG_RETRY (bounded: 3000 x 16 KiB).
  const std::string big(16 * 1024, 's');
  std::vector<uint64_t> ids;
  fg_status st = FG_OK;
  for (uint64_t i = 0; i < 3000 && st == FG_OK; ++i) {
    st = n->publish("fin-slow", big, slow_id, 1000 + i);
    if (st == FG_OK) ids.push_back(1000 + i);
  }
  ASSERT_EQ(st, FG_RETRY) << "the session never filled up";
  // The other session is not held up: it gets all of its messages, in order.
  for (int i = 0; i < 200; ++i) ASSERT_EQ(n->publish("fin-fast", "f" + std::to_string(i), fast_id, 9000 + i), FG_OK);
  for (int i = 0; i < 200; ++i) {
    auto f = fast.recv();
    ASSERT_TRUE(f) << i;
    ASSERT_EQ(f->payload, "f" + std::to_string(i));
  }
  EXPECT_TRUE(waitFor([&] { return n->delivery(9199) == FG_DELIVERY_OK; }));
  // The slow client reads again: every accepted message arrives in order, and the plugin says
  // the session can take more.
  for (size_t i = 0; i < ids.size(); ++i) {
    auto f = slow.recv();
    ASSERT_TRUE(f) << "message " << i << " of " << ids.size();
    ASSERT_EQ(f->payload.size(), big.size());
  }
  EXPECT_TRUE(n->host.waitEvent(
      [&](const RecordingHost::Event& e) { return e.kind == FG_EVENT_SESSION_WRITABLE && e.session == slow_id; }));
  EXPECT_TRUE(waitFor([&] { return n->delivery(ids.back()) == FG_DELIVERY_OK; }));
  for (uint64_t id : ids) EXPECT_EQ(n->delivery(id), FG_DELIVERY_OK) << id;
  ASSERT_EQ(n->publish("fin-slow", "after", slow_id, 2), FG_OK);
  auto f = slow.recv();
  ASSERT_TRUE(f);
  EXPECT_EQ(f->payload, "after");
  EXPECT_FALSE(n->hasSession(slow_id, FG_SESSION_CLOSED));
}

TEST(ZmqPlugin, CloseSessionSendsErrAndFailsWhatItHeld) {
  auto n = startBound({{"send_hwm", "2"}});
  ASSERT_TRUE(n->inst->canCloseSession());
  ZmqClientOptions o;
  o.rcvhwm = 2;
  o.rcvbuf = 4096;
  ZmqClient slow(n->endpoint, o), other(n->endpoint);
  const uint64_t slow_id = sessionOf(slow, *n, "slow"), other_id = sessionOf(other, *n, "other");
  const std::string big(64 * 1024, 'z');
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 200; ++i) {
    if (n->publish("fin-slow", big, slow_id, 100 + i) != FG_OK) break;
    ids.push_back(100 + i);
  }
  ASSERT_FALSE(ids.empty());
  ASSERT_EQ(n->inst->closeSession(slow_id, "slow consumer: its queue stayed full"), FG_OK);
  EXPECT_TRUE(waitFor([&] { return n->hasSession(slow_id, FG_SESSION_CLOSED); }));
  EXPECT_EQ(n->publish("fin-slow", "late", slow_id, 99), FG_ERR_STATE);
  EXPECT_EQ(n->inst->closeSession(slow_id, "again"), FG_ERR_STATE);
  // Every delivery is settled: the ones handed to libzmq OK, the ones still held FAILED.
  EXPECT_TRUE(waitFor([&] {
    for (uint64_t id : ids)
      if (!n->delivery(id)) return false;
    return true;
  }));
  size_t failed = 0;
  for (uint64_t id : ids) failed += n->delivery(id) == FG_DELIVERY_FAILED;
  EXPECT_GT(failed, 0u);
  // The client reads what was on its way, then the ERR.
  std::optional<Msg> last;
  for (size_t i = 0; i <= ids.size(); ++i) {
    auto m = slow.recv();
    if (!m) break;
    last = m;
    if (m->verb == "ERR") break;
  }
  ASSERT_TRUE(last);
  EXPECT_EQ(last->verb, "ERR");
  EXPECT_EQ(last->payload, R"({"error":"slow consumer","detail":"its queue stayed full"})");
  exchangeWorks(*n, other, "other2");
  EXPECT_FALSE(n->hasSession(other_id, FG_SESSION_CLOSED));
}

TEST(ZmqPlugin, SilentPeersExpireAndReconnectingPeersAreNewSessions) {
  auto n = startBound({{"heartbeat_ms", "100"}});
  ZmqClient keeper(n->endpoint), quiet(n->endpoint);
  const uint64_t quiet_id = sessionOf(quiet, *n, "quiet");
  const uint64_t keeper_id = sessionOf(keeper, *n, "keeper");
  // keeper pings while quiet stays silent (bounded: at most 10 s).
  bool closed = false;
  for (int i = 0; i < 500 && !closed; ++i) {
    ASSERT_TRUE(keeper.barrier());
    closed = n->hasSession(quiet_id, FG_SESSION_CLOSED);
    if (!closed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(closed);
  EXPECT_FALSE(n->hasSession(keeper_id, FG_SESSION_CLOSED));
  // The still-connected silent client was told.
  EXPECT_TRUE(isErr(quiet.recv(), "heartbeat timeout"));
  EXPECT_EQ(n->publish("fin-quiet", "x", quiet_id), FG_ERR_STATE);
  // Talking again makes it a new session.
  const uint64_t again = sessionOf(quiet, *n, "back");
  EXPECT_NE(again, quiet_id);
  EXPECT_NE(again, 0u);
  ASSERT_EQ(n->publish("fin-quiet", "routed", again), FG_OK);
  auto m = quiet.recv();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "routed");
}

TEST(ZmqPlugin, ManyVanishingPeersLeaveNoState) {
  auto n = startBound({{"heartbeat_ms", "100"}, {"max_peers", "50"}});
  std::vector<uint64_t> ids;
  for (int i = 0; i < 40; ++i) {
    ZmqClient c(n->endpoint);
    ids.push_back(sessionOf(c, *n, "v" + std::to_string(i)));
  }  // each one closes its socket without a word
  EXPECT_TRUE(waitFor([&] {
    for (uint64_t id : ids)
      if (!n->hasSession(id, FG_SESSION_CLOSED)) return false;
    return true;
  }));
  // max_peers: with 50 live peers the 51st is refused with an ERR, not made a session.
  std::vector<std::unique_ptr<ZmqClient>> live;
  for (int i = 0; i < 50; ++i) {
    live.push_back(std::make_unique<ZmqClient>(n->endpoint));
    ASSERT_TRUE(live.back()->barrier());
  }
  ZmqClient extra(n->endpoint);
  ASSERT_TRUE(extra.send("PING", "", "hi"));
  EXPECT_TRUE(isErr(extra.recv(), "too many peers"));
  EXPECT_TRUE(n->hasLog("max_peers (50) reached"));
}

TEST(ZmqPlugin, CurveRefusesUnknownKeysAndAcceptsKnownOnes) {
  const CurveKeys server = curveKeypair(), known = curveKeypair(), unknown = curveKeypair();
  auto n = startBound({{"curve.server_secret_key", server.sec}, {"curve.allowed_client_keys", known.pub}});
  EXPECT_NE(n->host.stateDetail(FG_STATE_UP).find("(ZeroMQ ROUTER, CURVE)"), std::string::npos);
  EXPECT_TRUE(n->hasLog("server public key " + server.pub));
  ZmqClientOptions ok;
  ok.curve_server_key = server.pub;
  ok.curve_public_key = known.pub;
  ok.curve_secret_key = known.sec;
  ZmqClient good(n->endpoint, ok);
  exchangeWorks(*n, good, "curve");
  ZmqClientOptions bad = ok;
  bad.curve_public_key = unknown.pub;
  bad.curve_secret_key = unknown.sec;
  ZmqClient intruder(n->endpoint, bad);
  ASSERT_TRUE(intruder.send("PUB", "soarca", "intruder"));
  EXPECT_TRUE(waitFor([&] { return n->hasLog("CURVE client key " + unknown.pub + " from 127.0.0.1 is not allowed"); }));
  ZmqClient plain(n->endpoint);  // no CURVE at all
  ASSERT_TRUE(plain.send("PUB", "soarca", "plain"));
  exchangeWorks(*n, good, "curve2");
  EXPECT_FALSE(n->host.next(std::chrono::milliseconds(100)).has_value());  // neither got through
}

TEST(ZmqPlugin, ConnectModeDialsABoundPeer) {
  ZmqClientOptions o;
  o.bind = true;
  ZmqClient remote("tcp://127.0.0.1:*", o);
  Node n({{"connect", remote.endpoint()}});
  ASSERT_EQ(n.inst->start(), FG_OK);
  ASSERT_TRUE(n.host.waitState(FG_STATE_UP));
  // The remote speaks first: then it is a session like any other.
  const uint64_t s = sessionOf(remote, n, "remote");
  ASSERT_NE(s, 0u);
  ASSERT_TRUE(remote.barrier());
  ASSERT_EQ(n.publish("fin-remote", "hello", s, 5), FG_OK);
  auto m = remote.recv();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "hello");
  EXPECT_TRUE(waitFor([&] { return n.delivery(5) == FG_DELIVERY_OK; }));
}

TEST(ZmqPlugin, LifecycleAndConfiguration) {
  RecordingHost host;
  auto expectError = [&](const Cfg& cfg, const std::string& prefix) {
    try {
      PluginInstance inst(zmqLib(), host, cfg);
      ADD_FAILURE() << "accepted, expected an error starting with " << prefix;
    } catch (const PluginError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
    }
  };
  expectError({}, "bind: ");
  expectError({{"bind", "tcp://127.0.0.1:*"}, {"connect", "tcp://127.0.0.1:1"}}, "connect: ");
  expectError({{"bind", "127.0.0.1:7401"}}, "bind: ");
  expectError({{"bind", "udp://127.0.0.1:7401"}}, "bind: ");
  expectError({{"connect", "tcp://127.0.0.1:*"}}, "connect: ");
  expectError({{"bind", "tcp://127.0.0.1:*"}, {"heartbeat_ms", "0"}}, "heartbeat_ms: ");
  expectError({{"bind", "tcp://127.0.0.1:*"}, {"max_frame_bytes", "big"}}, "max_frame_bytes: ");
  expectError({{"bind", "tcp://127.0.0.1:*"}, {"bogus", "1"}}, "bogus: ");
  expectError({{"bind", "tcp://127.0.0.1:*"}, {"curve.server_secret_key", "short"}}, "curve.server_secret_key: ");
  expectError({{"bind", "tcp://127.0.0.1:*"}, {"curve.allowed_client_keys", curveKeypair().pub}},
              "curve.allowed_client_keys: ");
  expectError({{"bind", "tcp://127.0.0.1:*"},
               {"curve.server_secret_key", curveKeypair().sec},
               {"curve.allowed_client_keys", "nope"}},
              "curve.allowed_client_keys: ");
  expectError({{"bind", "tcp://127.0.0.1:*"},
               {"curve.server_secret_key", curveKeypair().sec},
               {"curve.allowed_clients_file", "/nonexistent/keys"}},
              "curve.allowed_clients_file: ");
  // The keys file: comments, blank lines, one key a line.
  const std::string dir = tempDir("zmq-keys");
  const CurveKeys k = curveKeypair();
  writeFile(dir + "/clients", "# fins\n\n" + k.pub + "\n");
  PluginInstance with_file(zmqLib(), host,
                           {{"bind", "tcp://127.0.0.1:*"},
                            {"curve.server_secret_key", curveKeypair().sec},
                            {"curve.allowed_clients_file", dir + "/clients"}});
  // start twice, stop twice; a busy address fails start().
  auto n = startBound();
  EXPECT_EQ(n->inst->start(), FG_ERR_STATE);
  Node clash({{"bind", n->endpoint}});
  EXPECT_NE(clash.inst->start(), FG_OK);
  EXPECT_EQ(n->inst->stop(1000), FG_OK);
  EXPECT_EQ(n->inst->stop(1000), FG_OK);
  EXPECT_TRUE(n->host.waitState(FG_STATE_STOPPED));
  EXPECT_EQ(n->publish("x", "y", 0), FG_ERR_STATE);
  auto m = startBound();  // destroyed while running, with a session open
  ZmqClient c(m->endpoint);
  exchangeWorks(*m, c, "bye");
}

}  // namespace
}  // namespace fingate::test
