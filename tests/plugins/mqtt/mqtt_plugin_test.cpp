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
#include <cstddef>
#include <optional>
#include <set>
#include <thread>

namespace fingate::test {
namespace {

using Cfg = std::vector<std::pair<std::string, std::string>>;

fg_str S(const std::string& s) { return fg_str{s.data(), s.size()}; }

// A 1.1 host: RecordingHost (messages, deliveries, logs) plus one timeline of every state change
// and typed event in order, outcome tokens (acked once each, from another thread, by the
// Instance below), and a switch that makes on_message answer RETRY.
class Host : public RecordingHost {
 public:
  struct Entry {
    bool is_event = false;
    fg_state state = 0;      // state changes
    fg_event_kind kind = 0;  // events
    uint64_t sub_id = 0;
    fg_status status = 0;
    uint32_t flags = 0;
    std::string detail;
  };

  void log(fg_log_level level, std::string_view msg) override {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0_).count();
    RecordingHost::log(level, "+" + std::to_string(ms) + "ms " + std::string(msg));
  }
  void onState(fg_state state, std::string_view detail) override {
    {
      std::lock_guard lk(mu_);
      Entry e;
      e.state = state;
      e.detail = std::string(detail);
      seq_.push_back(std::move(e));
    }
    RecordingHost::onState(state, detail);
  }
  // host_api.on_event
  void onEvent(const fg_event& ev) override {
    RecordingHost::onEvent(ev);
    std::lock_guard lk(mu_);
    Entry e;
    e.is_event = true;
    e.kind = ev.kind;
    e.sub_id = ev.sub_id;
    e.status = ev.status;
    e.flags = ev.flags;
    e.detail = ev.detail ? ev.detail : "";
    seq_.push_back(std::move(e));
  }
  // host_api.on_message_tracked (token != 0) and on_message (token 0)
  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) override {
    if (hold_back.load()) {
      ++retries_;
      return FG_RETRY;
    }
    fg_status st = RecordingHost::onMessage(sub_id, msg, token);  // records it (or RETRY on its budget)
    if (st != FG_OK) return st;
    std::string payload(msg.payload.data ? msg.payload.data : "", msg.payload.len);
    {
      std::lock_guard lk(mu_);
      tokens_.push_back(token);
      if (token) to_ack_.emplace_back(token, outcome ? outcome(payload) : FG_OUTCOME_DELIVERED);
    }
    ack_cv_.notify_all();
    return FG_OK;
  }
  // For the Instance's acker thread: the next token to ack.
  bool popAck(uint64_t& token, fg_outcome& outcome, std::chrono::milliseconds wait) {
    std::unique_lock lk(mu_);
    if (!ack_cv_.wait_for(lk, wait, [&] { return !to_ack_.empty(); })) return false;
    std::tie(token, outcome) = to_ack_.front();
    to_ack_.pop_front();
    return true;
  }
  void acked() { ++acks_; }

  std::vector<uint64_t> tokens() {
    std::lock_guard lk(mu_);
    return tokens_;
  }
  size_t acks() const { return acks_.load(); }
  size_t retries() const { return retries_.load(); }

  std::vector<Entry> timeline() {
    std::lock_guard lk(mu_);
    return seq_;
  }
  size_t size() {
    std::lock_guard lk(mu_);
    return seq_.size();
  }
  // Waits for a state whose detail contains `needle` (any detail when empty), reported at or
  // after position `from` of the timeline.
  bool waitFor(fg_state s, const std::string& needle = "", size_t from = 0, std::chrono::milliseconds t = 15s) {
    return fingate::test::waitFor([&] { return find(s, needle, from) >= 0; }, t);
  }
  long find(fg_state s, const std::string& needle = "", size_t from = 0) {
    return findIf(from, [&](const Entry& e) { return !e.is_event && e.state == s && e.detail.find(needle) != std::string::npos; });
  }
  size_t count(fg_state s) {
    std::lock_guard lk(mu_);
    return static_cast<size_t>(std::count_if(seq_.begin(), seq_.end(), [&](auto& e) { return !e.is_event && e.state == s; }));
  }
  // FG_EVENT_SUBSCRIPTION for sub_id (with status `status`, any when kAny) at or after `from`.
  static constexpr fg_status kAny = -1;
  long findSub(uint64_t sub_id, fg_status status = kAny, size_t from = 0) {
    return findIf(from, [&](const Entry& e) {
      return e.is_event && e.kind == FG_EVENT_SUBSCRIPTION && e.sub_id == sub_id && (status == kAny || e.status == status);
    });
  }
  bool waitSub(uint64_t sub_id, fg_status status = kAny, size_t from = 0, std::chrono::milliseconds t = 15s) {
    return fingate::test::waitFor([&] { return findSub(sub_id, status, from) >= 0; }, t);
  }
  std::optional<Entry> sub(uint64_t sub_id, size_t from = 0) {
    long i = findSub(sub_id, kAny, from);
    if (i < 0) return std::nullopt;
    return timeline()[static_cast<size_t>(i)];
  }
  size_t subEvents(uint64_t sub_id) {
    std::lock_guard lk(mu_);
    return static_cast<size_t>(std::count_if(seq_.begin(), seq_.end(), [&](auto& e) {
      return e.is_event && e.kind == FG_EVENT_SUBSCRIPTION && e.sub_id == sub_id;
    }));
  }
  // The last FG_EVENT_CONNECTION before position `before` (-1: none).
  long connBefore(long before) {
    std::lock_guard lk(mu_);
    for (long i = std::min<long>(before, static_cast<long>(seq_.size())) - 1; i >= 0; --i)
      if (seq_[i].is_event && seq_[i].kind == FG_EVENT_CONNECTION) return i;
    return -1;
  }
  Entry at(long i) { return timeline().at(static_cast<size_t>(i)); }

