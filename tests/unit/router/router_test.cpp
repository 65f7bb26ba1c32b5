// Router units: real Router + Registry + codec, endpoints are in-memory outputs that record
// what the router hands them (the router's collaborator here is an interface, not a transport).
#include <fingate/fin_codec.hpp>
#include <fingate/router.hpp>
#include <gtest/gtest.h>

#include <filesystem>
#include <mutex>

#include "test_support.hpp"

using namespace fingate;
using fingate::test::vectorBytes;

namespace {

const std::string kRegister = vectorBytes("01-a-register.json");
const std::string kAck = vectorBytes("02-a-ack.json");
const std::string kCommand = vectorBytes("03-a-command-auth.json");
const std::string kResult = vectorBytes("04-a-result.json");
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kRegisterId = "abec7356-e6f0-11f1-acf4-02fc00000001";

// Shared event log across outputs, to check ordering (subscribe before forward).
struct EventLog {
  std::mutex mu;
  std::vector<std::string> events;
  void add(std::string e) {
    std::lock_guard lk(mu);
    events.push_back(std::move(e));
  }
};

class TestOutput : public RouterOutput {
 public:
  TestOutput(std::string name, EventLog& log) : name_(std::move(name)), log_(log) {}
  bool send(OutMessage&& m) override {
    log_.add(name_ + " send " + m.topic);
    if (full) return false;
    sent.push_back(std::move(m));
    return true;
  }
  bool subscribe(const std::string& filter, uint64_t sub_id) override {
    log_.add(name_ + " sub " + filter);
    subs[sub_id] = filter;
    return true;
  }
  void unsubscribe(uint64_t sub_id) override {
    log_.add(name_ + " unsub " + subs[sub_id]);
    subs.erase(sub_id);
  }
  bool subscribed(const std::string& f) const {
    for (auto& [id, s] : subs)
      if (s == f) return true;
    return false;
  }
  std::vector<OutMessage> take() {
    auto v = std::move(sent);
    sent.clear();
    return v;
  }
  std::vector<OutMessage> sent;
  std::map<uint64_t, std::string> subs;
  bool full = false;

 private:
  std::string name_;
  EventLog& log_;
};

Envelope env(const std::string& topic, const std::string& payload, uint64_t session = 0) {
  Envelope e;
  e.topic = topic;
  e.assignPayload(payload);
  e.session = session;
  return e;
}

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override { build(false, true); }

  // orch: broker-like orchestrator endpoint; fins: session transport (TCP-like); bus: broker-like fins endpoint
  void build(bool orch_no_local, bool fins_sessions) {
    router = std::make_unique<Router>(registry, 100);
    auto mk = [&](const std::string& n, Role r, TestOutput& out, bool sessions, bool no_local) {
      auto e = std::make_shared<RouterEndpoint>();
      e->name = n;
      e->role = r;
      e->out = &out;
      e->sessions = sessions;
      e->no_local = no_local;
      return e;
    };
    router->setEndpoints({mk("orch", Role::Orchestrator, orch, false, orch_no_local),
                          mk("fins", Role::Fins, fins, fins_sessions, false), mk("bus", Role::Fins, bus, false, true),
                          mk("bridge", Role::Bridge, bridge, false, true)});
    router->subscribeBase();
  }

  void registerA(uint64_t session = 7) {
    router->route("fins", env("soarca", kRegister, session));
    auto out = orch.take();
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(out[0].topic, "soarca");
    ASSERT_EQ(out[0].payload, kRegister);  // byte for byte
  }

  Registry registry;
  EventLog log;
  TestOutput orch{"orch", log}, fins{"fins", log}, bus{"bus", log}, bridge{"bridge", log};
  std::unique_ptr<Router> router;
};

TEST_F(RouterTest, BaseSubscriptionsIncludeSoarca) {
  EXPECT_TRUE(orch.subscribed("soarca"));
  EXPECT_TRUE(bus.subscribed("soarca"));
  EXPECT_FALSE(fins.subscribed("soarca"));  // session transports get every client publish anyway
}

TEST_F(RouterTest, RegisterBindsSubscribesBeforeForwardingAndPassesBytesUnchanged) {
  registerA();
  auto b = registry.lookup(kCap);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->fin_id, kFin);
  EXPECT_EQ(b->endpoint, "fins");
  EXPECT_EQ(b->session, 7u);
  EXPECT_FALSE(b->acked);
  EXPECT_TRUE(orch.subscribed(kFin));
  EXPECT_TRUE(orch.subscribed(kCap));
  // Both subscriptions come before the register leaves.
  auto& ev = log.events;
  auto pos = [&](const std::string& e) { return std::find(ev.begin(), ev.end(), e) - ev.begin(); };
  EXPECT_LT(pos("orch sub " + kFin), pos("orch send soarca"));
  EXPECT_LT(pos("orch sub " + kCap), pos("orch send soarca"));
}

