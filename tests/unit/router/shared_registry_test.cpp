// The shared binding registry (cluster.registry_endpoint): two Routers, each with its own
// Registry, stand for two gateway instances; what instance A publishes on its registry endpoint
// is handed to instance B's router as the transport would deliver it.
#include <gtest/gtest.h>

#include <fingate/router.hpp>

#include "recording_output.hpp"
#include "test_support.hpp"

using namespace fingate;
using fingate::test::env;
using fingate::test::kCap;
using fingate::test::kFin;
using fingate::test::RecordingOutput;
using fingate::test::routerEndpoint;
using fingate::test::vectorBytes;

namespace {

const std::string kRegister = vectorBytes("01-a-register.json");
const std::string kAck = vectorBytes("02-a-ack.json");
const std::string kCommand = vectorBytes("03-a-command-auth.json");
const std::string kUnregister = vectorBytes("10-a-unregister.json");


// One gateway instance: orchestrator "orch" (broker), fins "bus" (broker, also the registry
// endpoint), fins "edge" (a session transport).
struct Instance {
  Instance() : router(registry, 100) {
    orch.no_local = bus.no_local = true;
    router.setEndpoints({routerEndpoint("orch", Role::Orchestrator, orch), routerEndpoint("bus", Role::Fins, bus),
                         routerEndpoint("edge", Role::Fins, edge, true)});
    router.setRegistryEndpoint("bus");
    router.subscribeBase();
  }
  // What this instance published on the registry topic since the last call (flushes first).
  std::vector<OutMessage> records() {
    registry.flush();
    std::vector<OutMessage> out, rest;
    for (auto& m : bus.take()) (m.topic.rfind(kBindingsPrefix, 0) == 0 ? out : rest).push_back(std::move(m));
    for (auto& m : rest) bus.sent.push_back(std::move(m));
    return out;
  }
  Registry registry;
  RecordingOutput orch, bus, edge;
  Router router;
};

void deliver(Instance& to, const std::vector<OutMessage>& records) {
  for (auto& r : records) to.router.route("bus", env(r.topic, r.payload));
}

TEST(SharedRegistry, SubscribesTheRegistryTopicOnTheRegistryEndpoint) {
  Instance a;
  EXPECT_TRUE(a.bus.subscribed(std::string(kBindingsPrefix) + "#"));
  EXPECT_FALSE(a.orch.subscribed(std::string(kBindingsPrefix) + "#"));
}

TEST(SharedRegistry, ABindingMadeOnOneInstanceRoutesCommandsOnTheOther) {
  Instance a, b;
  a.router.route("bus", env("soarca", kRegister));
  auto recs = a.records();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].topic, kBindingsPrefix + kFin);
  std::string err;
  auto rec = bindingFromRecord(recs[0].payload, err);
  ASSERT_TRUE(rec) << err;
  EXPECT_EQ(rec->endpoint, "bus");
  EXPECT_EQ(rec->register_payload, kRegister);

  deliver(b, recs);
  auto owner = b.registry.lookup(kCap);
  ASSERT_TRUE(owner);
  EXPECT_TRUE(owner->remote);
  EXPECT_TRUE(b.orch.subscribed(kFin));  // B hears SOARCA's traffic for the fin too
  EXPECT_TRUE(b.orch.subscribed(kCap));
  EXPECT_EQ(b.router.counters().registry_applied.load(), 1u);

  // SOARCA's command for the capability, consumed by B, reaches the fin's endpoint on B.
  b.router.route("orch", env(kCap, kCommand));
  auto out = b.bus.take();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].topic, kCap);
  EXPECT_EQ(out[0].payload, kCommand);

  // B never publishes what it learned (no ping-pong between instances).
  EXPECT_TRUE(b.records().empty());
}