  bool hasLog(const std::string& needle) {
    for (auto& l : logs())
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }
  size_t countLogs(const std::string& needle) {
    size_t n = 0;
    for (auto& l : logs()) n += l.find(needle) != std::string::npos;
    return n;
  }
  std::string logLine(const std::string& needle) {
    for (auto& l : logs())
      if (l.find(needle) != std::string::npos) return l;
    return "";
  }
  std::string allLogs() {
    std::string out;
    for (auto& l : logs()) out += l + "\n";
    return out;
  }
  // Every log line, state detail and event detail: for "never print the password".
  std::string everything() {
    std::string out = allLogs();
    for (auto& e : timeline()) out += e.detail + "\n";
    return out;
  }
  bool waitDelivery(uint64_t id, std::chrono::milliseconds t = 10s) {
    return fingate::test::waitFor([&] { return deliveries().count(id) != 0; }, t);
  }

  std::atomic<bool> hold_back{false};                     // on_message answers RETRY while set
  std::function<fg_outcome(const std::string&)> outcome;  // by payload; default DELIVERED

 private:
  long findIf(size_t from, const std::function<bool(const Entry&)>& pred) {
    std::lock_guard lk(mu_);
    for (size_t i = from; i < seq_.size(); ++i)
      if (pred(seq_[i])) return static_cast<long>(i);
    return -1;
  }

  std::mutex mu_;
  std::condition_variable ack_cv_;
  std::vector<Entry> seq_;
  std::vector<uint64_t> tokens_;
  std::deque<std::pair<uint64_t, fg_outcome>> to_ack_;
  std::atomic<size_t> acks_{0};
  std::atomic<size_t> retries_{0};
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

// One plugin instance behind a 1.1 host API table (or, with legacy, a 1.0 one: the table ends
// before on_message_tracked). Its own acker thread acks every token the host took, once.
class Instance {
 public:
  Instance(std::shared_ptr<PluginLibrary> lib, Host& host, const Cfg& cfg, bool legacy = false)
      : lib_(std::move(lib)), host_(host) {
    api_.struct_size = legacy ? static_cast<uint32_t>(offsetof(fg_host_api, on_message_tracked)) : sizeof(fg_host_api);
    api_.abi_version = legacy ? (1u << 16) : FG_ABI_VERSION;
    api_.log = [](void* c, fg_log_level l, const char* m) { self(c).log(l, m ? m : ""); };
    api_.on_message = [](void* c, uint64_t id, const fg_message* m) { return self(c).onMessage(id, *m, 0); };
    api_.on_delivery = [](void* c, uint64_t id, fg_delivery st) { self(c).onDelivery(id, st); };
    api_.on_state = [](void* c, fg_state st, const char* d) { self(c).onState(st, d ? d : ""); };
    api_.on_session = [](void* c, uint64_t s, fg_session_event e) { self(c).onSession(s, e); };
    if (!legacy) {
      api_.on_message_tracked = [](void* c, uint64_t id, const fg_message* m, uint64_t token) {
        return self(c).onMessage(id, *m, token);
      };
      api_.on_event = [](void* c, const fg_event* ev) { self(c).onEvent(*ev); };
    }
    std::vector<fg_kv> kv;
    for (auto& [k, v] : cfg) kv.push_back(fg_kv{k.c_str(), v.c_str()});
    char err[512] = {0};
    inst_ = desc().create(&api_, &host_, kv.data(), kv.size(), err, sizeof err);
    if (!inst_) throw PluginError(err[0] ? err : "create failed without a message");
    acker_ = std::thread([this] {
      while (!quit_) {
        uint64_t token;
        fg_outcome outcome;
        if (!host_.popAck(token, outcome, 20ms)) continue;
        if (desc().struct_size >= offsetof(fg_plugin, ack) + sizeof(void*) && desc().ack) desc().ack(inst_, token, outcome);
        host_.acked();
      }
    });
  }
  ~Instance() {
    quit_ = true;
    acker_.join();
    desc().destroy(inst_);
  }
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;

