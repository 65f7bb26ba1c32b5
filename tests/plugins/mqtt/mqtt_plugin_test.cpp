// The MQTT plugin against a real mosquitto (each test starts its own), with second plugin
// instances and mosquitto_pub/mosquitto_sub as the other clients.
#include <gtest/gtest.h>

#include "mosquitto.hpp"
#include "tcp_nodelay.hpp"
#include "test_support.hpp"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

namespace fingate::test {
namespace {

using Cfg = std::vector<std::pair<std::string, std::string>>;

fg_str S(const std::string& s) { return fg_str{s.data(), s.size()}; }

// RecordingHost that also keeps every state change in order.
class Host : public RecordingHost {
 public:
  void log(fg_log_level level, std::string_view msg) override {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0_).count();
    RecordingHost::log(level, "+" + std::to_string(ms) + "ms " + std::string(msg));
  }
  void onState(fg_state state, std::string_view detail) override {
    {
      std::lock_guard lk(mu_);
      seq_.emplace_back(state, std::string(detail));
    }
    RecordingHost::onState(state, detail);
  }
  std::vector<std::pair<fg_state, std::string>> states() {
    std::lock_guard lk(mu_);
    return seq_;
  }
  // Waits for a state whose detail contains `needle` (any detail when empty), reported at or
  // after position `from` of the sequence.
  bool waitFor(fg_state s, const std::string& needle = "", size_t from = 0, std::chrono::milliseconds t = 15s) {
    return fingate::test::waitFor([&] { return find(s, needle, from) >= 0; }, t);
  }
  long find(fg_state s, const std::string& needle = "", size_t from = 0) {
    std::lock_guard lk(mu_);
    for (size_t i = from; i < seq_.size(); ++i)
      if (seq_[i].first == s && seq_[i].second.find(needle) != std::string::npos) return static_cast<long>(i);
    return -1;
  }
  size_t count(fg_state s) {
    std::lock_guard lk(mu_);
    return static_cast<size_t>(std::count_if(seq_.begin(), seq_.end(), [&](auto& p) { return p.first == s; }));
  }
  bool hasLog(const std::string& needle) {
    for (auto& l : logs())
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }
  std::string allLogs() {
    std::string out;
    for (auto& l : logs()) out += l + "\n";
    return out;
  }
  bool waitDelivery(uint64_t id, std::chrono::milliseconds t = 10s) {
    return fingate::test::waitFor([&] { return deliveries().count(id) != 0; }, t);
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<fg_state, std::string>> seq_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

std::shared_ptr<PluginLibrary> lib() {
  static auto l = loadBuiltPlugin("mqtt");
  return l;
}

std::unique_ptr<PluginInstance> make(Host& h, const std::string& url, Cfg extra = {}) {
  Cfg cfg{{"url", url}, {"reconnect_min_ms", "50"}, {"reconnect_max_ms", "500"}};
  for (auto& kv : extra) {
    auto it = std::find_if(cfg.begin(), cfg.end(), [&](auto& p) { return p.first == kv.first; });
    if (it != cfg.end()) it->second = kv.second;
    else cfg.push_back(kv);
  }
  return std::make_unique<PluginInstance>(lib(), h, cfg);
}

// Starts and waits for UP.
std::unique_ptr<PluginInstance> up(Host& h, const std::string& url, Cfg extra = {}) {
  auto p = make(h, url, std::move(extra));
  EXPECT_EQ(p->start(), FG_OK);
  EXPECT_TRUE(h.waitFor(FG_STATE_UP)) << h.allLogs();
  return p;
}

// Two instances started together: paho's shared receive thread notices a new connection only
// when its poll (1 s) wakes up, so connecting them one after the other costs a second each.
std::pair<std::unique_ptr<PluginInstance>, std::unique_ptr<PluginInstance>> upPair(Host& ha, Host& hb, const std::string& url,
                                                                                  Cfg a_cfg = {}, Cfg b_cfg = {}) {
  auto a = make(ha, url, std::move(a_cfg));
  auto b = make(hb, url, std::move(b_cfg));
  EXPECT_EQ(a->start(), FG_OK);
  EXPECT_EQ(b->start(), FG_OK);
  EXPECT_TRUE(ha.waitFor(FG_STATE_UP)) << ha.allLogs();
  EXPECT_TRUE(hb.waitFor(FG_STATE_UP)) << hb.allLogs();
  return {std::move(a), std::move(b)};
}

fg_status pub(PluginInstance& p, const std::string& topic, const std::string& payload, uint64_t delivery = 0,
              const std::vector<fg_header>& headers = {}) {
  fg_message m{S(topic), S(payload), headers.empty() ? nullptr : headers.data(), headers.size(), 0, 0};
  return p.publish(m, delivery);
}

void subscribed(Host& h, PluginInstance& p, const std::string& filter, uint64_t id, size_t from = 0) {
  ASSERT_EQ(p.subscribe(filter, id), FG_OK);
  ASSERT_TRUE(h.waitFor(FG_STATE_SUBSCRIBED, std::to_string(id), from)) << h.allLogs();
}

std::string run(const std::vector<std::string>& argv, const std::string& dir, const std::string& name) {
  Process p(argv, dir + "/" + name + ".log");
  int rc = p.wait(20s);
  EXPECT_EQ(rc, 0) << name << ": " << p.log();
  return p.log();
}

// ---- plain round trips ---------------------------------------------------------------------

void roundTrip(const std::string& version, const std::string& expect_detail, bool expect_no_local) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url(), {{"mqtt_version", version}}, {{"mqtt_version", version}});
  std::string detail = ha.stateDetail(FG_STATE_UP);
  EXPECT_NE(detail.find(expect_detail), std::string::npos) << detail;
  EXPECT_EQ(detail.find("no-local") != std::string::npos, expect_no_local) << detail;

