// Router units: real Router + Registry + codec, endpoints are in-memory outputs that record
// what the router hands them (the router's collaborator here is an interface, not a transport).
#include <gtest/gtest.h>

#include <filesystem>
#include <fingate/fin_codec.hpp>
#include <fingate/router.hpp>
#include <mutex>

#include "recording_output.hpp"
#include "test_support.hpp"

using namespace fingate;
using fingate::test::env;
using fingate::test::kCap;
using fingate::test::kFin;
using fingate::test::vectorBytes;

namespace {

const std::string kRegister = vectorBytes("01-a-register.json");
const std::string kAck = vectorBytes("02-a-ack.json");
const std::string kCommand = vectorBytes("03-a-command-auth.json");
const std::string kResult = vectorBytes("04-a-result.json");
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

class TestOutput : public fingate::test::RecordingOutput {
 public:
  TestOutput(std::string name, EventLog& log)
      : RecordingOutput(name, [&log](std::string e) { log.add(std::move(e)); }) {}
};


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
      out.no_local = no_local;
      out.router = router.get();
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
  router->route(
      "orch", env("soarca", R"({"type":"unregister","message_id":"m1","capability_id":"","fin_id":"","all":"true"})"));
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

// Issue 8 item 2: on a fins endpoint, `soarca` carries only what the sender may say.
TEST_F(RouterTest, FinsSideSenderMayNotSpeakForOthersOnSoarca) {
  registerA(7);
  fins.take();
  auto toOrch = [&] { return orch.take().size(); };
  // A never-registered client: "unregister all" would shut down every fin behind SOARCA.
  router->route("fins", env("soarca", vectorBytes("11-a-unregister-all.json"), 99));
  EXPECT_EQ(toOrch(), 0u);
  auto back = fins.take();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].session, 99u);
  EXPECT_NE(back[0].payload.find("\"nack\""), std::string::npos);
  // Not even the registered fin may unregister all.
  router->route("fins", env("soarca", vectorBytes("11-a-unregister-all.json"), 7));
  EXPECT_EQ(toOrch(), 0u);
  // An unregister of ids the sender does not own.
  router->route("fins", env("soarca", vectorBytes("10-a-unregister.json"), 99));
  EXPECT_EQ(toOrch(), 0u);
  // Its own capability: forwarded.
  router->route("fins", env("soarca", vectorBytes("10-a-unregister.json"), 7));
  EXPECT_EQ(toOrch(), 1u);
  // An ack of a message nobody delivered to it.
  router->route("fins", env("soarca", fin::makeAck("ad9d96c6-0000-0000-0000-000000000000"), 7));
  EXPECT_EQ(toOrch(), 0u);
  // A command or a result on `soarca` from the fins side.
  router->route("fins", env("soarca", kCommand, 7));
  router->route("fins", env("soarca", kResult, 7));
  EXPECT_EQ(toOrch(), 0u);
  EXPECT_EQ(router->deadLetters().countsByReason()["not_allowed"], 6u);
  // The ack of SOARCA's broadcast (delivered to this endpoint) passes.
  router->route("orch", env("soarca", vectorBytes("11-a-unregister-all.json")));
  fins.take();
  router->route("fins", env("soarca", fin::makeAck("ae7a25e6-e6f0-11f1-a29b-02fc00000001"), 7));
  EXPECT_EQ(toOrch(), 1u);
}