TEST_F(RouterTest, FullExchangeReachesOnlyTheBoundSession) {
  registerA(7);
  router->route("orch", env(kFin, kAck));
  auto toFin = fins.take();
  ASSERT_EQ(toFin.size(), 1u);
  EXPECT_EQ(toFin[0].topic, kFin);
  EXPECT_EQ(toFin[0].session, 7u);
  EXPECT_TRUE(registry.lookup(kFin)->acked);

  router->route("orch", env(kCap, kCommand));
  toFin = fins.take();
  ASSERT_EQ(toFin.size(), 1u);
  EXPECT_EQ(toFin[0].session, 7u);
  EXPECT_EQ(toFin[0].payload, kCommand);
  EXPECT_TRUE(bus.take().empty());  // the other fins endpoint hears nothing

  router->route("fins", env(kCap, kResult, 7));
  auto toOrch = orch.take();
  ASSERT_EQ(toOrch.size(), 1u);
  EXPECT_EQ(toOrch[0].topic, kCap);
  EXPECT_EQ(toOrch[0].payload, kResult);
}

TEST_F(RouterTest, ConflictingRegisterFromAnotherSessionIsNackedAndNotForwarded) {
  registerA(7);
  router->route("fins", env("soarca", kRegister, 8));
  EXPECT_TRUE(orch.take().empty());
  auto back = fins.take();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].session, 8u);
  EXPECT_EQ(back[0].topic, kFin);
  EXPECT_EQ(back[0].payload, fin::makeNack(kRegisterId));
  EXPECT_EQ(registry.lookup(kCap)->session, 7u);
  EXPECT_EQ(router->deadLetters().countsByReason()["capability_conflict"], 1u);
}

TEST_F(RouterTest, ReRegisterFromSameSessionIsForwardedAgain) {
  registerA(7);
  router->route("fins", env("soarca", kRegister, 7));
  EXPECT_EQ(orch.take().size(), 1u);
  EXPECT_EQ(registry.size(), 1u);
}

TEST_F(RouterTest, ForeignSessionCannotSpeakOnABoundTopic) {
  registerA(7);
  router->route("fins", env(kCap, kResult, 9));
  EXPECT_TRUE(orch.take().empty());
  EXPECT_EQ(router->deadLetters().countsByReason()["foreign_topic"], 1u);
}

TEST_F(RouterTest, OrchestratorNackUndoesProvisionalBinding) {
  registerA(7);
  router->route("orch", env(kFin, fin::makeNack(kRegisterId)));
  EXPECT_EQ(fins.take().size(), 1u);  // the fin still hears the nack
  EXPECT_FALSE(registry.lookup(kCap));
  EXPECT_FALSE(orch.subscribed(kCap));
  EXPECT_FALSE(orch.subscribed(kFin));
}

TEST_F(RouterTest, UnregisterCapabilityAndAll) {
  registerA(7);
  router->route("orch", env("soarca", vectorBytes("10-a-unregister.json")));
  EXPECT_FALSE(registry.lookup(kCap));
  EXPECT_FALSE(orch.subscribed(kCap));
  // forwarded to every fins endpoint as a broadcast
  auto f = fins.take();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].session, 0u);
  EXPECT_EQ(bus.take().size(), 1u);

  registerA(7);
  router->route("orch", env("soarca", vectorBytes("11-a-unregister-all.json")));
  EXPECT_EQ(registry.size(), 0u);
  EXPECT_FALSE(orch.subscribed(kFin));
  EXPECT_TRUE(orch.subscribed("soarca"));
}

TEST_F(RouterTest, RegistersOfFinsLivingOnTheOrchestratorSideStayThere) {
  router->route("orch", env("soarca", kRegister));
  EXPECT_TRUE(fins.take().empty());
  EXPECT_TRUE(bus.take().empty());
  EXPECT_EQ(registry.size(), 0u);
  EXPECT_EQ(router->deadLetters().total(), 0u);
}

TEST_F(RouterTest, UnregisterAllAsGoString) {
  registerA(7);
  router->route("orch", env("soarca", R"({"type":"unregister","message_id":"m1","capability_id":"","fin_id":"","all":"true"})"));
  EXPECT_EQ(registry.size(), 0u);
}

