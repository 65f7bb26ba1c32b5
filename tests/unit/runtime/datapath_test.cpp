// Core data path v2 (issue 7), through the real Router, real Endpoints and the loopback
// plugin (no broker): outcome acks, failed deliveries as dead letters and nacks, registers
// that wait for their subscriptions without holding the lane, and refused subscriptions.
#include <fingate/fin_codec.hpp>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "endpoint.hpp"
#include "recording_output.hpp"
#include "test_support.hpp"

namespace fingate::test {
namespace {

const std::string kRegister = vectorBytes("01-a-register.json");
const std::string kCommand = vectorBytes("03-a-command-auth.json");
const std::string kResult = vectorBytes("04-a-result.json");
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kCommandId = "ac227a0a-e6f0-11f1-a63a-02fc00000001";

EndpointConfig loopback(const std::string& name, Role role, std::vector<std::pair<std::string, std::string>> kv) {
  EndpointConfig c;
  c.name = name;
  c.plugin = "loopback";
  c.role = role;
  for (auto& [k, v] : kv) {
    KeyValue o;
    o.key = k;
    o.value = v;
    c.options.push_back(o);
  }
  return c;
}

std::vector<std::string> lines(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream f(path);
  std::string l;
  while (std::getline(f, l))
    if (!l.empty()) out.push_back(l);
  return out;
}

// A small in-process gateway: registry, router, endpoints. Messages are injected by publishing
// to a loopback endpoint, which hands them back in (with an outcome token) to its subscriptions.
struct Core {
  Registry registry;
  Router router{registry, 1000};
  std::vector<std::shared_ptr<Endpoint>> eps;
  explicit Core(const Limits& limits = Limits{}) : router(registry, 1000, limits) {}
  ~Core() {
    for (auto& e : eps) e->stop(1000);
    router.setEndpoints({});
  }
  std::shared_ptr<Endpoint> add(const EndpointConfig& c) {
    EndpointOptions o;
    o.queue_capacity = 100000;
    auto e = std::make_shared<Endpoint>(c, loadBuiltPlugin("loopback"), router, o);
    eps.push_back(e);
    return e;
  }
  void start(std::vector<RouteRule> routes = {}) {
    std::vector<std::shared_ptr<RouterEndpoint>> reps;
    for (auto& e : eps) reps.push_back(e->routerEndpoint());
    router.setEndpoints(reps);
    router.setRoutes(std::move(routes));
    for (auto& e : eps) e->start();
    router.subscribeBase();
  }
  // As if `ep`'s transport received (topic, payload): the loopback echoes it back in.
  static void inject(Endpoint& ep, const std::string& topic, const std::string& payload) {
    OutMessage m;
    m.topic = topic;
    m.payload = payload;
    ep.send(std::move(m));
  }
};

// One message fanned out to two endpoints, one delivery deferred, one failed: the source's
// ack comes once, after both, with the failed outcome; the failed copy is a dead letter.
TEST(Outcome, FanOutAckComesOnceAfterBothCopiesWithTheFailedOutcome) {
  std::string dir = tempDir("outcome-fanout");
  Core core;
  auto src = core.add(loopback("src", Role::Bridge, {{"ack_log", dir + "/acks.log"}}));
  auto slow = core.add(loopback("slow", Role::Bridge, {{"mode", "sink"}, {"deliver_delay_ms", "500"}}));
  auto bad = core.add(loopback("bad", Role::Bridge, {{"mode", "sink"}, {"deliver", "fail"}}));
  core.start({{"src", "t/#", "slow", "{topic}"}, {"src", "t/#", "bad", "{topic}"}});
  Core::inject(*src, "t/1", "payload-1");
  ASSERT_TRUE(waitFor([&] { return !lines(dir + "/acks.log").empty(); }, 20s));
  // The ack came after the deferred copy was delivered (it is counted before it settles) ...
  EXPECT_EQ(slow->stats().delivered.load(), 1u);
  EXPECT_EQ(bad->stats().delivery_failed.load(), 1u);
  auto acks = lines(dir + "/acks.log");
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_NE(acks[0].find(" t/1 dead_lettered"), std::string::npos) << acks[0];
  // ... and only once.
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(lines(dir + "/acks.log").size(), 1u);
  EXPECT_EQ(src->stats().outcomes[FG_OUTCOME_DEAD_LETTERED].load(), 1u);
  auto dl = core.router.deadLetters().snapshot();
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].reason, "delivery_failed");
  EXPECT_EQ(dl[0].payload, "payload-1");  // whole
  EXPECT_EQ(dl[0].target, "bad");         // a static route's copy: a retry re-publishes it there
}