  fg_status start() { return desc().start(inst_); }
  fg_status stop(uint32_t timeout_ms) { return desc().stop(inst_, timeout_ms); }
  fg_status publish(const fg_message& m, uint64_t delivery_id = 0) { return desc().publish(inst_, &m, delivery_id); }
  fg_status subscribe(std::string_view filter, uint64_t id) { return desc().subscribe(inst_, fg_str{filter.data(), filter.size()}, id); }
  fg_status unsubscribe(uint64_t id) { return desc().unsubscribe(inst_, id); }

 private:
  static Host& self(void* c) { return *static_cast<Host*>(c); }
  const fg_plugin& desc() const { return lib_->descriptor(); }
  std::shared_ptr<PluginLibrary> lib_;
  Host& host_;
  fg_host_api api_{};
  fg_instance* inst_ = nullptr;
  std::atomic<bool> quit_{false};
  std::thread acker_;
};

std::shared_ptr<PluginLibrary> lib() {
  static auto l = loadBuiltPlugin("mqtt");
  return l;
}

std::unique_ptr<Instance> make(Host& h, const std::string& url, Cfg extra = {}, bool legacy = false) {
  Cfg cfg{{"url", url}, {"reconnect_min_ms", "50"}, {"reconnect_max_ms", "500"}};
  for (auto& kv : extra) {
    auto it = std::find_if(cfg.begin(), cfg.end(), [&](auto& p) { return p.first == kv.first; });
    if (it != cfg.end()) it->second = kv.second;
    else cfg.push_back(kv);
  }
  return std::make_unique<Instance>(lib(), h, cfg, legacy);
}

// Starts and waits for UP.
std::unique_ptr<Instance> up(Host& h, const std::string& url, Cfg extra = {}) {
  auto p = make(h, url, std::move(extra));
  EXPECT_EQ(p->start(), FG_OK);
  EXPECT_TRUE(h.waitFor(FG_STATE_UP)) << h.allLogs();
  return p;
}

// Two instances started together: paho's shared receive thread notices a new connection only
// when its poll (1 s) wakes up, so connecting them one after the other costs a second each.
std::pair<std::unique_ptr<Instance>, std::unique_ptr<Instance>> upPair(Host& ha, Host& hb, const std::string& url,
                                                                                  Cfg a_cfg = {}, Cfg b_cfg = {}) {
  auto a = make(ha, url, std::move(a_cfg));
  auto b = make(hb, url, std::move(b_cfg));
  EXPECT_EQ(a->start(), FG_OK);
  EXPECT_EQ(b->start(), FG_OK);
  EXPECT_TRUE(ha.waitFor(FG_STATE_UP)) << ha.allLogs();
  EXPECT_TRUE(hb.waitFor(FG_STATE_UP)) << hb.allLogs();
  return {std::move(a), std::move(b)};
}

fg_status pub(Instance& p, const std::string& topic, const std::string& payload, uint64_t delivery = 0,
              const std::vector<fg_header>& headers = {}) {
  fg_message m{S(topic), S(payload), headers.empty() ? nullptr : headers.data(), headers.size(), 0, 0};
  return p.publish(m, delivery);
}

// Subscribes and waits until the subscription is settled as granted.
void subscribed(Host& h, Instance& p, const std::string& filter, uint64_t id) {
  size_t from = h.size();
  ASSERT_EQ(p.subscribe(filter, id), FG_OK);
  ASSERT_TRUE(h.waitSub(id, Host::kAny, from)) << h.allLogs();
  auto e = h.sub(id, from);
  ASSERT_EQ(e->status, FG_OK) << e->detail;
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
  // The same fact, typed, before UP.
  for (Host* h : {&ha, &hb}) {
    long up_at = h->find(FG_STATE_UP);
    long conn = h->connBefore(up_at);
    ASSERT_GE(conn, 0) << "no FG_EVENT_CONNECTION before UP";
    EXPECT_EQ((h->at(conn).flags & FG_CONN_NO_LOCAL) != 0, expect_no_local);
  }

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
  long conn = ha.connBefore(ha.find(FG_STATE_UP));
  ASSERT_GE(conn, 0);
  EXPECT_EQ(ha.at(conn).flags & FG_CONN_NO_LOCAL, 0u);
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

// A broker whose dynamic-security plugin lets clients subscribe to ok/# only. mosquitto 2.0.11
// (Debian 12) answers a denied SUBSCRIBE with SUBACK 0x87 (not authorized) on MQTT 5 and 0x80
// (failure) on 3.1.1.
MosquittoOptions denyAllButOk() {
  MosquittoOptions o;
  std::string dir = tempDir("dynsec");
  writeFile(dir + "/dynsec.json", R"({
  "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true, "subscribe": false, "unsubscribe": true},
  "clients": [],
  "groups": [{"groupname": "anon", "roles": [{"rolename": "ok-only"}], "clients": []}],
  "roles": [{"rolename": "ok-only", "acls": [{"acltype": "subscribePattern", "topic": "ok/#", "priority": 0, "allow": true}]}],
  "anonymousGroup": "anon"
})");
  o.extra = "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so\nplugin_opt_config_file " + dir + "/dynsec.json\n";
  return o;
}

TEST(MqttPlugin, RefusedSubscriptionIsSettledAsRefused) {
  for (auto [version, code] : {std::pair<std::string, std::string>{"5", "0x87"}, {"3", "0x80"}}) {
    SCOPED_TRACE(version);
    Mosquitto broker(denyAllButOk());
    Host ha;
    auto a = up(ha, broker.url(), {{"mqtt_version", version}});
    size_t from = ha.size();
    ASSERT_EQ(a->subscribe("denied", 2), FG_OK);
    subscribed(ha, *a, "ok/x", 1);  // answered after "denied"
    auto refused = ha.sub(2, from);
    ASSERT_TRUE(refused) << ha.allLogs();
    EXPECT_EQ(refused->status, FG_ERR_STATE);
    EXPECT_NE(refused->detail.find("refused the subscription to 'denied'"), std::string::npos) << refused->detail;
    EXPECT_NE(refused->detail.find(code), std::string::npos) << refused->detail;
    EXPECT_EQ(ha.subEvents(2), 1u);
    EXPECT_EQ(ha.subEvents(1), 1u);
    EXPECT_TRUE(ha.hasLog("refused the subscription to 'denied'")) << ha.allLogs();
    EXPECT_EQ(ha.count(FG_STATE_SUBSCRIBED), 0u) << "1.1 hosts get typed events, not the 1.0 state";
  }
}

// mosquitto's plain acl_file does not refuse a SUBSCRIBE: 2.0.11 grants it (SUBACK QoS 1 on
// MQTT 5 and 3.1.1 alike) and then withholds the messages. So the subscription is settled OK;
// the denial shows only as silence. (A refusal needs the dynamic-security plugin, above.)
TEST(MqttPlugin, AclFileDenialIsGrantedButSilent) {
  MosquittoOptions o;
  std::string dir = tempDir("acl");
  o.acl_file = dir + "/acl";
  o.password_file = dir + "/passwd";
  o.allow_anonymous = false;
  writeFile(o.acl_file, "user soarca\ntopic readwrite ok/#\nuser admin\ntopic readwrite #\n");
  Mosquitto::writePasswordFile(o.password_file, "soarca", "password");
  Process more({"/usr/bin/mosquitto_passwd", "-b", o.password_file, "admin", "admin-pw"}, dir + "/passwd2.log");
  ASSERT_EQ(more.wait(10s), 0) << more.log();
  Mosquitto broker(o);
  for (std::string version : {"5", "3"}) {
    SCOPED_TRACE(version);
    Host ha, hb;
    auto [a, b] = upPair(ha, hb, broker.url(), {{"username", "soarca"}, {"password", "password"}, {"mqtt_version", version}},
                         {{"username", "admin"}, {"password", "admin-pw"}});
    subscribed(ha, *a, "denied", 1);  // granted by the SUBACK
    subscribed(ha, *a, "ok/y", 2);
    ASSERT_EQ(pub(*b, "denied", "never"), FG_OK);
    ASSERT_EQ(pub(*b, "ok/y", "yes"), FG_OK);
    auto m = ha.next(10s);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->payload, "yes");
  }
}