  auto vectors = loadVectors();
  ASSERT_FALSE(vectors.empty());
  subscribed(ha, *a, "#", 7);
  uint64_t delivery = 100;
  for (auto& v : vectors) ASSERT_EQ(pub(*b, v.topic, v.bytes, ++delivery), FG_OK);
  for (auto& v : vectors) {
    auto m = ha.next(10s);
    ASSERT_TRUE(m) << "missing " << v.file;
    EXPECT_EQ(m->sub_id, 7u);
    EXPECT_EQ(m->topic, v.topic);
    EXPECT_EQ(m->payload, v.bytes) << v.file;  // byte-identical
    EXPECT_EQ(m->session, 0u);
  }
  // QoS 1: every publish confirmed by a PUBACK.
  ASSERT_TRUE(fingate::test::waitFor([&] { return hb.deliveries().size() == vectors.size(); }));
  for (auto& [id, st] : hb.deliveries()) EXPECT_EQ(st, FG_DELIVERY_OK) << id;
  EXPECT_EQ(b->stop(2000), FG_OK);
  EXPECT_EQ(a->stop(2000), FG_OK);
  EXPECT_TRUE(ha.waitFor(FG_STATE_STOPPED));
}

TEST(MqttPlugin, RoundTripMqtt5) { roundTrip("5", "mqtt=5", true); }
TEST(MqttPlugin, RoundTripMqtt311) { roundTrip("3", "mqtt=3.1.1", false); }
TEST(MqttPlugin, AutoNegotiatesMqtt5WithMosquitto) { roundTrip("auto", "mqtt=5", true); }

TEST(MqttPlugin, Mqtt5UserPropertiesAreHeaders) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url());
  subscribed(ha, *a, "cap", 1);
  std::string k = "fin-topic", v = "cap";
  ASSERT_EQ(pub(*b, "cap", "{}", 0, {fg_header{S(k), S(v)}}), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  ASSERT_EQ(m->headers.size(), 1u);
  EXPECT_EQ(m->headers[0].first, "fin-topic");
  EXPECT_EQ(m->headers[0].second, "cap");
}

TEST(MqttPlugin, QoS0DeliveryReportedWhenSent) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url(), {{"qos", "0"}}, {{"qos", "0"}});
  subscribed(ha, *a, "q0", 1);
  ASSERT_EQ(pub(*b, "q0", "zero", 9), FG_OK);
  ASSERT_TRUE(hb.waitDelivery(9));
  EXPECT_EQ(hb.deliveries()[9], FG_DELIVERY_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "zero");
}

// ---- no-local ------------------------------------------------------------------------------

TEST(MqttPlugin, NoLocalOnMqtt5OwnPublishNotReceived) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url(), {{"mqtt_version", "5"}});
  subscribed(ha, *a, "cap-echo", 1);
  ASSERT_EQ(pub(*a, "cap-echo", "self", 1), FG_OK);
  ASSERT_TRUE(ha.waitDelivery(1));  // the broker has it (and routed it) before b publishes
  ASSERT_EQ(pub(*b, "cap-echo", "other", 2), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "other");  // an echo would have come first
  EXPECT_FALSE(ha.next(300ms));
}

TEST(MqttPlugin, Mqtt311EchoesOwnPublish) {
  // The other side of the coin: on 3.1.1 the host must suppress echoes itself (DESIGN §3).
  Mosquitto broker;
  Host ha;
  auto a = up(ha, broker.url(), {{"mqtt_version", "3"}});
  EXPECT_EQ(ha.stateDetail(FG_STATE_UP).find("no-local"), std::string::npos);
  subscribed(ha, *a, "cap-echo", 1);
  ASSERT_EQ(pub(*a, "cap-echo", "self"), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "self");
}

// ---- topics --------------------------------------------------------------------------------