TEST(SharedRegistry, UnregisterPublishesATombstoneThatRemovesTheRemoteBinding) {
  Instance a, b;
  a.router.route("bus", env("soarca", kRegister));
  deliver(b, a.records());
  ASSERT_TRUE(b.registry.lookup(kFin));

  a.router.route("orch", env("soarca", kUnregister));  // SOARCA unregisters the capability (its only one)
  auto recs = a.records();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].topic, kBindingsPrefix + kFin);
  EXPECT_TRUE(recs[0].payload.empty());  // tombstone
  deliver(b, recs);
  EXPECT_FALSE(b.registry.lookup(kFin));
  EXPECT_FALSE(b.orch.subscribed(kCap));
}

TEST(SharedRegistry, AckCommitIsPublishedAgain) {
  Instance a;
  a.router.route("bus", env("soarca", kRegister));
  auto first = a.records();
  ASSERT_EQ(first.size(), 1u);
  a.router.route("orch", env(kFin, kAck));
  auto second = a.records();
  ASSERT_EQ(second.size(), 1u);
  std::string err;
  auto rec = bindingFromRecord(second[0].payload, err);
  ASSERT_TRUE(rec) << err;
  EXPECT_TRUE(rec->acked);
}

TEST(SharedRegistry, ATombstoneNeverRemovesALocalBinding) {
  Instance a, b;
  a.router.route("bus", env("soarca", kRegister));
  b.router.route("bus", env("soarca", kRegister));  // both instances saw the fin register
  deliver(b, a.records());                          // A's record: B keeps its own binding
  auto owner = b.registry.lookup(kFin);
  ASSERT_TRUE(owner);
  EXPECT_FALSE(owner->remote);
  EXPECT_EQ(b.router.counters().registry_ignored.load(), 1u);
  b.router.route("bus", env(kBindingsPrefix + kFin, ""));
  EXPECT_TRUE(b.registry.lookup(kFin));
}

TEST(SharedRegistry, SessionBindingsAreNotShared) {
  Instance a;
  Envelope e = env("soarca", kRegister);
  e.session = 5;
  a.router.route("edge", std::move(e));
  ASSERT_TRUE(a.registry.lookup(kFin));
  EXPECT_TRUE(a.records().empty());
}

TEST(SharedRegistry, BadOrForeignRecordsAreCountedNotApplied) {
  Instance b;
  b.router.route("bus", env(kBindingsPrefix + kFin, "{not json"));
  EXPECT_FALSE(b.registry.lookup(kFin));
  EXPECT_EQ(b.router.counters().registry_ignored.load(), 1u);
  EXPECT_EQ(b.router.deadLetters().countsByReason()["invalid_message"], 1u);

  FinBinding f;
  f.fin_id = kFin;
  f.endpoint = "edge";  // a session endpoint: not usable from another instance
  b.router.route("bus", env(kBindingsPrefix + kFin, bindingRecord(f)));
  f.endpoint = "elsewhere";
  b.router.route("bus", env(kBindingsPrefix + kFin, bindingRecord(f)));
  f.endpoint = "bus";
  f.capabilities = {"#"};  // would subscribe the gateway to everything
  b.router.route("bus", env(kBindingsPrefix + kFin, bindingRecord(f)));
  f.capabilities = {kCap};
  b.router.route("bus",
                 env(std::string(kBindingsPrefix) + "other-fin", bindingRecord(f)));  // topic and record disagree
  EXPECT_FALSE(b.registry.lookup(kFin));
  EXPECT_FALSE(b.registry.lookup(kCap));
  EXPECT_EQ(b.router.counters().registry_ignored.load(), 5u);
  EXPECT_EQ(b.router.counters().registry_applied.load(), 0u);
}

TEST(SharedRegistry, RemoteBindingsAreNotWrittenToTheStateFile) {
  auto dir = fingate::test::tempDir("shared-reg");
  Instance b;
  b.registry.setStateFile(dir + "/bindings.json", 0);
  FinBinding f;
  f.fin_id = kFin;
  f.endpoint = "bus";
  f.capabilities = {kCap};
  b.router.route("bus", env(kBindingsPrefix + kFin, bindingRecord(f)));
  ASSERT_TRUE(b.registry.lookup(kCap));
  b.registry.flush();
  Registry again;
  again.setStateFile(dir + "/bindings.json", 0);
  again.load();
  EXPECT_EQ(again.size(), 0u);
}

}  // namespace
