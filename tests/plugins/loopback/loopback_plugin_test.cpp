// Tests of libfingate-loopback.so's ABI 1.1 features (outcome tokens and the ack log,
// configurable delivery outcomes, subscription settlement, connection facts), through the
// C ABI with the test host (RecordingHost + PluginInstance offer the whole 1.1 table); and its
// behaviour with a host that offers only the 1.0 table.
// No timing assertions: waits are bounded polls; delays are long compared to what is checked
// before they end.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace fingate::test {
namespace {

using Cfg = std::vector<std::pair<std::string, std::string>>;

std::shared_ptr<PluginLibrary> lib() {
  static std::shared_ptr<PluginLibrary> l = loadBuiltPlugin("loopback");
  return l;
}

fg_message msg(const std::string& topic, const std::string& payload) {
  return fg_message{{topic.data(), topic.size()}, {payload.data(), payload.size()}, nullptr, 0, 0, 0};
}

std::vector<std::string> lines(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

bool hasLog(RecordingHost& h, const std::string& needle) {
  for (auto& l : h.logs())
    if (l.find(needle) != std::string::npos) return true;
  return false;
}

// A RecordingHost that also keeps the order of states and events.
class TimelineHost : public RecordingHost {
 public:
  void onState(fg_state state, std::string_view detail) override {
    {
      std::lock_guard lk(mu_);
      timeline_.push_back("state " + std::to_string(state));
    }
    RecordingHost::onState(state, detail);
  }
  void onEvent(const fg_event& ev) override {
    {
      std::lock_guard lk(mu_);
      timeline_.push_back("event " + std::to_string(ev.kind));
    }
    RecordingHost::onEvent(ev);
  }
  std::vector<std::string> timeline() {
    std::lock_guard lk(mu_);
    return timeline_;
  }
  // The next message handed in with a token (skipping none: every echo is tracked here).
  std::optional<Msg> nextTracked(std::chrono::milliseconds timeout = 5s) { return next(timeout); }
  std::optional<Event> event(const std::function<bool(const Event&)>& pred, std::chrono::milliseconds timeout = 10s) {
    if (!waitEvent(pred, timeout)) return std::nullopt;
    for (auto& e : events())
      if (pred(e)) return e;
    return std::nullopt;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> timeline_;
};

struct Lb {
  explicit Lb(const Cfg& cfg) : inst(lib(), host, cfg) {}
  TimelineHost host;
  PluginInstance inst;
  fg_status publish(const std::string& topic, const std::string& payload, uint64_t delivery_id = 0) {
    const fg_message m = msg(topic, payload);
    return inst.publish(m, delivery_id);
  }
  std::optional<fg_delivery> delivery(uint64_t id) {
    auto d = host.deliveries();
    auto it = d.find(id);
    if (it == d.end()) return std::nullopt;
    return it->second;
  }
};

TEST(Loopback, DescriptorOffersTheAbi11Functions) {
  RecordingHost host;
  PluginInstance inst(lib(), host, {});
  EXPECT_EQ(FG_ABI_MINOR(lib()->descriptor().abi_version), 1u);
  EXPECT_TRUE(inst.hasAck());
  EXPECT_EQ(lib()->capabilities() & (FG_CAP_DELIVERY | FG_CAP_SUBSCRIBE_ACK), FG_CAP_DELIVERY | FG_CAP_SUBSCRIBE_ACK);
  for (const char* k : {"mode", "capacity", "ack_log", "deliver", "deliver_delay_ms", "deliver_topic",
                        "subscribe_delay_ms", "subscribe_refuse", "no_local"})
    EXPECT_TRUE(lib()->acceptsKey(k)) << k;
}

TEST(Loopback, EchoesCarryFreshTokensAndAcksAreLogged) {
  const std::string dir = tempDir("loopback-acks");
  const std::string log = dir + "/acks.log";
  Lb lb(Cfg{{"ack_log", log}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("a/#", 5), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("a/b", 6), FG_OK);  // overlapping: one copy per subscription
  ASSERT_EQ(lb.publish("a/b", "one"), FG_OK);
  ASSERT_EQ(lb.publish("a/c", "two"), FG_OK);
  std::vector<RecordingHost::Msg> got;
  for (int i = 0; i < 3; ++i) {
    auto t = lb.host.nextTracked();
    ASSERT_TRUE(t) << i;
    got.push_back(*t);
  }
  EXPECT_FALSE(lb.host.nextTracked(100ms).has_value());
  EXPECT_EQ(got[0].payload, "one");
  EXPECT_EQ(got[1].payload, "one");
  EXPECT_EQ(got[2].payload, "two");
  EXPECT_EQ(got[2].sub_id, 5u);
  EXPECT_NE(got[0].sub_id, got[1].sub_id);
  for (auto& t : got) EXPECT_NE(t.token, 0u);
  EXPECT_NE(got[0].token, got[1].token);
  EXPECT_NE(got[1].token, got[2].token);
  EXPECT_NE(got[0].token, got[2].token);

  lb.inst.ack(got[0].token, FG_OUTCOME_DELIVERED);
  lb.inst.ack(got[1].token, FG_OUTCOME_DEAD_LETTERED);
  lb.inst.ack(got[2].token, FG_OUTCOME_FILTERED);
  lb.inst.ack(got[0].token, FG_OUTCOME_REFUSED);  // a second ack of one token
  const auto l = lines(log);
  ASSERT_EQ(l.size(), 4u);
  EXPECT_EQ(l[0], std::to_string(got[0].token) + " a/b delivered");
  EXPECT_EQ(l[1], std::to_string(got[1].token) + " a/b dead_lettered");
  EXPECT_EQ(l[2], std::to_string(got[2].token) + " a/c filtered");
  EXPECT_EQ(l[3], std::to_string(got[0].token) + " - refused UNKNOWN_TOKEN");
  EXPECT_EQ(lb.inst.stop(1000), FG_OK);
  EXPECT_TRUE(hasLog(lb.host, "acks: delivered=1 dead_lettered=1 refused=0 filtered=1 unknown=1"));
}

TEST(Loopback, RetriedEchoKeepsItsTokenUntilTaken) {
  const std::string log = tempDir("loopback-retry") + "/acks.log";
  Lb lb(Cfg{{"ack_log", log}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("#", 1), FG_OK);
  lb.host.retry_budget = 20;
  ASSERT_EQ(lb.publish("t", "held"), FG_OK);
  auto t = lb.host.nextTracked();
  ASSERT_TRUE(t);
  EXPECT_EQ(lb.host.retry_budget.load(), 0);
  EXPECT_FALSE(lb.host.nextTracked(100ms).has_value());  // once, never doubled
  lb.inst.ack(t->token, FG_OUTCOME_REFUSED);
  EXPECT_EQ(lines(log), std::vector<std::string>{std::to_string(t->token) + " t refused"});
}

TEST(Loopback, DeliveryOutcomesByMode) {
  struct Case {
    const char* mode;
    fg_delivery want;
  };
  for (const Case c : {Case{"ok", FG_DELIVERY_OK}, Case{"fail", FG_DELIVERY_FAILED},
                       Case{"no_receiver", FG_DELIVERY_NO_RECEIVER}}) {
    SCOPED_TRACE(c.mode);
    Lb lb(Cfg{{"deliver", c.mode}, {"mode", "sink"}});
    ASSERT_EQ(lb.inst.start(), FG_OK);
    ASSERT_EQ(lb.publish("x", "p", 11), FG_OK);
    EXPECT_TRUE(waitFor([&] { return lb.delivery(11).has_value(); }));
    EXPECT_EQ(lb.delivery(11), c.want);
  }
  // none: never reported. The worker handles publishes in order, so once the next one (whose
  // topic is outside deliver_topic: ok at once) is reported, the first was handled.
  Lb lb(Cfg{{"deliver", "none"}, {"deliver_topic", "cmd/#"}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.publish("cmd/1", "p", 21), FG_OK);
  ASSERT_EQ(lb.publish("other", "p", 22), FG_OK);
  ASSERT_TRUE(waitFor([&] { return lb.delivery(22).has_value(); }));
  EXPECT_EQ(lb.delivery(22), FG_DELIVERY_OK);
  EXPECT_FALSE(lb.delivery(21).has_value());
  EXPECT_EQ(lb.inst.stop(1000), FG_OK);
  EXPECT_FALSE(lb.delivery(21).has_value());  // not even at stop
}

TEST(Loopback, DelayedDeliveryOnlyForMatchingTopics) {
  Lb lb(Cfg{{"deliver", "fail"}, {"deliver_delay_ms", "1500"}, {"deliver_topic", "slow/+"}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.publish("slow/a", "p", 1), FG_OK);
  ASSERT_EQ(lb.publish("fast", "p", 2), FG_OK);
  ASSERT_TRUE(waitFor([&] { return lb.delivery(2).has_value(); }));
  EXPECT_EQ(lb.delivery(2), FG_DELIVERY_OK);  // outside deliver_topic: ok at once
  EXPECT_FALSE(lb.delivery(1).has_value());    // 1.5 s are not over yet
  ASSERT_TRUE(waitFor([&] { return lb.delivery(1).has_value(); }));
  EXPECT_EQ(lb.delivery(1), FG_DELIVERY_FAILED);
  // What is due after stop() is reported by stop(), with its outcome.
  ASSERT_EQ(lb.publish("slow/b", "p", 3), FG_OK);
  ASSERT_EQ(lb.publish("fast", "p", 4), FG_OK);
  ASSERT_TRUE(waitFor([&] { return lb.delivery(4).has_value(); }));
  EXPECT_EQ(lb.inst.stop(1000), FG_OK);
  EXPECT_EQ(lb.delivery(3), FG_DELIVERY_FAILED);
}

TEST(Loopback, SubscriptionsRefusedByConfig) {
  Lb lb(Cfg{{"subscribe_refuse", "secret/#"}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("secret/x", 1), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("secret/+", 2), FG_OK);  // the filter read as a topic matches
  ASSERT_EQ(lb.inst.subscribe("open/x", 3), FG_OK);
  auto e1 = lb.host.event([](const RecordingHost::Event& e) { return e.kind == FG_EVENT_SUBSCRIPTION && e.sub_id == 1; });
  auto e2 = lb.host.event([](const RecordingHost::Event& e) { return e.kind == FG_EVENT_SUBSCRIPTION && e.sub_id == 2; });
  auto e3 = lb.host.event([](const RecordingHost::Event& e) { return e.kind == FG_EVENT_SUBSCRIPTION && e.sub_id == 3; });
  ASSERT_TRUE(e1 && e2 && e3);
  EXPECT_EQ(e1->status, FG_ERR_STATE);
  EXPECT_EQ(e1->detail, "refused by loopback config");
  EXPECT_EQ(e2->status, FG_ERR_STATE);
  EXPECT_EQ(e3->status, FG_OK);
  // 1.1 plugins settle with the typed event only.
  EXPECT_FALSE(lb.host.waitState(FG_STATE_SUBSCRIBED, 0ms));
  ASSERT_EQ(lb.publish("secret/x", "no"), FG_OK);
  ASSERT_EQ(lb.publish("open/x", "yes"), FG_OK);
  auto t = lb.host.nextTracked();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->payload, "yes");
  EXPECT_EQ(t->sub_id, 3u);
  EXPECT_FALSE(lb.host.nextTracked(100ms).has_value());
}

TEST(Loopback, DelayedSubscriptionEchoesOnlyOnceConfirmed) {
  Lb lb(Cfg{{"subscribe_delay_ms", "1500"}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("t", 9), FG_OK);
  EXPECT_TRUE(lb.host.events().empty());  // not from inside subscribe()
  ASSERT_EQ(lb.publish("t", "before", 1), FG_OK);
  ASSERT_TRUE(waitFor([&] { return lb.delivery(1).has_value(); }));  // handled, not echoed
  auto e = lb.host.event([](const RecordingHost::Event& ev) { return ev.kind == FG_EVENT_SUBSCRIPTION && ev.sub_id == 9; });
  ASSERT_TRUE(e);
  EXPECT_EQ(e->status, FG_OK);
  ASSERT_EQ(lb.publish("t", "after"), FG_OK);
  auto t = lb.host.nextTracked();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->payload, "after");
  // An unsubscribe before the confirmation cancels it.
  ASSERT_EQ(lb.inst.subscribe("u", 10), FG_OK);
  ASSERT_EQ(lb.inst.unsubscribe(10), FG_OK);
  EXPECT_EQ(lb.inst.stop(1000), FG_OK);
  for (auto& ev : lb.host.events()) EXPECT_NE(ev.sub_id, 10u);
}

TEST(Loopback, NoLocalFactComesBeforeUp) {
  {
    Lb lb(Cfg{{"no_local", "true"}});
    ASSERT_EQ(lb.inst.start(), FG_OK);
    auto ev = lb.host.events();
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].kind, FG_EVENT_CONNECTION);
    EXPECT_EQ(ev[0].flags, FG_CONN_NO_LOCAL);
    auto tl = lb.host.timeline();
    ASSERT_GE(tl.size(), 2u);
    EXPECT_EQ(tl[0], "event " + std::to_string(FG_EVENT_CONNECTION));
    EXPECT_EQ(tl[1], "state " + std::to_string(FG_STATE_UP));
    // It still echoes: the flag is a claim the host trusts.
    ASSERT_EQ(lb.inst.subscribe("#", 1), FG_OK);
    ASSERT_EQ(lb.publish("t", "echo"), FG_OK);
    EXPECT_TRUE(lb.host.nextTracked().has_value());
  }
  {
    Lb lb(Cfg{});
    ASSERT_EQ(lb.inst.start(), FG_OK);
    EXPECT_TRUE(lb.host.waitState(FG_STATE_UP, 0ms));
    for (auto& e : lb.host.events()) EXPECT_NE(e.kind, FG_EVENT_CONNECTION);
  }
}

TEST(Loopback, FullQueueAnswersRetryAndLosesNothing) {
  Lb lb(Cfg{{"capacity", "2"}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("#", 1), FG_OK);
  lb.host.retry_budget = 1000000000;  // the worker holds the first message
  int accepted = 0;
  fg_status st = FG_OK;
  for (int i = 0; i < 10 && st == FG_OK; ++i) {
    st = lb.publish("t", std::to_string(i));
    if (st == FG_OK) ++accepted;
  }
  EXPECT_EQ(st, FG_RETRY);
  EXPECT_GE(accepted, 2);
  EXPECT_LE(accepted, 3);
  lb.host.retry_budget = 0;
  for (int i = 0; i < accepted; ++i) {
    auto t = lb.host.nextTracked();
    ASSERT_TRUE(t);
    EXPECT_EQ(t->payload, std::to_string(i));
  }
  EXPECT_FALSE(lb.host.nextTracked(100ms).has_value());
}

TEST(Loopback, SinkModeDeliversWithoutEcho) {
  Lb lb(Cfg{{"mode", "sink"}});
  ASSERT_EQ(lb.inst.start(), FG_OK);
  ASSERT_EQ(lb.inst.subscribe("#", 1), FG_OK);
  ASSERT_EQ(lb.publish("t", "p", 5), FG_OK);
  ASSERT_TRUE(waitFor([&] { return lb.delivery(5).has_value(); }));
  EXPECT_EQ(lb.delivery(5), FG_DELIVERY_OK);
  EXPECT_FALSE(lb.host.nextTracked(50ms).has_value());
}

// A host that offers only the 1.0 table (struct_size ends before on_message_tracked), as an
// old gateway would, forwarding into a RecordingHost.
struct Abi10Host {
  RecordingHost rec;
  fg_host_api api{};
  fg_instance* inst = nullptr;
  explicit Abi10Host(const Cfg& cfg) {
    api.struct_size = offsetof(fg_host_api, on_message_tracked);
    api.abi_version = FG_ABI_VERSION_MAJOR << 16;
    api.log = [](void* c, fg_log_level l, const char* m) { self(c).log(l, m ? m : ""); };
    api.on_message = [](void* c, uint64_t sub, const fg_message* m) { return self(c).onMessage(sub, *m, 0); };
    api.on_delivery = [](void* c, uint64_t id, fg_delivery st) { self(c).onDelivery(id, st); };
    api.on_state = [](void* c, fg_state st, const char* d) { self(c).onState(st, d ? d : ""); };
    // The 1.1 members are set but outside struct_size: a correct plugin never calls them.
    api.on_message_tracked = [](void*, uint64_t, const fg_message*, uint64_t) -> fg_status { std::abort(); };
    api.on_event = [](void*, const fg_event*) { std::abort(); };
    std::vector<fg_kv> kv;
    for (auto& [k, v] : cfg) kv.push_back(fg_kv{k.c_str(), v.c_str()});
    char err[256] = {0};
    inst = lib()->descriptor().create(&api, &rec, kv.data(), kv.size(), err, sizeof err);
    EXPECT_NE(inst, nullptr) << err;
  }
  ~Abi10Host() {
    if (inst) lib()->descriptor().destroy(inst);
  }
  static RecordingHost& self(void* c) { return *static_cast<RecordingHost*>(c); }
  const fg_plugin& d() const { return lib()->descriptor(); }
};

// With a 1.0 host: echoes go in untracked, are logged as delivered once taken, subscriptions
// are confirmed with FG_STATE_SUBSCRIBED, and no typed event is sent.
TEST(Loopback, WorksWithAHostWithoutTheAbi11Members) {
  const std::string log = tempDir("loopback-10") + "/acks.log";
  Abi10Host h({{"ack_log", log}, {"no_local", "true"}, {"subscribe_refuse", "no/#"}});
  ASSERT_NE(h.inst, nullptr);
  ASSERT_EQ(h.d().start(h.inst), FG_OK);
  ASSERT_EQ(h.d().subscribe(h.inst, fg_str{"a", 1}, 7), FG_OK);
  EXPECT_TRUE(h.rec.waitState(FG_STATE_SUBSCRIBED, 0ms));  // delay 0: reported from inside subscribe()
  EXPECT_EQ(h.rec.stateDetail(FG_STATE_SUBSCRIBED), "7");
  ASSERT_EQ(h.d().subscribe(h.inst, fg_str{"no/x", 4}, 8), FG_OK);  // refused: a 1.0 host hears nothing
  EXPECT_EQ(h.rec.stateDetail(FG_STATE_SUBSCRIBED), "7");
  const fg_message m{{"a", 1}, {"x", 1}, nullptr, 0, 0, 0};
  ASSERT_EQ(h.d().publish(h.inst, &m, 3), FG_OK);
  auto got = h.rec.next();
  ASSERT_TRUE(got);
  EXPECT_EQ(got->sub_id, 7u);
  EXPECT_EQ(got->token, 0u);
  ASSERT_TRUE(waitFor([&] { return h.rec.deliveries().count(3) == 1; }));
  ASSERT_TRUE(waitFor([&] { return lines(log).size() == 1; }));
  const auto l = lines(log);
  EXPECT_NE(l[0].find(" a delivered"), std::string::npos) << l[0];
  EXPECT_EQ(h.d().stop(h.inst, 1000), FG_OK);
  EXPECT_TRUE(h.rec.events().empty());
}

TEST(Loopback, RejectsBadConfiguration) {
  RecordingHost host;
  auto expectError = [&](const Cfg& cfg, const std::string& prefix) {
    try {
      PluginInstance inst(lib(), host, cfg);
      ADD_FAILURE() << "accepted, expected an error starting with " << prefix;
    } catch (const PluginError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
    }
  };
  expectError({{"deliver", "maybe"}}, "deliver: ");
  expectError({{"deliver_delay_ms", "-1"}}, "deliver_delay_ms: ");
  expectError({{"deliver_topic", "a/#/b"}}, "deliver_topic: ");
  expectError({{"subscribe_refuse", ""}}, "subscribe_refuse: ");
  expectError({{"subscribe_delay_ms", "soon"}}, "subscribe_delay_ms: ");
  expectError({{"no_local", "perhaps"}}, "no_local: ");
  // An ack_log that cannot be opened fails start(), with the key in the log line.
  Lb lb(Cfg{{"ack_log", "/nonexistent-dir/acks.log"}});
  EXPECT_NE(lb.inst.start(), FG_OK);
  EXPECT_TRUE(hasLog(lb.host, "ack_log"));
}

}  // namespace
}  // namespace fingate::test