TEST_F(RouterTest, SessionCloseRemovesBindingsAndSubscriptions) {
  registerA(7);
  router->sessionClosed("fins", 8);  // another session: nothing happens
  EXPECT_EQ(registry.size(), 1u);
  router->sessionClosed("fins", 7);
  EXPECT_EQ(registry.size(), 0u);
  EXPECT_FALSE(orch.subscribed(kCap));
  router->route("orch", env(kCap, kCommand));
  EXPECT_TRUE(fins.take().empty());
  EXPECT_EQ(router->deadLetters().countsByReason()["unroutable"], 1u);
}

TEST_F(RouterTest, EchoOfOwnPublishIsSuppressedOnceOnEndpointsWithoutNoLocal) {
  registerA(7);
  router->route("fins", env(kCap, kResult, 7));
  ASSERT_EQ(orch.take().size(), 1u);
  // The broker hands our own publish back: byte-identical -> suppressed, not routed to the fin.
  router->route("orch", env(kCap, kResult));
  EXPECT_TRUE(fins.take().empty());
  EXPECT_EQ(router->counters().echoes_suppressed.load(), 1u);
  // A second identical message is a legit resend and passes.
  router->route("orch", env(kCap, kResult));
  EXPECT_EQ(fins.take().size(), 1u);
}

TEST_F(RouterTest, NoEchoRecordWhereNoLocalApplies) {
  build(true, true);
  registerA(7);
  router->route("fins", env(kCap, kResult, 7));
  ASSERT_EQ(orch.take().size(), 1u);
  router->route("orch", env(kCap, kResult));
  EXPECT_EQ(fins.take().size(), 1u);
  EXPECT_EQ(router->counters().echoes_suppressed.load(), 0u);
}

TEST_F(RouterTest, BrokerFinsEndpointGetsFinTopicsSubscribed) {
  router->route("bus", env("soarca", kRegister));
  EXPECT_EQ(orch.take().size(), 1u);
  EXPECT_TRUE(bus.subscribed(kCap));
  EXPECT_TRUE(bus.subscribed(kFin));
  router->route("orch", env(kCap, kCommand));
  auto b = bus.take();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].session, 0u);
}

TEST_F(RouterTest, InvalidMessagesAreDeadLetteredAndNackedWhenTheIdIsReadable) {
  router->route("fins", env("soarca", "this is not json", 3));
  EXPECT_TRUE(fins.take().empty());  // no id to nack
  EXPECT_EQ(router->deadLetters().countsByReason()["invalid_message"], 1u);

  std::string badStep = kRegister;
  auto at = badStep.find("\"step\":{");
  ASSERT_NE(at, std::string::npos);
  badStep.replace(at, 8, "\"step\":[{");
  auto end = badStep.find("}},\"agent\"");
  ASSERT_NE(end, std::string::npos);
  badStep.replace(end, 2, "}]");
  router->route("fins", env("soarca", badStep, 3));
  auto back = fins.take();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].payload, fin::makeNack(kRegisterId));
  EXPECT_EQ(back[0].session, 3u);
  EXPECT_TRUE(orch.take().empty());
  EXPECT_EQ(registry.size(), 0u);
  auto dl = router->deadLetters().snapshot();
  ASSERT_EQ(dl.size(), 2u);
  EXPECT_EQ(dl[1].payload, badStep);
}

TEST_F(RouterTest, WildcardOrSoarcaIdsAreRefused) {
  std::string evil = kRegister;
  evil.replace(evil.find(kCap), kCap.size(), "#");
  router->route("fins", env("soarca", evil, 4));
  EXPECT_TRUE(orch.take().empty());
  EXPECT_FALSE(orch.subscribed("#"));
  EXPECT_EQ(router->deadLetters().countsByReason()["invalid_id"], 1u);
  auto back = fins.take();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].payload, fin::makeNack(kRegisterId));
}

TEST_F(RouterTest, DeadLetterStoreIsBounded) {
  for (int i = 0; i < 150; ++i) router->route("orch", env("nobody-" + std::to_string(i), kCommand));
  EXPECT_EQ(router->deadLetters().snapshot().size(), 100u);
  EXPECT_EQ(router->deadLetters().total(), 150u);
  EXPECT_EQ(router->deadLetters().snapshot().back().topic, "nobody-149");
}

TEST_F(RouterTest, FullOutboundQueueIsADeadLetterNotASilentDrop) {
  registerA(7);
  fins.full = true;
  router->route("orch", env(kCap, kCommand));
  EXPECT_EQ(router->deadLetters().countsByReason()["queue_full"], 1u);
}

