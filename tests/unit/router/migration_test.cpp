// Migration units (config `migration:`, docs/migration.md): two broker-side fins endpoints as one
// logical endpoint, the mirror between them, and the cutover/rollback of bindings. Real Router +
// Registry + codec; the endpoints are in-memory outputs that record what the router hands them.
#include <gtest/gtest.h>

#include <fingate/fin_codec.hpp>
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
const std::string kResult = vectorBytes("04-a-result.json");


class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    router = std::make_unique<Router>(registry, 100);
    for (auto* o : {&orch, &old_side, &new_side, &other}) o->router = router.get();
    orch.no_local = true;
    old_side.no_local = false;  // MQTT 3.1.1-like: the gateway hears its own publishes back
    new_side.no_local = true;   // Kafka-like: the plugin skips its own records
    other.no_local = true;
    router->setEndpoints({routerEndpoint("orch", Role::Orchestrator, orch), routerEndpoint("old", Role::Fins, old_side),
                          routerEndpoint("new", Role::Fins, new_side), routerEndpoint("other", Role::Fins, other)});
    pair.from = "old";
    pair.to = "new";
    router->setMigration(pair);
    router->subscribeBase();
  }

  void mirror(bool on) {
    pair.mirror = on;
    router->setMigration(pair);
  }

  // The fin registers on `side`; SOARCA acks it.
  void registerOn(const std::string& side) {
    router->route(side, env("soarca", kRegister));
    auto reg = orch.take();
    ASSERT_EQ(reg.size(), 1u);
    EXPECT_EQ(reg[0].payload, kRegister);
    router->route("orch", env(kFin, kAck));
  }

  static size_t mirrored(const std::vector<OutMessage>& v) {
    return static_cast<size_t>(std::count_if(v.begin(), v.end(), [](auto& m) { return m.mirror_copy; }));
  }

  Registry registry;
  RecordingOutput orch{"orch", {}}, old_side{"old", {}}, new_side{"new", {}}, other{"other", {}};
  std::unique_ptr<Router> router;
  MigrationPair pair;
};

TEST_F(MigrationTest, BothSidesHearSoarcaAndTheFinsTopics) {
  EXPECT_TRUE(old_side.subscribed("soarca"));
  EXPECT_TRUE(new_side.subscribed("soarca"));
  registerOn("old");
  for (auto* side : {&old_side, &new_side}) {
    EXPECT_TRUE(side->subscribed(kFin));
    EXPECT_TRUE(side->subscribed(kCap));
  }
  EXPECT_FALSE(other.subscribed(kCap));  // an endpoint outside the pair is not involved
}

TEST_F(MigrationTest, ARegisterOnThePassiveSideBindsToTheActiveOne) {
  registerOn("new");
  auto b = registry.lookup(kCap);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->endpoint, "old");
  EXPECT_TRUE(b->acked);
  // Mirror off: the answer goes to the active side only.
  EXPECT_EQ(old_side.take().size(), 1u);
  EXPECT_TRUE(new_side.take().empty());
  // The fin answers from the passive side: accepted (both sides are the owner's place).
  router->route("new", env(kCap, kResult));
  auto toOrch = orch.take();
  ASSERT_EQ(toOrch.size(), 1u);
  EXPECT_EQ(toOrch[0].payload, kResult);
  EXPECT_TRUE(router->deadLetters().snapshot().empty());
}

TEST_F(MigrationTest, TheMirrorCopiesWhatTheGatewayAcceptsBothWays) {
  mirror(true);
  // The register from the old side reaches SOARCA and, mirrored, the new side.
  router->route("old", env("soarca", kRegister));
  EXPECT_EQ(orch.take().size(), 1u);
  auto onNew = new_side.take();
  ASSERT_EQ(onNew.size(), 1u);
  EXPECT_EQ(onNew[0].topic, "soarca");
  EXPECT_EQ(onNew[0].payload, kRegister);
  EXPECT_TRUE(onNew[0].mirror_copy);
  EXPECT_TRUE(old_side.take().empty());  // never back where it came from

  // SOARCA's ack and command go to the active side and, mirrored, to the passive one.
  router->route("orch", env(kFin, kAck));
  router->route("orch", env(kCap, kCommand));
  auto onOld = old_side.take();
  onNew = new_side.take();
  ASSERT_EQ(onOld.size(), 2u);
  ASSERT_EQ(onNew.size(), 2u);
  EXPECT_EQ(mirrored(onOld), 0u);
  EXPECT_EQ(mirrored(onNew), 2u);
  EXPECT_EQ(onOld[1].payload, kCommand);
  EXPECT_EQ(onNew[1].payload, kCommand);
  EXPECT_FALSE(onOld[1].nack_id.empty());  // the fin's copy: a failure is nacked to SOARCA
  EXPECT_TRUE(onNew[1].nack_id.empty());   // the mirror's copy: never

  // The fin's result (it moved to the new broker already) reaches SOARCA and the old side.
  router->route("new", env(kCap, kResult));
  EXPECT_EQ(orch.take().size(), 1u);
  onOld = old_side.take();
  ASSERT_EQ(onOld.size(), 1u);
  EXPECT_TRUE(onOld[0].mirror_copy);
  EXPECT_EQ(onOld[0].payload, kResult);
  EXPECT_EQ(router->counters().mirrored_to_to.load(), 3u);
  EXPECT_EQ(router->counters().mirrored_to_from.load(), 1u);
  EXPECT_TRUE(other.take().empty());
}