TEST(Outcome, DeliveredEverywhereIsDeliveredAndConsumedOnPurposeIsFiltered) {
  std::string dir = tempDir("outcome-ok");
  Core core;
  auto src = core.add(loopback("src", Role::Bridge, {{"ack_log", dir + "/acks.log"}}));
  auto orch = core.add(loopback("orch", Role::Orchestrator, {{"ack_log", dir + "/orch.log"}}));
  core.add(loopback("a", Role::Bridge, {{"mode", "sink"}}));
  core.start({{"src", "t/#", "a", "{topic}"}});
  Core::inject(*src, "t/1", "x");
  ASSERT_TRUE(waitFor([&] { return lines(dir + "/acks.log").size() == 1; }));
  EXPECT_NE(lines(dir + "/acks.log")[0].find(" t/1 delivered"), std::string::npos);
  // A register heard on the orchestrator's side is a fin talking to SOARCA directly: nothing
  // of the gateway's needs it, so it is consumed on purpose.
  Core::inject(*orch, "soarca", kRegister);
  ASSERT_TRUE(waitFor([&] { return lines(dir + "/orch.log").size() == 1; }));
  EXPECT_NE(lines(dir + "/orch.log")[0].find(" soarca filtered"), std::string::npos) << lines(dir + "/orch.log")[0];
  EXPECT_EQ(orch->stats().outcomes[FG_OUTCOME_FILTERED].load(), 1u);
}

// A command whose delivery fails is dead-lettered (whole) and nacked to the orchestrator now,
// so SOARCA fails the step instead of waiting for its timeout.
TEST(Outcome, FailedCommandIsDeadLetteredAndNackedToTheOrchestrator) {
  std::string dir = tempDir("outcome-nack");
  Core core;
  auto orch = core.add(loopback("orch", Role::Orchestrator, {{"ack_log", dir + "/orch.log"}}));
  auto fins = core.add(loopback("fins", Role::Fins, {{"deliver", "fail"}, {"deliver_topic", kCap}}));
  core.start();
  Core::inject(*fins, "soarca", kRegister);
  ASSERT_TRUE(waitFor([&] { return core.registry.lookup(kCap) != nullptr; }));
  ASSERT_TRUE(waitFor([&] { return orch->stats().out.load() >= 1; }));  // the register reached SOARCA's side
  uint64_t nacks_before = core.router.counters().nacks_sent.load();
  Core::inject(*orch, kCap, kCommand);
  ASSERT_TRUE(waitFor([&] { return core.router.deadLetters().countsByReason()["delivery_failed"] >= 1; }));
  ASSERT_TRUE(waitFor([&] { return core.router.counters().nacks_sent.load() == nacks_before + 1; }));
  auto dl = core.router.deadLetters().snapshot();
  bool found = false;
  for (auto& d : dl)
    if (d.reason == "delivery_failed") {
      found = true;
      EXPECT_EQ(d.payload, kCommand);
      EXPECT_EQ(d.endpoint, "orch");
      EXPECT_EQ(d.topic, kCap);
    }
  EXPECT_TRUE(found);
  // The command's source learns it too.
  ASSERT_TRUE(waitFor([&] {
    for (auto& l : lines(dir + "/orch.log"))
      if (l.find(kCap + " dead_lettered") != std::string::npos) return true;
    return false;
  }));
}

// A register whose subscription the transport refuses is nacked at once and undone.
TEST(Register, RefusedSubscriptionNacksTheRegisterAtOnce) {
  std::string dir = tempDir("register-refused");
  Core core;
  core.add(loopback("orch", Role::Orchestrator, {{"subscribe_refuse", kCap}}));
  auto fins = core.add(loopback("fins", Role::Fins, {{"ack_log", dir + "/fins.log"}}));
  core.start();
  Core::inject(*fins, "soarca", kRegister);
  ASSERT_TRUE(waitFor([&] { return core.router.deadLetters().countsByReason()["subscribe_refused"] == 1; }));
  EXPECT_EQ(core.registry.lookup(kCap), nullptr);  // the provisional binding is undone
  EXPECT_EQ(core.registry.lookup(kFin), nullptr);
  EXPECT_GE(core.router.counters().nacks_sent.load(), 1u);
  EXPECT_GE(core.router.counters().subscribe_refused.load(), 1u);
  ASSERT_TRUE(waitFor([&] {
    for (auto& l : lines(dir + "/fins.log"))
      if (l.find("soarca refused") != std::string::npos) return true;
    return false;
  }));
}