TEST_F(RouterTest, StaticRoutesWithWildcardsAndTemplates) {
  router->setRoutes({RouteRule{"bridge", "site/+/alerts/#", "bus", "copy/{topic}"}});
  router->subscribeBase();
  EXPECT_TRUE(bridge.subscribed("site/+/alerts/#"));
  router->route("bridge", env("site/a/alerts/x/y", "hello"));
  router->route("bridge", env("site/a/other", "nope"));
  auto b = bus.take();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].topic, "copy/site/a/alerts/x/y");
  EXPECT_EQ(b[0].payload, "hello");
  EXPECT_EQ(router->deadLetters().countsByReason()["unroutable"], 1u);
}

TEST_F(RouterTest, SubscribeAuthorizationOnFinsEndpoint) {
  registerA(7);
  std::string why;
  EXPECT_EQ(router->authorizeSubscribe("fins", 8, "a/#", why), FG_ERR_STATE);
  EXPECT_NE(why.find("wildcard"), std::string::npos);
  EXPECT_EQ(router->authorizeSubscribe("fins", 8, kCap, why), FG_ERR_STATE);
  EXPECT_EQ(router->authorizeSubscribe("fins", 7, kCap, why), FG_OK);
  EXPECT_EQ(router->authorizeSubscribe("fins", 8, "soarca", why), FG_OK);
  EXPECT_EQ(router->authorizeSubscribe("orch", 8, "#", why), FG_OK);
}

TEST(RegistryState, BindingsSurviveARestart) {
  std::string dir = fingate::test::tempDir("registry-state");
  std::string file = dir + "/bindings.json";
  {
    Registry r;
    r.setStateFile(file);
    FinBinding b;
    b.fin_id = "fin-\"quoted\"";
    b.endpoint = "fins";
    b.session = 5;
    b.capabilities = {"cap-1", "cap-2"};
    b.register_message_id = "m-1";
    b.register_payload = kRegister;
    r.bind(b);
    r.commit(b.fin_id, "m-1");
  }
  EXPECT_FALSE(std::filesystem::exists(file + ".tmp"));
  Registry r2;
  r2.setStateFile(file);
  r2.load();
  auto b = r2.lookup("cap-2");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->fin_id, "fin-\"quoted\"");
  EXPECT_TRUE(b->acked);
  EXPECT_TRUE(b->restored);
  EXPECT_EQ(b->session, 0u);
  EXPECT_EQ(b->register_payload, kRegister);

  // A router on the restored registry routes SOARCA's commands to that endpoint.
  EventLog log;
  TestOutput orch("orch", log), fins("fins", log);
  Router router(r2, 10);
  auto o = std::make_shared<RouterEndpoint>();
  o->name = "orch";
  o->role = Role::Orchestrator;
  o->out = &orch;
  auto f = std::make_shared<RouterEndpoint>();
  f->name = "fins";
  f->role = Role::Fins;
  f->out = &fins;
  f->sessions = true;
  router.setEndpoints({o, f});
  router.subscribeBase();
  EXPECT_TRUE(orch.subscribed("cap-1"));
  router.route("orch", env("cap-1", kCommand));
  ASSERT_EQ(fins.sent.size(), 1u);
  EXPECT_EQ(fins.sent[0].session, 0u);
}

TEST(RegistryState, CorruptStateFileIsAClearError) {
  std::string dir = fingate::test::tempDir("registry-corrupt");
  fingate::test::writeFile(dir + "/bindings.json", "{\"fins\": [ {\"fin_id\": ");
  Registry r;
  r.setStateFile(dir + "/bindings.json");
  EXPECT_THROW(r.load(), std::runtime_error);
}

TEST(EchoWindowTest, EachPublishAbsorbsOneEcho) {
  EchoWindow w;
  w.record("e", "t", "p");
  w.record("e", "t", "p");
  EXPECT_FALSE(w.consume("e", "t", "other"));
  EXPECT_FALSE(w.consume("f", "t", "p"));
  EXPECT_TRUE(w.consume("e", "t", "p"));
  EXPECT_TRUE(w.consume("e", "t", "p"));
  EXPECT_FALSE(w.consume("e", "t", "p"));
}

TEST(TopicTemplate, Expands) {
  EXPECT_EQ(expandTopicTemplate("fin.{topic}", "abc"), "fin.abc");
  EXPECT_EQ(expandTopicTemplate("{topic}/{topic}", "x"), "x/x");
  EXPECT_EQ(expandTopicTemplate("static", "x"), "static");
}

}  // namespace