TEST_F(MigrationTest, TheEchoOfAMirrorCopyIsNotRoutedAgain) {
  registerOn("old");
  mirror(true);
  old_side.take();
  router->route("new", env(kCap, kResult));
  ASSERT_EQ(orch.take().size(), 1u);
  ASSERT_EQ(old_side.take().size(), 1u);  // the copy published on the old broker...
  router->route("old", env(kCap, kResult));  // ...comes back there (no no-local)
  EXPECT_TRUE(orch.take().empty());
  EXPECT_TRUE(new_side.take().empty());
  EXPECT_EQ(router->counters().echoes_suppressed.load(), 1u);
}

TEST_F(MigrationTest, RefusedMessagesAreDeadLetteredAndNotMirrored) {
  registerOn("old");
  mirror(true);
  old_side.take();
  new_side.take();
  router->route("old", env(kCap, "{\"type\":\"result\",\"message_id\":\"dropped-1\","));
  EXPECT_TRUE(orch.take().empty());
  auto dl = router->deadLetters().snapshot();
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].reason, "invalid_message");
  EXPECT_TRUE(new_side.take().empty());
  EXPECT_TRUE(old_side.take().empty());  // no message_id could be read: no nack
  // One whose message_id can be read is nacked on the sender's side and, mirrored, on the other:
  // the refused message is the one difference between the two brokers.
  router->route("old", env(kCap, "{\"type\":\"register\",\"message_id\":\"dropped-2\"}"));
  EXPECT_TRUE(orch.take().empty());
  auto onOld = old_side.take(), onNew = new_side.take();
  ASSERT_EQ(onOld.size(), 1u);
  ASSERT_EQ(onNew.size(), 1u);
  EXPECT_EQ(onOld[0].payload, onNew[0].payload);
  EXPECT_NE(onOld[0].payload.find("dropped-2"), std::string::npos);
  EXPECT_EQ(router->deadLetters().snapshot().size(), 2u);
}

TEST_F(MigrationTest, CutoverMovesTheBindingsAndTheCommandsFollowThenRollbackBringsThemBack) {
  registerOn("old");
  mirror(true);
  old_side.take();
  new_side.take();
  pair.to_active = true;
  EXPECT_EQ(router->setMigration(pair), 1u);
  auto b = registry.lookup(kCap);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->endpoint, "new");
  EXPECT_TRUE(b->acked);  // kept
  router->route("orch", env(kCap, kCommand));
  auto onNew = new_side.take(), onOld = old_side.take();
  ASSERT_EQ(onNew.size(), 1u);
  ASSERT_EQ(onOld.size(), 1u);
  EXPECT_FALSE(onNew[0].mirror_copy);
  EXPECT_TRUE(onOld[0].mirror_copy);  // a fin still on the old broker keeps working
  // A register made during or after the switch for the old side lands on the new side.
  router->route("old", env("soarca", kRegister));
  EXPECT_EQ(registry.lookup(kFin)->endpoint, "new");
  // Subscriptions did not change: both sides still hear the fin.
  EXPECT_TRUE(old_side.subscribed(kCap));
  EXPECT_TRUE(new_side.subscribed(kCap));

  pair.to_active = false;
  EXPECT_EQ(router->setMigration(pair), 1u);
  EXPECT_EQ(registry.lookup(kCap)->endpoint, "old");
  orch.take();
  old_side.take();
  new_side.take();
  router->route("orch", env(kCap, kCommand));
  onOld = old_side.take();
  ASSERT_EQ(onOld.size(), 1u);
  EXPECT_FALSE(onOld[0].mirror_copy);
}