// Fin B, bound through the registry directly (its subscriptions are not the point), speaking
// on its capability topic through the loopback `fins`; then fin A's register, which waits.
void bindFinBAndParkFinA(Core& core, Endpoint& fins) {
  FinBinding b;
  b.fin_id = "fin-b";
  b.endpoint = "fins";
  b.capabilities = {"cap-b"};
  ASSERT_TRUE(core.registry.bind(b).error.empty());
  ASSERT_EQ(fins.subscribe("cap-b", 999999), FG_OK);  // the loopback hands cap-b publishes back in
  Core::inject(fins, "soarca", kRegister);
  ASSERT_TRUE(waitFor([&] { return core.router.pendingRegisters() == 1; }));
}

// While a register waits for a slow confirmation, another fin's traffic flows: the lane parks
// the register (and only that fin's own later traffic), it does not wait.
TEST(Register, WaitingRegisterDoesNotHoldOtherFins) {
  Core core;
  // The first fin's ids are confirmed at once; then confirmations become slow (10 s).
  auto orch = core.add(loopback("orch", Role::Orchestrator, {{"subscribe_delay_ms", "10000"}, {"mode", "sink"}}));
  auto fins = core.add(loopback("fins", Role::Fins, {}));
  core.router.setSubscribeTimeout(60000);
  core.start();
  bindFinBAndParkFinA(core, *fins);  // fin A waits 10 s for its confirmations
  if (HasFatalFailure()) return;
  uint64_t out_before = orch->stats().out.load();
  Core::inject(*fins, "cap-b", kResult);  // fin B's result
  ASSERT_TRUE(waitFor([&] { return orch->stats().out.load() > out_before; }));
  EXPECT_EQ(core.router.pendingRegisters(), 1u) << "fin B's result passed while fin A's register still waited";
  EXPECT_EQ(core.router.counters().registers_waiting.load(), 1u);
}

// A lane that never goes idle still times out a register whose confirmation does not come:
// the housekeeping runs on a clock, not only when the lane waits.
TEST(Register, BusyLaneStillTimesOutAParkedRegister) {
  Core core;
  auto orch = core.add(loopback("orch", Role::Orchestrator, {{"subscribe_delay_ms", "60000"}, {"mode", "sink"}}));
  auto fins = core.add(loopback("fins", Role::Fins, {}));
  core.router.setSubscribeTimeout(300);
  core.start();
  bindFinBAndParkFinA(core, *fins);
  if (HasFatalFailure()) return;
  bool timed_out = false;
  for (int i = 0; i < 2000 && !timed_out; ++i) {  // fin B keeps the lane busy (a message every 2 ms)
    Core::inject(*fins, "cap-b", kResult);
    std::this_thread::sleep_for(2ms);
    timed_out = core.router.pendingRegisters() == 0;
  }
  EXPECT_TRUE(timed_out) << "the parked register was never timed out while the lane was busy";
  EXPECT_EQ(core.router.counters().subscribe_timeouts.load(), 1u);
}