TEST(RouterIds, DollarIdsAreRefused) {
  Registry registry;
  Router router(registry, 100);
  fingate::test::RecordingOutput orch, fins;
  router.setEndpoints({fingate::test::routerEndpoint("orch", Role::Orchestrator, orch),
                       fingate::test::routerEndpoint("fins", Role::Fins, fins, true)});
  std::string reg = kRegister;
  reg.replace(reg.find(kCap), kCap.size(), "$SYS/broker/load");
  Envelope e;
  e.topic = "soarca";
  e.assignPayload(reg);
  e.session = 1;
  router.route("fins", std::move(e));
  EXPECT_FALSE(registry.lookup("$SYS/broker/load"));
  EXPECT_FALSE(orch.subscribed("$SYS/broker/load"));
  EXPECT_EQ(router.deadLetters().countsByReason()["invalid_id"], 1u);
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
    FinBinding a;  // the vectors' fin, claimed again below
    a.fin_id = kFin;
    a.endpoint = "fins";
    a.session = 5;
    a.capabilities = {kCap};
    a.register_message_id = kRegisterId;
    a.register_payload = kRegister;
    r.bind(a);
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
  router.setEndpoints({fingate::test::routerEndpoint("orch", Role::Orchestrator, orch),
                       fingate::test::routerEndpoint("fins", Role::Fins, fins, true)});
  router.subscribeBase();
  EXPECT_TRUE(orch.subscribed("cap-1"));
  // A session transport: nothing goes to "whichever connection subscribes" — the command waits
  // until a session claims the binding with a register of the same fin.
  router.route("orch", env(kCap, kCommand));
  EXPECT_EQ(fins.sent.size(), 0u);
  std::string reason;
  EXPECT_EQ(router.authorizeSubscribe("fins", 9, kCap, reason), FG_ERR_STATE) << "a never-registered client";
  router.route("fins", env(kCap, kResult, 9));  // forged result from a never-registered session
  EXPECT_EQ(router.deadLetters().countsByReason()["foreign_topic"], 1u);
  EXPECT_EQ(orch.take().size(), 0u);
  auto nack = fins.take();  // the forger hears a nack
  ASSERT_EQ(nack.size(), 1u);
  EXPECT_NE(nack[0].payload.find("\"nack\""), std::string::npos);
  router.route("fins", env("soarca", kRegister, 9));  // the fin registers again: it claims its binding
  auto b2 = r2.lookup(kCap);
  ASSERT_TRUE(b2);
  EXPECT_FALSE(b2->restored);
  EXPECT_EQ(b2->session, 9u);
  auto got = fins.take();
  ASSERT_EQ(got.size(), 1u) << "the waiting command goes to the session that claimed the binding";
  EXPECT_EQ(got[0].session, 9u);
  EXPECT_EQ(got[0].payload, kCommand);
  EXPECT_EQ(router.counters().restored_claimed.load(), 1u);
}

// A truncated or garbage state file never stops the gateway: it is moved aside (kept for a
// person to look at) and the registry starts empty.
TEST(RegistryState, CorruptStateFileIsMovedAsideAndTheGatewayStartsEmpty) {
  for (std::string bad : {std::string("{\"fins\": [ {\"fin_id\": "), std::string("garbage \x01\x02"),
                          std::string("{\"fins\": 7}"), std::string("[1,2,3]")}) {
    std::string dir = fingate::test::tempDir("registry-corrupt");
    fingate::test::writeFile(dir + "/bindings.json", bad);
    Registry r;
    r.setStateFile(dir + "/bindings.json");
    EXPECT_NO_THROW(r.load());
    EXPECT_EQ(r.size(), 0u);
    EXPECT_FALSE(std::filesystem::exists(dir + "/bindings.json")) << bad;
    bool aside = false;
    for (auto& f : std::filesystem::directory_iterator(dir))
      if (f.path().filename().string().rfind("bindings.json.corrupt-", 0) == 0) aside = true;
    EXPECT_TRUE(aside) << bad;
  }
}