TEST(MqttPlugin, TopicPrefixMapping) {
  Mosquitto broker;
  Host ha;
  auto a = up(ha, broker.url(), {{"topic_prefix", "fg/dev/"}});
  std::string dir = broker.dir();
  std::string port = std::to_string(broker.port());
  // A plain 3.1.1 client (like SOARCA) watching the whole prefix.
  Process sub({"/usr/bin/stdbuf", "-oL", "/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-V", "mqttv311", "-q", "1", "-d", "-v", "-t",
               "fg/dev/#", "-W", "20"},
              dir + "/sub.log");
  ASSERT_TRUE(sub.waitForLog("Subscribed", 10s)) << sub.log();
  subscribed(ha, *a, "soarca", 5);

  ASSERT_EQ(pub(*a, "cap-x", "{\"type\":\"ack\"}", 1), FG_OK);
  ASSERT_TRUE(sub.waitForLog("fg/dev/cap-x {\"type\":\"ack\"}", 10s)) << sub.log();

  // Unprefixed "soarca" is not ours; "fg/dev/soarca" arrives with the prefix stripped.
  run({"/usr/bin/mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1", "-t", "soarca", "-m", "1"}, dir, "pub1");
  run({"/usr/bin/mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "0", "-t", "fg/dev/soarca", "-m",
       "2"},
      dir, "pub2");
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->topic, "soarca");
  EXPECT_EQ(m->payload, "2");
  EXPECT_EQ(m->sub_id, 5u);
}

TEST(MqttPlugin, ExternalClientsInterop) {
  // SOARCA's shape (3.1.1, QoS 1) and the Python library's (MQTT 5, QoS 0) on the same broker.
  Mosquitto broker;
  Host ha;
  auto a = up(ha, broker.url());
  std::string dir = broker.dir();
  std::string port = std::to_string(broker.port());
  std::string reg = vectorBytes("01-a-register.json");
  Process sub({"/usr/bin/stdbuf", "-oL", "/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-V", "mqttv311", "-q", "1", "-d", "-t", "soarca",
               "-C", "1", "-W", "20"},
              dir + "/sub.log");
  ASSERT_TRUE(sub.waitForLog("Subscribed", 10s)) << sub.log();
  ASSERT_EQ(pub(*a, "soarca", reg, 1), FG_OK);
  ASSERT_EQ(sub.wait(15s), 0) << sub.log();
  EXPECT_NE(sub.log().find(reg), std::string::npos) << sub.log();
  EXPECT_NE(sub.log().find("r0"), std::string::npos) << "never retained: " << sub.log();

  subscribed(ha, *a, "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d", 3);
  std::string cmd = vectorBytes("03-a-command-auth.json");
  run({"/usr/bin/mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "0", "-t",
       "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d", "-m", cmd},
      dir, "pub5");
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, cmd);
  EXPECT_EQ(m->sub_id, 3u);
}

TEST(MqttPlugin, FirstMatchingSubscriptionWinsAndDeliversOnce) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url());
  subscribed(ha, *a, "fin/#", 1);
  subscribed(ha, *a, "fin/cap", 2);
  ASSERT_EQ(pub(*b, "fin/cap", "x"), FG_OK);
  ASSERT_EQ(pub(*b, "fin/other", "y"), FG_OK);
  auto m1 = ha.next(10s);
  ASSERT_TRUE(m1);
  EXPECT_EQ(m1->payload, "x");
  EXPECT_EQ(m1->sub_id, 1u);
  auto m2 = ha.next(10s);
  ASSERT_TRUE(m2);
  // Whatever the broker does with overlapping subscriptions, on_message ran at most once per copy;
  // mosquitto sends one copy, so the next one is "y".
  EXPECT_EQ(m2->payload, "y");
  EXPECT_EQ(m2->sub_id, 1u);
}

TEST(MqttPlugin, UnsubscribeStopsDelivery) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url());
  subscribed(ha, *a, "u1", 1);
  subscribed(ha, *a, "u2", 2);
  ASSERT_EQ(a->unsubscribe(1), FG_OK);
  EXPECT_EQ(a->unsubscribe(999), FG_OK);  // unknown id
  subscribed(ha, *a, "u3", 3);             // SUBACK after the UNSUBACK: the broker is up to date
  ASSERT_EQ(pub(*b, "u1", "gone"), FG_OK);
  ASSERT_EQ(pub(*b, "u2", "kept"), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "kept");
  EXPECT_EQ(m->sub_id, 2u);
}