// Two endpoints register the same capability id at the same moment, many times: exactly one
// wins each round, the other is nacked (the conflict check and the bind are one step).
TEST(Register, ConcurrentRegistersOfOneCapabilityExactlyOneWinsTheOtherIsNacked) {
  Registry registry;
  Router router(registry, 100000);
  RecordingOutput orch, e1, e2;
  orch.no_local = e1.no_local = e2.no_local = true;
  router.setEndpoints({routerEndpoint("orch", Role::Orchestrator, orch), routerEndpoint("e1", Role::Fins, e1, true),
                       routerEndpoint("e2", Role::Fins, e2, true)});
  router.subscribeBase();
  auto variant = [](const std::string& fin, const std::string& cap) {
    std::string r = kRegister;
    for (auto [from, to] : {std::pair{kFin, fin}, std::pair{kCap, cap}}) {
      size_t at;
      while ((at = r.find(from)) != std::string::npos) r.replace(at, from.size(), to);
    }
    return r;
  };
  auto env = [](const std::string& payload, uint64_t session) {
    Envelope e;
    e.topic = "soarca";
    e.assignPayload(payload);
    e.session = session;
    return e;
  };
  const int rounds = 300;
  for (int i = 0; i < rounds; ++i) {
    std::string cap = "cap-" + std::to_string(i);
    std::string r1 = variant("fin-a-" + std::to_string(i), cap), r2 = variant("fin-b-" + std::to_string(i), cap);
    const uint64_t session = static_cast<uint64_t>(i) + 1;
    std::thread t1([&] { router.route("e1", env(r1, session)); });  // two lanes
    std::thread t2([&] { router.route("e2", env(r2, session)); });
    t1.join();
    t2.join();
    auto owner = registry.lookup(cap);
    ASSERT_TRUE(owner) << i;
  }
  EXPECT_EQ(router.deadLetters().countsByReason()["capability_conflict"], static_cast<uint64_t>(rounds));
  size_t nacks = 0;
  for (auto* out : {&e1, &e2})
    for (auto& m : out->take())
      if (m.payload.find("\"nack\"") != std::string::npos) ++nacks;
  EXPECT_EQ(nacks, static_cast<size_t>(rounds));
  EXPECT_EQ(registry.size(), static_cast<size_t>(rounds));
}

}  // namespace
}  // namespace fingate::test