// Subscriptions made while the broker was away are settled by the restore, before RECONNECTED:
// granted or refused. Settled ones are not reported again.
TEST(MqttPlugin, PendingSubscriptionsSettleOnReconnect) {
  Mosquitto broker(denyAllButOk());
  Host ha;
  auto a = up(ha, broker.url());
  subscribed(ha, *a, "ok/a", 1);
  broker.kill9();
  ASSERT_TRUE(ha.waitFor(FG_STATE_DOWN)) << ha.allLogs();
  size_t down_at = static_cast<size_t>(ha.find(FG_STATE_DOWN));
  ASSERT_EQ(a->subscribe("ok/b", 2), FG_OK);
  ASSERT_EQ(a->subscribe("denied", 3), FG_OK);
  broker.restart();
  ASSERT_TRUE(ha.waitFor(FG_STATE_RECONNECTED, "", down_at)) << ha.allLogs();
  long rec = ha.find(FG_STATE_RECONNECTED, "", down_at);
  long ok = ha.findSub(2, FG_OK, down_at);
  long refused = ha.findSub(3, FG_ERR_STATE, down_at);
  ASSERT_GE(ok, 0) << ha.allLogs();
  ASSERT_GE(refused, 0) << ha.allLogs();
  EXPECT_LT(ok, rec);
  EXPECT_LT(refused, rec);
  long conn = ha.connBefore(rec);
  EXPECT_GT(conn, static_cast<long>(down_at)) << "FG_EVENT_CONNECTION before RECONNECTED";
  EXPECT_NE(ha.at(conn).flags & FG_CONN_NO_LOCAL, 0u);
  EXPECT_EQ(ha.subEvents(1), 1u) << "already settled: not repeated";
  EXPECT_EQ(ha.subEvents(2), 1u);
  EXPECT_EQ(ha.subEvents(3), 1u);
}