TEST(MqttPlugin, RefusedSubscriptionReportsNothing) {
  for (std::string version : {"5", "3"}) {
    SCOPED_TRACE(version);
    // mosquitto's dynamic-security plugin refuses subscriptions its ACLs do not allow
    // (the plain acl_file only filters deliveries).
    MosquittoOptions o;
    Host ha;
    std::string dir = tempDir("dynsec");
    writeFile(dir + "/dynsec.json", R"({
  "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true, "subscribe": false, "unsubscribe": true},
  "clients": [],
  "groups": [{"groupname": "anon", "roles": [{"rolename": "ok-only"}], "clients": []}],
  "roles": [{"rolename": "ok-only", "acls": [{"acltype": "subscribePattern", "topic": "ok/#", "priority": 0, "allow": true}]}],
  "anonymousGroup": "anon"
})");
    o.extra = "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\nplugin_opt_config_file " + dir + "/dynsec.json\n";
    Mosquitto broker(o);
    auto a = up(ha, broker.url(), {{"mqtt_version", version}});
    ASSERT_EQ(a->subscribe("denied", 2), FG_OK);
    subscribed(ha, *a, "ok/x", 1);  // answered after "denied"
    EXPECT_LT(ha.find(FG_STATE_SUBSCRIBED, "2"), 0) << ha.allLogs();
    EXPECT_TRUE(ha.hasLog("refused the subscription to 'denied'")) << ha.allLogs();
  }
}

// ---- reconnects ----------------------------------------------------------------------------

TEST(MqttPlugin, BrokerKilledAndRestartedEverySubscriptionRestored) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url());
  subscribed(ha, *a, "cap-a", 1);
  ASSERT_EQ(pub(*b, "cap-a", "before", 1), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "before");

  broker.kill9();
  ASSERT_TRUE(ha.waitFor(FG_STATE_DOWN)) << ha.allLogs();
  ASSERT_TRUE(hb.waitFor(FG_STATE_DOWN)) << hb.allLogs();
  size_t down_at = static_cast<size_t>(ha.find(FG_STATE_DOWN));
  // Added while the broker is gone: must be subscribed after the reconnect as well.
  ASSERT_EQ(a->subscribe("cap-b", 2), FG_OK);
  // Queued while down, sent after the reconnect.
  ASSERT_EQ(pub(*b, "cap-a", "while-down", 2), FG_OK);

  broker.restart();
  ASSERT_TRUE(ha.waitFor(FG_STATE_RECONNECTED, "", down_at)) << ha.allLogs();
  ASSERT_TRUE(hb.waitFor(FG_STATE_RECONNECTED)) << hb.allLogs();
  EXPECT_GE(ha.find(FG_STATE_SUBSCRIBED, "2", down_at), 0);
  EXPECT_LT(ha.find(FG_STATE_SUBSCRIBED, "2", down_at), ha.find(FG_STATE_RECONNECTED, "", down_at))
      << "RECONNECTED only after every subscription is back";
  ASSERT_TRUE(hb.waitDelivery(2));
  EXPECT_EQ(hb.deliveries()[2], FG_DELIVERY_OK);

  // Not "connected but deaf": messages published after the restart arrive, on both filters.
  ASSERT_EQ(pub(*b, "cap-a", "after-a", 3), FG_OK);
  ASSERT_EQ(pub(*b, "cap-b", "after-b", 4), FG_OK);
  std::map<std::string, uint64_t> got;
  for (int i = 0; i < 5 && got.size() < 2; ++i) {
    auto x = ha.next(10s);
    if (!x) break;
    if (x->payload == "after-a" || x->payload == "after-b") got[x->payload] = x->sub_id;
  }
  ASSERT_EQ(got.size(), 2u) << ha.allLogs();
  EXPECT_EQ(got["after-a"], 1u);
  EXPECT_EQ(got["after-b"], 2u);
}

// This process's TCP sockets connected to `port`, each with its TCP_NODELAY value.
std::vector<int> noDelayOfSocketsTo(int port) {
  std::vector<int> out;
  forEachTcpSocketToPort(port, [&](int fd) {
    int v = -1;
    socklen_t vl = sizeof v;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &vl) == 0) out.push_back(v);
  });
  return out;
}

// paho never sets TCP_NODELAY; the plugin does, on every (re)connect, or a small publish waits
// for the broker's delayed ACK (tens of ms at QoS 0).
TEST(MqttPlugin, ConnectionsHaveNagleOffAlsoAfterAReconnect) {
  Mosquitto broker;
  Host h;
  auto p = up(h, broker.url());
  auto v = noDelayOfSocketsTo(broker.port());
  ASSERT_EQ(v.size(), 1u) << "one connection to the broker expected";
  EXPECT_NE(v[0], 0) << "TCP_NODELAY not set";

  broker.kill9();
  ASSERT_TRUE(h.waitFor(FG_STATE_DOWN)) << h.allLogs();
  size_t down_at = static_cast<size_t>(h.find(FG_STATE_DOWN));
  broker.restart();
  ASSERT_TRUE(h.waitFor(FG_STATE_RECONNECTED, "", down_at)) << h.allLogs();
  v = noDelayOfSocketsTo(broker.port());
  ASSERT_EQ(v.size(), 1u);
  EXPECT_NE(v[0], 0) << "TCP_NODELAY not set on the new connection";
  EXPECT_EQ(p->stop(2000), FG_OK);
}