namespace fingate::test {
namespace {

// A register of `fin` with the given capability ids (the captured vector's shape).
std::string registerOf(const std::string& fin, const std::vector<std::string>& caps) {
  const std::string& v = kRegister;
  size_t cs = v.find("[{\"capability_id\"") + 1;
  size_t ce = v.find("],\"meta\"");
  std::string one = v.substr(cs, ce - cs);
  std::string list;
  for (auto& c : caps) {
    std::string x = one;
    x.replace(x.find(kCap), kCap.size(), c);
    list += (list.empty() ? "" : ",") + x;
  }
  std::string r = v.substr(0, cs) + list + v.substr(ce);
  size_t at;
  while ((at = r.find(kFin)) != std::string::npos) r.replace(at, kFin.size(), fin);
  return r;
}

struct LimitRig {
  Registry registry;
  std::unique_ptr<Router> router;
  RecordingOutput orch, fins;
  explicit LimitRig(const Limits& l, bool orch_confirms_later = false) {
    router = std::make_unique<Router>(registry, 1000, l);
    orch.no_local = fins.no_local = true;
    auto o = routerEndpoint("orch", Role::Orchestrator, orch);
    o->subscribe_ack = orch_confirms_later;
    router->setEndpoints({o, routerEndpoint("fins", Role::Fins, fins, true)});
    router->subscribeBase();
  }
  void reg(const std::string& payload, uint64_t session) {
    Envelope e;
    e.topic = "soarca";
    e.assignPayload(payload);
    e.session = session;
    router->route("fins", std::move(e));
  }
  size_t nacksTo(uint64_t session) {
    size_t n = 0;
    for (auto& m : fins.take())
      if (m.session == session && m.payload.find("\"nack\"") != std::string::npos) ++n;
    return n;
  }
};

// Every limit of the registry and router, hit once: a clear error to that client (a nack
// and a dead letter that says which limit), a counter, and nothing else lost.
TEST(Limits, FinsPerSession) {
  Limits l;
  l.fins_per_session = 1;
  LimitRig rig(l);
  rig.reg(registerOf("fin-1", {"c1"}), 7);
  rig.reg(registerOf("fin-2", {"c2"}), 7);
  EXPECT_EQ(rig.nacksTo(7), 1u);
  EXPECT_EQ(rig.router->limitHits()["fins_per_session"], 1u);
  EXPECT_EQ(rig.router->deadLetters().countsByReason()["limit_fins_per_session"], 1u);
  EXPECT_TRUE(rig.registry.lookup("c1"));
  EXPECT_FALSE(rig.registry.lookup("c2"));
  rig.reg(registerOf("fin-1", {"c1", "c1b"}), 7);  // the same fin re-registering is not a new fin
  EXPECT_TRUE(rig.registry.lookup("c1b"));
}

TEST(Limits, FinsPerEndpoint) {
  Limits l;
  l.fins_per_endpoint = 2;
  LimitRig rig(l);
  rig.reg(registerOf("fin-1", {"c1"}), 1);
  rig.reg(registerOf("fin-2", {"c2"}), 2);
  rig.reg(registerOf("fin-3", {"c3"}), 3);
  EXPECT_EQ(rig.nacksTo(3), 1u);
  EXPECT_EQ(rig.router->limitHits()["fins_per_endpoint"], 1u);
  EXPECT_EQ(rig.router->deadLetters().countsByReason()["limit_fins_per_endpoint"], 1u);
  EXPECT_EQ(rig.registry.size(), 2u);
}

TEST(Limits, CapabilitiesPerRegister) {
  Limits l;
  l.capabilities_per_register = 2;
  LimitRig rig(l);
  rig.reg(registerOf("fin-1", {"c1", "c2", "c3"}), 1);
  EXPECT_EQ(rig.nacksTo(1), 1u);
  EXPECT_EQ(rig.router->limitHits()["capabilities_per_register"], 1u);
  EXPECT_EQ(rig.router->deadLetters().countsByReason()["limit_capabilities_per_register"], 1u);
  EXPECT_EQ(rig.registry.size(), 0u);
  rig.reg(registerOf("fin-1", {"c1", "c2"}), 1);
  EXPECT_EQ(rig.registry.size(), 1u);
}

TEST(Limits, PendingRegisters) {
  Limits l;
  l.pending_registers = 1;
  LimitRig rig(l, /*orch_confirms_later=*/true);
  rig.reg(registerOf("fin-1", {"c1"}), 1);
  EXPECT_EQ(rig.router->pendingRegisters(), 1u);
  rig.reg(registerOf("fin-2", {"c2"}), 2);
  EXPECT_EQ(rig.nacksTo(2), 1u);
  EXPECT_EQ(rig.router->limitHits()["pending_registers"], 1u);
  EXPECT_FALSE(rig.registry.lookup("c2"));
  // The waiting register goes on once its subscriptions are confirmed.
  for (const char* t : {"fin-1", "c1"}) rig.router->subscriptionSettled("orch", rig.orch.subId(t), FG_OK, "");
  EXPECT_EQ(rig.router->pendingRegisters(), 0u);
  bool forwarded = false;
  for (auto& m : rig.orch.take()) forwarded |= m.topic == "soarca" && m.payload.find("fin-1") != std::string::npos;
  EXPECT_TRUE(forwarded);
}

TEST(Limits, EchoWindowEntries) {
  EchoWindow w(10000, 16);
  for (int i = 0; i < 20; ++i) w.record("e", "t", std::to_string(i));
  EXPECT_EQ(w.size(), 16u);
  EXPECT_EQ(w.overflowed(), 4u);
  EXPECT_FALSE(w.consume("e", "t", "0"));  // the oldest went
  EXPECT_TRUE(w.consume("e", "t", "19"));
}

TEST(Limits, DeadLetterBytes) {
  DeadLetterStore s(100, 100);
  for (int i = 0; i < 3; ++i) {
    DeadLetter d;
    d.reason = "r";
    d.payload = std::string(60, 'x');
    s.add(std::move(d));
  }
  EXPECT_LE(s.bytes(), 100u);
  EXPECT_EQ(s.snapshot().size(), 1u);
  EXPECT_EQ(s.evicted(), 2u);
  EXPECT_EQ(s.total(), 3u);  // counted all the same
}

TEST(Limits, RestoredBacklog) {
  Limits l;
  l.restored_backlog = 1;
  LimitRig rig(l);
  FinBinding b;
  b.fin_id = kFin;
  b.endpoint = "fins";
  b.capabilities = {kCap};
  b.restored = true;
  ASSERT_TRUE(rig.registry.bind(b).error.empty());
  for (int i = 0; i < 2; ++i) {
    Envelope e;
    e.topic = kCap;
    e.assignPayload(kCommand);
    rig.router->route("orch", std::move(e));
  }
  EXPECT_EQ(rig.router->limitHits()["restored_backlog"], 1u);
  size_t nacks = 0;
  for (auto& m : rig.orch.take()) nacks += m.payload.find("\"nack\"") != std::string::npos;
  EXPECT_EQ(nacks, 1u);  // the second command is nacked to SOARCA at once
}

}  // namespace
}  // namespace fingate::test