// Restored state is validated like a live register: hostile ids and unknown endpoints are
// dropped (a state file must never make the gateway subscribe to `#` or `$SYS/...`).
TEST(RegistryState, RestoredBindingsAreValidatedLikeLiveRegisters) {
  std::string dir = fingate::test::tempDir("registry-hostile");
  auto fin = [](const std::string& id, const std::string& ep, const std::string& cap) {
    return "{\"fin_id\":\"" + id + "\",\"endpoint\":\"" + ep + "\",\"capabilities\":[\"" + cap + "\"]}";
  };
  fingate::test::writeFile(dir + "/bindings.json", "{\"version\":1,\"fins\":[" + fin("#", "fins", "c1") + "," +
                                                       fin("f2", "nope", "c2") + "," + fin("f3", "fins", "+") + "," +
                                                       fin("f4", "fins", "$SYS/x") + "," + fin("soarca", "fins", "c5") +
                                                       "," + fin("good", "fins", "c6") + "]}");
  Registry r;
  r.setStateFile(dir + "/bindings.json");
  r.load([](const std::string& ep) { return ep == "fins"; });
  EXPECT_EQ(r.size(), 1u);
  EXPECT_TRUE(r.lookup("c6"));
  EXPECT_FALSE(r.lookup("#"));
  EXPECT_FALSE(r.lookup("c2"));
  EXPECT_FALSE(r.lookup("+"));
  EXPECT_FALSE(r.lookup("$SYS/x"));
}

// Registering many fins with a state file does not rewrite the file per register: writes
// are coalesced off the caller's thread.
TEST(RegistryState, WritesAreCoalesced) {
  std::string dir = fingate::test::tempDir("registry-coalesce");
  Registry r;
  r.setStateFile(dir + "/bindings.json", 50);
  RegistryLimits lim;
  lim.fins_per_endpoint = 100000;
  r.setLimits(lim);
  for (int i = 0; i < 2000; ++i) {
    FinBinding b;
    b.fin_id = "fin-" + std::to_string(i);
    b.endpoint = "fins";
    b.capabilities = {"cap-" + std::to_string(i)};
    ASSERT_TRUE(r.bind(b).error.empty());
  }
  r.flush();
  EXPECT_LT(r.writes(), 2000u / 10);  // far fewer writes than changes
  Registry r2;
  r2.setStateFile(dir + "/bindings.json");
  r2.load();
  EXPECT_EQ(r2.size(), 2000u);
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

// A replay sends what was bound when it was asked for: a register bound while the request waited
// on the lane went out live already and must not reach the orchestrator a second time (the
// fresh-clone CI caught an orchestrator client getting a register twice that way).
TEST(RouterReplay, OnlyWhatWasBoundWhenAskedFor) {
  Registry registry;
  Router router(registry, 100);
  fingate::test::RecordingOutput orch, fins;
  orch.defer_posts = true;  // the orchestrator's lane runs the replay later
  router.setEndpoints({fingate::test::routerEndpoint("orch", Role::Orchestrator, orch, true),
                       fingate::test::routerEndpoint("fins", Role::Fins, fins, true)});
  router.subscribeBase();
  // Fin A registers, then an orchestrator client subscribes `soarca`: a replay of A is queued.
  router.route("fins", env("soarca", kRegister, 7));
  ASSERT_EQ(orch.take().size(), 1u);  // A's register, live
  std::string reason;
  ASSERT_EQ(router.authorizeSubscribe("orch", 1, "soarca", reason), FG_OK);
  // Fin B registers before the lane runs the replay: forwarded live once.
  std::string reg_b = kRegister;
  for (auto [from, to] : {std::pair<std::string, std::string>{kFin, "soarca-fin--other-1"},
                          {kCap, "mod-other--1"},
                          {kRegisterId, "bbbb7356-e6f0-11f1-acf4-02fc00000001"}})
    for (size_t at; (at = reg_b.find(from)) != std::string::npos;) reg_b.replace(at, from.size(), to);
  router.route("fins", env("soarca", reg_b, 8));
  auto live = orch.take();
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].payload, reg_b);
  orch.runPosted();
  auto replayed = orch.take();
  ASSERT_EQ(replayed.size(), 1u) << "B's register was sent twice";
  EXPECT_EQ(replayed[0].payload, kRegister);
  EXPECT_EQ(router.counters().registers_replayed.load(), 1u);
}