// A 1.0 host (its table ends before on_message_tracked): confirmations as FG_STATE_SUBSCRIBED,
// messages through on_message, nothing else changes.
TEST(MqttPlugin, OldHostGetsSubscribedStates) {
  Mosquitto broker(denyAllButOk());
  Host ha, hb;
  auto a = make(ha, broker.url(), {}, /*legacy=*/true);
  auto b = make(hb, broker.url());
  ASSERT_EQ(a->start(), FG_OK);
  ASSERT_EQ(b->start(), FG_OK);
  ASSERT_TRUE(ha.waitFor(FG_STATE_UP)) << ha.allLogs();
  ASSERT_TRUE(hb.waitFor(FG_STATE_UP)) << hb.allLogs();
  EXPECT_NE(ha.stateDetail(FG_STATE_UP).find("no-local"), std::string::npos);
  ASSERT_EQ(a->subscribe("denied", 2), FG_OK);
  ASSERT_EQ(a->subscribe("ok/1", 1), FG_OK);
  ASSERT_TRUE(ha.waitFor(FG_STATE_SUBSCRIBED, "1")) << ha.allLogs();
  EXPECT_LT(ha.find(FG_STATE_SUBSCRIBED, "2"), 0);
  for (auto& e : ha.timeline()) EXPECT_FALSE(e.is_event);
  ASSERT_EQ(pub(*b, "ok/1", "old"), FG_OK);
  auto m = ha.next(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "old");
  ASSERT_TRUE(fingate::test::waitFor([&] { return ha.tokens().size() == 1; }));
  EXPECT_EQ(ha.tokens()[0], 0u) << "no tokens for a 1.0 host";
  EXPECT_EQ(a->stop(2000), FG_OK);
  EXPECT_TRUE(ha.hasLog("inbound totals: 1 handed to the host (1 without an outcome token)")) << ha.allLogs();
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
  EXPECT_GE(ha.findSub(2, FG_OK, down_at), 0);
  EXPECT_LT(ha.findSub(2, FG_OK, down_at), ha.find(FG_STATE_RECONNECTED, "", down_at))
      << "RECONNECTED only after every subscription is back";
  EXPECT_EQ(ha.subEvents(1), 1u) << "settled before the loss: not reported again";
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
  EXPECT_GE(ha.findSub(4, FG_OK), 0);
  EXPECT_LT(ha.findSub(4, FG_OK), ha.find(FG_STATE_UP)) << "UP only after the subscriptions";
  EXPECT_LT(ha.connBefore(ha.find(FG_STATE_UP)), ha.find(FG_STATE_UP));
  EXPECT_GE(ha.connBefore(ha.find(FG_STATE_UP)), 0);
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
    EXPECT_EQ(bad->everything().find("wrong"), std::string::npos) << "never print the password: " << bad->everything();
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

void backPressure(int retries, Cfg cfg) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url(), std::move(cfg));
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

TEST(MqttPlugin, HostRetryKeepsMessagesInOrderOnce) { backPressure(25, {}); }
TEST(MqttPlugin, LongRetryStreakKeepsOrderWithTheOldKeyName) { backPressure(150, {{"inflight_max", "100"}}); }