TEST_F(MigrationTest, AFailedMirrorCopyIsADeadLetterAndNoNack) {
  registerOn("old");
  mirror(true);
  orch.take();
  new_side.full = true;  // the new broker takes nothing
  router->route("orch", env(kCap, kCommand));
  EXPECT_EQ(old_side.take().size(), 2u);  // the ack earlier, and the command
  EXPECT_TRUE(orch.take().empty());       // SOARCA hears no nack: its fin got the command
  EXPECT_EQ(router->counters().mirror_failed.load(), 1u);
  auto dl = router->deadLetters().snapshot();
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].target, "new");  // a retry re-publishes the copy on the new side
  EXPECT_NE(dl[0].detail.find("mirror copy"), std::string::npos);
}

TEST_F(MigrationTest, EachFinIsSightedOnTheSideItSpeaksOn) {
  registerOn("old");
  auto seen = router->migrationSightings();
  ASSERT_EQ(seen.count(kFin), 1u);
  EXPECT_GT(seen.at(kFin).from_ms, 0);
  EXPECT_EQ(seen.at(kFin).to_ms, 0);
  router->route("new", env(kCap, kResult));  // the fin now speaks on the new broker
  seen = router->migrationSightings();
  EXPECT_GT(seen.at(kFin).to_ms, 0);
  router->route("other", env("soarca", kRegister));  // outside the pair: not a sighting
  router->route("old", env(kCap, "{\"type\":\"result\",")); // refused: not a sighting either
  EXPECT_EQ(router->migrationSightings().size(), 1u);
}

TEST_F(MigrationTest, EndingTheMigrationReleasesThePassiveSidesHold) {
  registerOn("old");
  pair.to_active = true;
  router->setMigration(pair);  // cut over: the fin is bound on new
  ASSERT_TRUE(old_side.subscribed(kCap));
  router->setMigration(MigrationPair{});  // the migration block is gone (finished)
  EXPECT_FALSE(old_side.subscribed(kCap));
  EXPECT_FALSE(old_side.subscribed(kFin));
  EXPECT_TRUE(new_side.subscribed(kCap));  // the fin's own side keeps hearing it
  EXPECT_TRUE(old_side.subscribed("soarca"));  // still a fins endpoint of its own
  EXPECT_EQ(registry.lookup(kCap)->endpoint, "new");
  // Unregistering later releases what is left, and nothing twice.
  router->route("orch", env("soarca", vectorBytes("10-a-unregister.json")));
  EXPECT_FALSE(new_side.subscribed(kCap));
}

TEST_F(MigrationTest, FinsElsewhereAreNotTouched) {
  router->route("other", env("soarca", kRegister));
  EXPECT_EQ(registry.lookup(kFin)->endpoint, "other");
  pair.to_active = true;
  EXPECT_EQ(router->setMigration(pair), 0u);
  EXPECT_EQ(registry.lookup(kFin)->endpoint, "other");
  EXPECT_FALSE(old_side.subscribed(kCap));
  EXPECT_FALSE(new_side.subscribed(kCap));
}

TEST_F(MigrationTest, ASharedBindingOfAnInstanceThatSwitchedLandsOnThisInstancesActiveSide) {
  // Another instance of the group already cut over: its record names the new side.
  router->setRegistryEndpoint("new");
  router->subscribeBase();
  FinBinding b;
  b.fin_id = kFin;
  b.endpoint = "new";
  b.capabilities = {kCap};
  b.acked = true;
  router->route("new", env(kBindingsPrefix + kFin, bindingRecord(b)));
  auto here = registry.lookup(kCap);
  ASSERT_TRUE(here);
  EXPECT_TRUE(here->remote);
  EXPECT_EQ(here->endpoint, "old");  // this instance has not switched: its active side
  EXPECT_TRUE(old_side.subscribed(kCap));
  EXPECT_TRUE(new_side.subscribed(kCap));
  mirror(true);
  router->route("orch", env(kCap, kCommand));
  EXPECT_EQ(old_side.take().size(), 1u);
  EXPECT_EQ(mirrored(new_side.take()), 1u);
  router->setRegistryEndpoint("");
}

TEST(RegistryRedirect, ABindingForTheRedirectedEndpointLandsOnItsTarget) {
  Registry r;
  FinBinding b;
  b.fin_id = "fin-1";
  b.endpoint = "old";
  b.capabilities = {"cap-1"};
  ASSERT_TRUE(r.bind(b).error.empty());
  EXPECT_EQ(r.redirect("old", "new"), 1u);
  EXPECT_EQ(r.lookup("cap-1")->endpoint, "new");
  b.fin_id = "fin-2";
  b.capabilities = {"cap-2"};
  ASSERT_TRUE(r.bind(b).error.empty());
  EXPECT_EQ(r.lookup("cap-2")->endpoint, "new");
  r.redirect("", "");
  b.fin_id = "fin-3";
  b.capabilities = {"cap-3"};
  ASSERT_TRUE(r.bind(b).error.empty());
  EXPECT_EQ(r.lookup("cap-3")->endpoint, "old");
}

}  // namespace