TEST(MqttPlugin, InFlightPublishesSurviveABrokerRestart) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url());
  subscribed(ha, *a, "stream", 1);
  constexpr int kN = 300;
  for (int i = 0; i < kN / 2; ++i) ASSERT_EQ(pub(*b, "stream", std::to_string(i), 1000 + i), FG_OK);
  broker.kill9();
  for (int i = kN / 2; i < kN; ++i) ASSERT_EQ(pub(*b, "stream", std::to_string(i), 1000 + i), FG_OK);
  broker.restart();
  ASSERT_TRUE(hb.waitFor(FG_STATE_RECONNECTED)) << hb.allLogs();
  // Every publish is reported, and none was dropped: at least once, OK after the reconnect.
  ASSERT_TRUE(fingate::test::waitFor([&] { return hb.deliveries().size() == kN; }, 20s)) << hb.deliveries().size();
  size_t failed = 0;
  for (auto& [id, st] : hb.deliveries()) failed += st != FG_DELIVERY_OK;
  EXPECT_EQ(failed, 0u) << hb.allLogs();
}

TEST(MqttPlugin, FirstConnectRetriedUntilTheBrokerAppears) {
  int port = freePort();
  std::string url = "tcp://127.0.0.1:" + std::to_string(port);
  Host ha, hb;
  auto a = make(ha, url);
  auto b = make(hb, url);
  ASSERT_EQ(a->start(), FG_OK);  // not fatal
  ASSERT_EQ(b->start(), FG_OK);
  ASSERT_EQ(a->subscribe("late", 4), FG_OK);
  ASSERT_EQ(pub(*a, "early", "queued", 1), FG_OK);
  ASSERT_TRUE(ha.waitFor(FG_STATE_DOWN)) << ha.allLogs();
  EXPECT_LT(ha.find(FG_STATE_UP), 0);

  MosquittoOptions o;
  o.port = port;
  Mosquitto broker(o);
  ASSERT_TRUE(ha.waitFor(FG_STATE_UP)) << ha.allLogs();
  ASSERT_TRUE(hb.waitFor(FG_STATE_UP)) << hb.allLogs();
  EXPECT_GE(ha.find(FG_STATE_SUBSCRIBED, "4"), 0);
  EXPECT_LT(ha.find(FG_STATE_SUBSCRIBED, "4"), ha.find(FG_STATE_UP)) << "UP only after the subscriptions";
  ASSERT_TRUE(ha.waitDelivery(1));
  EXPECT_EQ(ha.deliveries()[1], FG_DELIVERY_OK);
  ASSERT_EQ(pub(*b, "late", "hello"), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "hello");
  EXPECT_EQ(m->sub_id, 4u);
}

TEST(MqttPlugin, QueueBoundWhileDisconnectedAnswersRetry) {
  Host h;
  auto p = make(h, "tcp://127.0.0.1:" + std::to_string(freePort()), {{"queue_max", "3"}});
  ASSERT_EQ(p->start(), FG_OK);
  for (uint64_t i = 1; i <= 3; ++i) EXPECT_EQ(pub(*p, "t", "x", i), FG_OK);
  EXPECT_EQ(pub(*p, "t", "x", 4), FG_RETRY);  // the host keeps it; nothing dropped
  EXPECT_EQ(p->stop(500), FG_OK);
  // What never reached a broker is reported FAILED at stop, not forgotten.
  auto d = h.deliveries();
  ASSERT_EQ(d.size(), 3u);
  for (auto& [id, st] : d) EXPECT_EQ(st, FG_DELIVERY_FAILED) << id;
}

TEST(MqttPlugin, ConnectRetryFalseFailsWithoutBroker) {
  Host ha;
  auto a = make(ha, "tcp://127.0.0.1:" + std::to_string(freePort()), {{"connect_retry", "false"}});
  ASSERT_EQ(a->start(), FG_OK);
  ASSERT_TRUE(ha.waitFor(FG_STATE_FAILED)) << ha.allLogs();
  EXPECT_EQ(a->stop(1000), FG_OK);
}

// ---- authentication ------------------------------------------------------------------------