// Three instances in one process share paho's one callback thread. While A's host answers RETRY
// (for 1.5 s), B keeps receiving at once and its publishes keep being confirmed; then every
// message A held arrives, in order, once, each with its own token, acked once.
TEST(MqttPlugin, RetryingHostDoesNotStallOtherEndpoints) {
  Mosquitto broker;
  Host ha, hb, hc;
  auto a = make(ha, broker.url());
  auto b = make(hb, broker.url());
  auto c = make(hc, broker.url());
  for (auto* p : {a.get(), b.get(), c.get()}) ASSERT_EQ(p->start(), FG_OK);
  for (Host* h : {&ha, &hb, &hc}) ASSERT_TRUE(h->waitFor(FG_STATE_UP)) << h->allLogs();
  subscribed(ha, *a, "slow", 1);
  subscribed(hb, *b, "fast", 1);

  ha.hold_back = true;
  constexpr int kN = 300;
  for (int i = 0; i < kN; ++i) ASSERT_EQ(pub(*c, "slow", "s" + std::to_string(i)), FG_OK);
  ASSERT_TRUE(fingate::test::waitFor([&] { return ha.retries() > 0; })) << ha.allLogs();
  for (int i = 0; i < 20; ++i) {
    auto sent = std::chrono::steady_clock::now();
    ASSERT_EQ(pub(*c, "fast", "f" + std::to_string(i), 1000 + i), FG_OK);
    auto m = hb.next(2s);
    ASSERT_TRUE(m) << "B starved while A's host answers RETRY (f" << i << ")";
    EXPECT_EQ(m->payload, "f" + std::to_string(i));
    EXPECT_LT(std::chrono::steady_clock::now() - sent, 900ms) << "f" << i;  // a stalled paho thread costs seconds
    ASSERT_TRUE(hc.waitDelivery(1000 + i, 2s)) << "PUBACK stalled";
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_FALSE(ha.next(0ms)) << "A's host took nothing yet";
  std::this_thread::sleep_for(500ms);
  ha.hold_back = false;
  for (int i = 0; i < kN; ++i) {
    auto m = ha.next(10s);
    ASSERT_TRUE(m) << "missing s" << i << "\n" << ha.allLogs();
    ASSERT_EQ(m->payload, "s" + std::to_string(i));  // in order
  }
  EXPECT_FALSE(ha.next(300ms)) << "delivered once";
  ASSERT_TRUE(fingate::test::waitFor([&] { return ha.tokens().size() == static_cast<size_t>(kN); }));
  auto tokens = ha.tokens();
  EXPECT_EQ(std::set<uint64_t>(tokens.begin(), tokens.end()).size(), tokens.size()) << "a fresh token per message";
  EXPECT_EQ(std::count(tokens.begin(), tokens.end(), 0u), 0);
  ASSERT_TRUE(fingate::test::waitFor([&] { return ha.acks() == static_cast<size_t>(kN); }));
  EXPECT_EQ(a->stop(2000), FG_OK);
  std::string totals = ha.logLine("inbound totals:");
  EXPECT_NE(totals.find("inbound totals: 300 handed to the host; outcomes: delivered 300, dead_lettered 0, refused 0, "
                        "filtered 0; not acked yet 0"),
            std::string::npos)
      << totals;
  EXPECT_NE(totals.find("lost to a full hold 0"), std::string::npos) << totals;
}

// The hold is bounded by count and by bytes. What arrives while it is full is lost (paho has
// already acknowledged it): counted, and logged at ERROR once per 10 s, not once per message; the
// other endpoints are not slowed down meanwhile; what was held arrives in order.
TEST(MqttPlugin, FullHoldLosesCountedAndLoggedOnce) {
  struct Case {
    Cfg cfg;
    size_t payload_bytes;
    int kept;
  };
  // 1024 bytes: three messages of 4 (topic) + 300 bytes fit, a fourth does not.
  for (auto& k : {Case{{{"inbound_hold_max", "5"}}, 10, 5}, Case{{{"inbound_hold_max_bytes", "1024"}}, 300, 3}}) {
    SCOPED_TRACE(k.cfg[0].first);
    Mosquitto broker;
    Host ha, hb, hc;
    auto a = make(ha, broker.url(), k.cfg);
    auto b = make(hb, broker.url());
    auto c = make(hc, broker.url());
    for (auto* p : {a.get(), b.get(), c.get()}) ASSERT_EQ(p->start(), FG_OK);
    for (Host* h : {&ha, &hb, &hc}) ASSERT_TRUE(h->waitFor(FG_STATE_UP)) << h->allLogs();
    subscribed(ha, *a, "slow", 1);
    subscribed(hb, *b, "fast", 1);
    ha.hold_back = true;
    constexpr int kN = 50;
    auto payload = [&](int i) {
      std::string p = "s" + std::to_string(i);
      p.resize(k.payload_bytes, '.');
      return p;
    };
    for (int i = 0; i < kN; ++i) {
      ASSERT_EQ(pub(*c, "slow", payload(i), 1 + i), FG_OK);
      if (i % 10 == 9) {
        auto sent = std::chrono::steady_clock::now();
        ASSERT_EQ(pub(*c, "fast", "f" + std::to_string(i)), FG_OK);
        auto m = hb.next(2s);
        ASSERT_TRUE(m) << "B starved while A's hold overflows";
        EXPECT_LT(std::chrono::steady_clock::now() - sent, 900ms) << "a stalled paho thread costs ~1 s per held-up message";
      }
    }
    ASSERT_TRUE(fingate::test::waitFor([&] { return hc.deliveries().size() == kN; })) << hc.allLogs();
    std::this_thread::sleep_for(500ms);  // the broker has them all; let them reach A
    EXPECT_EQ(ha.countLogs("LOST"), 1u) << ha.allLogs();
    std::string lost = ha.logLine("LOST");
    EXPECT_EQ(lost.rfind(std::to_string(FG_LOG_ERROR) + " ", 0), 0u) << lost;
    EXPECT_NE(lost.find("inbound_hold_max"), std::string::npos) << lost;
    ha.hold_back = false;
    for (int i = 0; i < k.kept; ++i) {
      auto m = ha.next(10s);
      ASSERT_TRUE(m) << "missing s" << i;
      EXPECT_EQ(m->payload, payload(i));
    }
    EXPECT_FALSE(ha.next(300ms)) << "only what was held";
    ASSERT_TRUE(fingate::test::waitFor([&] { return ha.acks() == static_cast<size_t>(k.kept); }));
    EXPECT_EQ(a->stop(2000), FG_OK);
    std::string totals = ha.logLine("inbound totals:");
    EXPECT_NE(totals.find("lost to a full hold " + std::to_string(kN - k.kept)), std::string::npos) << totals;
    EXPECT_NE(totals.find("handed to the host"), std::string::npos) << totals;
  }
}

// Every token the host takes is acked once; the plugin counts the outcomes by kind and says
// so at stop (INFO). Messages that went through the hold keep their token.
TEST(MqttPlugin, OutcomesAreCountedByKind) {
  Mosquitto broker;
  Host ha, hb;
  auto [a, b] = upPair(ha, hb, broker.url());
  subscribed(ha, *a, "t", 1);
  ha.outcome = [](const std::string& payload) {
    switch (payload[0]) {
      case 'x': return FG_OUTCOME_DEAD_LETTERED;
      case 'r': return FG_OUTCOME_REFUSED;
      case 'f': return FG_OUTCOME_FILTERED;
      default: return FG_OUTCOME_DELIVERED;
    }
  };
  ha.retry_budget = 3;
  std::vector<std::string> payloads = {"d1", "x1", "d2", "r1", "f1", "x2", "d3", "r2", "x3", "d4"};
  for (auto& p : payloads) ASSERT_EQ(pub(*b, "t", p), FG_OK);
  for (auto& p : payloads) {
    auto m = ha.next(10s);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->payload, p);
  }
  ASSERT_TRUE(fingate::test::waitFor([&] { return ha.acks() == payloads.size(); }));
  auto tokens = ha.tokens();  // each pushed before its ack was queued
  EXPECT_EQ(tokens.size(), payloads.size());
  EXPECT_EQ(std::set<uint64_t>(tokens.begin(), tokens.end()).size(), payloads.size());
  EXPECT_EQ(a->stop(2000), FG_OK);
  std::string totals = ha.logLine("inbound totals:");
  EXPECT_EQ(totals.rfind(std::to_string(FG_LOG_INFO) + " ", 0), 0u) << totals;
  EXPECT_NE(totals.find("inbound totals: 10 handed to the host; outcomes: delivered 4, dead_lettered 3, refused 2, "
                        "filtered 1; not acked yet 0"),
            std::string::npos)
      << totals;
}