TEST(MqttPlugin, WrongPasswordIsNotAuthorizedAndHealsWhenFixed) {
  MosquittoOptions o;
  std::string dir = tempDir("auth");
  o.password_file = dir + "/passwd";
  o.allow_anonymous = false;
  Mosquitto::writePasswordFile(o.password_file, "soarca", "password");
  Mosquitto broker(o);

  Host bad5, bad3, good, healing;
  auto p5 = make(bad5, broker.url(), {{"username", "soarca"}, {"password", "wrong"}});
  auto p3 = make(bad3, broker.url(), {{"username", "soarca"}, {"password", "wrong"}, {"mqtt_version", "3"}});
  auto g = make(good, broker.url(), {{"username", "soarca"}, {"password", "password"}});
  auto h = make(healing, broker.url(), {{"username", "soarca"}, {"password", "new-secret"}});
  for (auto* p : {p5.get(), p3.get(), g.get(), h.get()}) ASSERT_EQ(p->start(), FG_OK);
  ASSERT_TRUE(good.waitFor(FG_STATE_UP)) << good.allLogs();
  for (Host* bad : {&bad5, &bad3}) {
    ASSERT_TRUE(bad->waitFor(FG_STATE_FAILED)) << bad->allLogs();
    std::string detail = bad->stateDetail(FG_STATE_FAILED);
    EXPECT_NE(detail.find("not authorized"), std::string::npos) << detail;
    EXPECT_TRUE(bad->hasLog("not authorized")) << bad->allLogs();
    EXPECT_FALSE(bad->hasLog("wrong")) << "never log the password: " << bad->allLogs();
    EXPECT_LT(bad->find(FG_STATE_UP), 0);
  }
  EXPECT_NE(bad5.stateDetail(FG_STATE_FAILED).find("0x87"), std::string::npos);  // MQTT 5 reason code
  EXPECT_NE(bad3.stateDetail(FG_STATE_FAILED).find("0x05"), std::string::npos);  // 3.1.1 return code
  EXPECT_EQ(p5->stop(2000), FG_OK);
  EXPECT_EQ(p3->stop(2000), FG_OK);

  // It keeps retrying: fix the broker's password file and it comes up by itself.
  ASSERT_TRUE(healing.waitFor(FG_STATE_FAILED)) << healing.allLogs();
  Mosquitto::writePasswordFile(o.password_file, "soarca", "new-secret");
  broker.restart();
  ASSERT_TRUE(healing.waitFor(FG_STATE_UP, "", 0, 20s)) << healing.allLogs();
}

// ---- TLS -----------------------------------------------------------------------------------

struct Pki {
  std::string dir, ca, cert, key, other_ca;
};

Pki makePki() {
  Pki p;
  p.dir = tempDir("pki");
  auto ossl = [&](std::vector<std::string> args, const std::string& name) {
    args.insert(args.begin(), "/usr/bin/openssl");
    run(args, p.dir, name);
  };
  p.ca = p.dir + "/ca.crt";
  p.cert = p.dir + "/server.crt";
  p.key = p.dir + "/server.key";
  p.other_ca = p.dir + "/other-ca.crt";
  ossl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", p.dir + "/ca.key",
        "-out", p.ca, "-days", "2", "-subj", "/CN=fingate test CA"},
       "ca");
  ossl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
        p.dir + "/other-ca.key", "-out", p.other_ca, "-days", "2", "-subj", "/CN=some other CA"},
       "other-ca");
  ossl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", p.key, "-out",
        p.dir + "/server.csr", "-subj", "/CN=localhost"},
       "csr");
  writeFile(p.dir + "/ext.cnf", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  ossl({"x509", "-req", "-in", p.dir + "/server.csr", "-CA", p.ca, "-CAkey", p.dir + "/ca.key", "-CAcreateserial", "-out",
        p.cert, "-days", "2", "-extfile", p.dir + "/ext.cnf"},
       "sign");
  return p;
}

TEST(MqttPlugin, TlsRoundTripWithCaFile) {
  Pki pki = makePki();
  MosquittoOptions o;
  o.certfile = pki.cert;
  o.keyfile = pki.key;
  o.cafile = pki.ca;
  Mosquitto broker(o);
  ASSERT_EQ(broker.url().rfind("ssl://", 0), 0u);

  Host ha, hb, hc, hd;
  auto a = make(ha, broker.url(), {{"tls.ca_file", pki.ca}});
  auto b = make(hb, broker.url(), {{"tls.ca_file", pki.ca}, {"mqtt_version", "3"}});
  auto c = make(hc, broker.url(), {{"tls.ca_file", pki.other_ca}});  // a CA that did not sign it
  auto d = make(hd, broker.url(), {{"tls.verify", "false"}});           // no verification at all
  for (auto* p : {a.get(), b.get(), c.get(), d.get()}) ASSERT_EQ(p->start(), FG_OK);
  ASSERT_TRUE(ha.waitFor(FG_STATE_UP)) << ha.allLogs();
  ASSERT_TRUE(hb.waitFor(FG_STATE_UP)) << hb.allLogs();
  subscribed(ha, *a, "secure", 1);
  ASSERT_EQ(pub(*b, "secure", "over tls", 1), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "over tls");

  ASSERT_TRUE(hd.waitFor(FG_STATE_UP)) << hd.allLogs();
  // The unknown CA is refused: DOWN, never UP (a, b and d got through meanwhile).
  ASSERT_TRUE(hc.waitFor(FG_STATE_DOWN)) << hc.allLogs();
  EXPECT_LT(hc.find(FG_STATE_UP), 0) << hc.allLogs();
  EXPECT_TRUE(hc.hasLog("certificate verify failed")) << hc.allLogs();
  EXPECT_NE(hc.stateDetail(FG_STATE_DOWN).find("TLS: certificate verify failed"), std::string::npos) << hc.allLogs();
}