// paho's own limits (max_buffered_messages, default 100: refuses sends even while connected;
// max_inflight) never refuse what the plugin's window hands it: a burst of QoS 1 publishes on
// MQTT 3.1.1 (no Receive Maximum: the window is queue_max) is confirmed, with no "busy" answer.
TEST(MqttPlugin, PahoLimitsDoNotRefuseABurst) {
  Mosquitto broker;
  Host hb;
  auto b = up(hb, broker.url(), {{"mqtt_version", "3"}});
  constexpr int kN = 5000;
  std::string payload(200, 'p');
  for (int i = 1; i <= kN; ++i) ASSERT_EQ(pub(*b, "burst", payload, i), FG_OK) << i;
  ASSERT_TRUE(fingate::test::waitFor([&] { return hb.deliveries().size() == kN; }, 30s)) << hb.deliveries().size();
  size_t failed = 0;
  for (auto& [id, st] : hb.deliveries()) failed += st != FG_DELIVERY_OK;
  EXPECT_EQ(failed, 0u);
  EXPECT_EQ(b->stop(2000), FG_OK);
  EXPECT_FALSE(hb.hasLog("paho answered busy")) << hb.logLine("inbound totals:");
}

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
  std::atomic<bool> allow5{false};  // relay MQTT 5 CONNECTs too (the broker "learned" 5)

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
    if (body[6] == 5 && !allow5) {
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
  long conn = ha.connBefore(ha.find(FG_STATE_UP));
  ASSERT_GE(conn, 0);
  EXPECT_EQ(ha.at(conn).flags & FG_CONN_NO_LOCAL, 0u) << "3.1.1: the host needs its echo window";
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

  // The broker learns MQTT 5: after the next reconnect, auto is on 5 again (paho refuses 5 on
  // a client that once tried 3.1.1, "Client created for another version of MQTT": the plugin
  // keeps one client per version).
  proxy.allow5 = true;
  size_t before = ha.size();
  broker.kill9();
  ASSERT_TRUE(ha.waitFor(FG_STATE_DOWN, "", before)) << ha.allLogs();
  broker.restart();
  ASSERT_TRUE(ha.waitFor(FG_STATE_RECONNECTED, "", before)) << ha.allLogs();
  long rec = ha.find(FG_STATE_RECONNECTED, "", before);
  EXPECT_NE(ha.at(rec).detail.find("mqtt=5 no-local"), std::string::npos) << ha.at(rec).detail;
  conn = ha.connBefore(rec);
  ASSERT_GT(conn, static_cast<long>(before));
  EXPECT_NE(ha.at(conn).flags & FG_CONN_NO_LOCAL, 0u);
  EXPECT_FALSE(ha.hasLog("another version")) << ha.allLogs();
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

// Issue 8 item 11: a malformed url is refused by create() with "url: ..." (so `fingate
// validate` reports it at the key), instead of an endpoint that loops on failing connects.
TEST(MqttPlugin, MalformedUrlsAreRefusedAtCreate) {
  Host h;
  auto err = [&](const std::string& url) -> std::string {
    try {
      Instance p(lib(), h, {{"url", url}});
    } catch (const PluginError& e) {
      return e.what();
    }
    return "";
  };
  struct Bad {
    std::string url, says;
  };
  const std::vector<Bad> bad = {
      {"http://h:1883", "unsupported scheme 'http'"},
      {"ws://h:80", "websockets"},
      {"h:1883", "expected tcp://host:port"},
      {"://h:1883", "expected tcp://host:port"},
      {"tcp://", "missing host"},
      {"tcp://:1883", "missing host"},
      {"tcp:///x", "path"},
      {"tcp://h:", "missing port"},
      {"tcp://h:0", "bad port '0'"},
      {"tcp://h:65536", "bad port '65536'"},
      {"tcp://h:99999", "bad port '99999'"},
      {"tcp://h:12ab", "bad port '12ab'"},
      {"tcp://h:-1", "bad port '-1'"},
      {"tcp://h:1883/soarca", "path"},
      {"tcp://h:1883?x=1", "query"},
      {"tcp://::1:1883", "brackets"},
      {"tcp://[::1:1883", "unbalanced"},
      {"tcp://h h:1883", "spaces"},
      {"tcp://h!:1883", "invalid host name"},
  };
  for (auto& b : bad) {
    std::string e = err(b.url);
    EXPECT_EQ(e.rfind("url: ", 0), 0u) << b.url << " -> " << e;
    EXPECT_NE(e.find(b.says), std::string::npos) << b.url << " -> " << e;
  }
  // Credentials in the user-info: refused, pointing at the keys, never echoing the password.
  for (std::string url : {"tcp://soarca:s3cr3t-pw@127.0.0.1:1883", "mqtt://soarca@broker", "ssl://u:s3cr3t-pw@:0/x",
                          "s3cr3t-pw@h:1883"}) {
    std::string e = err(url);
    EXPECT_EQ(e.rfind("url: ", 0), 0u) << e;
    EXPECT_NE(e.find("'username' and 'password' keys"), std::string::npos) << e;
    EXPECT_EQ(e.find("s3cr3t"), std::string::npos) << e;
  }
  EXPECT_EQ(h.everything().find("s3cr3t"), std::string::npos);
  for (std::string url : {"tcp://h", "tcp://h:1/", "tcp://[::1]:1883", "ssl://[::1]", "mqtts://broker.example:8883",
                          "TCP://h:1883", "tcp://10.0.0.5:1"})
    EXPECT_EQ(err(url), "") << url;
}

TEST(MqttPlugin, ConfigErrorsNameTheKey) {
  Host h;
  auto err = [&](Cfg cfg) -> std::string {
    try {
      Instance p(lib(), h, cfg);
    } catch (const PluginError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(err({}).find("url"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"qos", "2"}}).find("qos:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"mqtt_version", "4.5"}}).find("mqtt_version:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"tls.ca_file", "/x"}}).find("tls.ca_file:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"topic_prefix", "a/#/"}}).find("topic_prefix:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"clean_session", "false"}}).find("clean_session:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"password", "x"}}).find("password:"), std::string::npos);
  EXPECT_EQ(err({{"url", "ssl://h:8883"}, {"tls.ca_file", "/x"}, {"tls.verify", "false"}}), "");
  EXPECT_EQ(err({{"url", "mqtt://localhost:1883"}}), "");  // SOARCA's spelling
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"inbound_hold_max", "0"}}).find("inbound_hold_max:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"inbound_hold_max_bytes", "x"}}).find("inbound_hold_max_bytes:"), std::string::npos);
  EXPECT_NE(err({{"url", "tcp://h:1"}, {"inflight_max", "5"}, {"inbound_hold_max", "5"}}).find("inflight_max:"),
            std::string::npos);
  EXPECT_EQ(err({{"url", "tcp://h:1"}, {"inbound_hold_max", "5"}, {"inbound_hold_max_bytes", "4096"}}), "");

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