// ---- back-pressure -------------------------------------------------------------------------

void backPressure(int retries, const std::string& inflight_max) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url(), {{"inflight_max", inflight_max}});
  subscribed(ha, *a, "bp", 1);
  ha.retry_budget = retries;
  constexpr int kN = 40;
  for (int i = 0; i < kN; ++i) ASSERT_EQ(pub(*b, "bp", "m" + std::to_string(i)), FG_OK);
  for (int i = 0; i < kN; ++i) {
    auto m = ha.next(15s);
    ASSERT_TRUE(m) << "missing m" << i << "\n" << ha.allLogs();
    EXPECT_EQ(m->payload, "m" + std::to_string(i));  // in order
  }
  EXPECT_FALSE(ha.next(300ms)) << "delivered once";
  EXPECT_EQ(ha.retry_budget.load(), 0);
}

TEST(MqttPlugin, HostRetryKeepsMessagesInOrderOnce) { backPressure(25, "10000"); }

TEST(MqttPlugin, FullHoldBlocksButDropsNothing) { backPressure(150, "2"); }

// ---- MQTT 5 -> 3.1.1 fallback, through a proxy that plays an old 3.1.1-only broker -----------

// Answers an MQTT 5 CONNECT the way a 3.1.1-only broker does (CONNACK "unacceptable protocol
// version", then close) and relays every other connection to the real broker.
class V311OnlyProxy {
 public:
  explicit V311OnlyProxy(int upstream) : upstream_(upstream) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 16);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { acceptLoop(); });
  }
  ~V311OnlyProxy() {
    stop_ = true;
    thread_.join();
    for (auto& t : relays_) t.join();
    ::close(fd_);
  }
  int port() const { return port_; }
  int refused() const { return refused_; }

 private:
  static bool readN(int fd, char* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 5000) <= 0) return false;
      ssize_t r = ::recv(fd, buf + got, n - got, 0);
      if (r <= 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  }
  void acceptLoop() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = ::accept(fd_, nullptr, nullptr);
      if (c >= 0) relays_.emplace_back([this, c] { handle(c); });
    }
  }
  void handle(int c) {
    // Fixed header, remaining length (varint), then the CONNECT body.
    std::string head(1, '\0');
    if (!readN(c, head.data(), 1)) return (void)::close(c);
    uint32_t remaining = 0;
    for (int shift = 0; shift < 28; shift += 7) {
      char b;
      if (!readN(c, &b, 1)) return (void)::close(c);
      head.push_back(b);
      remaining |= static_cast<uint32_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    std::string body(remaining, '\0');
    if (!readN(c, body.data(), remaining) || body.size() < 7) return (void)::close(c);
    if (body[6] == 5) {
      const char connack[] = {0x20, 0x02, 0x00, 0x01};
      ::send(c, connack, sizeof connack, MSG_NOSIGNAL);
      ++refused_;
      ::close(c);
      return;
    }
    int u = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(upstream_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(u);
      ::close(c);
      return;
    }
    std::string first = head + body;
    ::send(u, first.data(), first.size(), MSG_NOSIGNAL);
    char buf[65536];
    while (!stop_) {
      pollfd ps[2] = {{c, POLLIN, 0}, {u, POLLIN, 0}};
      if (::poll(ps, 2, 50) <= 0) continue;
      bool closed = false;
      for (int i = 0; i < 2; ++i) {
        if (!(ps[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t r = ::recv(ps[i].fd, buf, sizeof buf, 0);
        if (r <= 0 || ::send(ps[1 - i].fd, buf, static_cast<size_t>(r), MSG_NOSIGNAL) != r) closed = true;
      }
      if (closed) break;
    }
    ::close(u);
    ::close(c);
  }

  int upstream_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> refused_{0};
  std::thread thread_;
  std::vector<std::thread> relays_;  // only touched by the accept thread until it is joined
};

TEST(MqttPlugin, AutoFallsBackTo311WhenTheBrokerRefuses5) {
  Mosquitto broker;
  V311OnlyProxy proxy(broker.port());
  std::string url = "tcp://127.0.0.1:" + std::to_string(proxy.port());
  Host ha, hb, hc;
  auto a = make(ha, url);                              // auto
  auto b = make(hb, broker.url());                     // the other side, direct
  auto c = make(hc, url, {{"mqtt_version", "5"}});     // 5 only: never comes up there
  for (auto* p : {a.get(), b.get(), c.get()}) ASSERT_EQ(p->start(), FG_OK);
  ASSERT_TRUE(ha.waitFor(FG_STATE_UP)) << ha.allLogs();
  ASSERT_TRUE(hb.waitFor(FG_STATE_UP)) << hb.allLogs();
  EXPECT_NE(ha.stateDetail(FG_STATE_UP).find("mqtt=3.1.1"), std::string::npos) << ha.stateDetail(FG_STATE_UP);
  EXPECT_EQ(ha.stateDetail(FG_STATE_UP).find("no-local"), std::string::npos);
  EXPECT_TRUE(ha.hasLog("trying MQTT 3.1.1")) << ha.allLogs();
  EXPECT_GE(proxy.refused(), 1);
  subscribed(ha, *a, "old", 1);
  ASSERT_EQ(pub(*b, "old", "via 3.1.1"), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "via 3.1.1");

  ASSERT_TRUE(hc.waitFor(FG_STATE_DOWN)) << hc.allLogs();
  EXPECT_LT(hc.find(FG_STATE_UP), 0);
  c.reset();
  a.reset();
}

// ---- lifecycle and configuration -----------------------------------------------------------

TEST(MqttPlugin, StopFlushesAndReportsEveryDelivery) {
  Mosquitto broker;
  Host hb;
  auto b = up(hb, broker.url());
  constexpr int kN = 200;
  for (int i = 1; i <= kN; ++i) ASSERT_EQ(pub(*b, "flush", std::to_string(i), i), FG_OK);
  EXPECT_EQ(b->stop(5000), FG_OK);
  EXPECT_EQ(b->stop(5000), FG_OK);  // idempotent
  auto d = hb.deliveries();
  EXPECT_EQ(d.size(), static_cast<size_t>(kN));
  EXPECT_EQ(pub(*b, "flush", "late"), FG_ERR_STATE);
  EXPECT_TRUE(hb.waitFor(FG_STATE_STOPPED));
}

TEST(MqttPlugin, DestroyWithoutStopIsSafe) {
  Mosquitto broker;
  {
    Host ha;
    auto a = up(ha, broker.url());
    subscribed(ha, *a, "x", 1);
    ASSERT_EQ(pub(*a, "x", "y", 1), FG_OK);
  }  // destroyed while connected
  {
    Host hc;
    auto c = make(hc, "tcp://127.0.0.1:" + std::to_string(freePort()));
    ASSERT_EQ(c->start(), FG_OK);
    EXPECT_EQ(c->start(), FG_ERR_STATE);
  }  // destroyed while connecting
  {
    Host hn;
    auto n = make(hn, broker.url());
  }  // never started
  SUCCEED();
}

TEST(MqttPlugin, ConfigErrorsNameTheKey) {
  Host h;
  auto err = [&](Cfg cfg) -> std::string {
    try {
      PluginInstance p(lib(), h, cfg);
    } catch (const PluginError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(err({}).find("url"), std::string::npos);
  EXPECT_NE(err({{"url", "http://x:1"}}).find("url:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://:1883"}}).find("url:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:99999"}}).find("url:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"qos", "2"}}).find("qos:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"mqtt_version", "4.5"}}).find("mqtt_version:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"tls.ca_file", "/x"}}).find("tls.ca_file:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"topic_prefix", "a/#/"}}).find("topic_prefix:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"clean_session", "false"}}).find("clean_session:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"password", "x"}}).find("password:"), std::string::npos);
  EXPECT_EQ(err({{"url", "ssl://h:8883"}, {"tls.ca_file", "/x"}, {"tls.verify", "false"}}), "");
  EXPECT_EQ(err({{"url", "mqtt://localhost:1883"}}), "");  // SOARCA's spelling

  EXPECT_TRUE(lib()->acceptsKey("tls.ca_file"));
  EXPECT_FALSE(lib()->acceptsKey("tls.bogus"));
  EXPECT_EQ(lib()->capabilities() & FG_CAP_NO_LOCAL, 0u);  // negotiated per connection: see the UP detail
  EXPECT_NE(lib()->capabilities() & FG_CAP_SUBSCRIBE_ACK, 0u);
  EXPECT_NE(lib()->capabilities() & FG_CAP_DELIVERY, 0u);

  auto p = make(h, "tcp://127.0.0.1:1");
  EXPECT_EQ(pub(*p, "a/+", "x"), FG_ERR_INVALID_ARG);
  EXPECT_EQ(pub(*p, "", "x"), FG_ERR_INVALID_ARG);
  EXPECT_EQ(p->subscribe("a/#/b", 1), FG_ERR_INVALID_ARG);
  EXPECT_EQ(pub(*p, "ok", "x"), FG_ERR_STATE);  // not started
}

}  // namespace
}  // namespace fingate::test
