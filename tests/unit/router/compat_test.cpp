// Compatibility repair (SOARCA's Go encoder vs the Python fin library) and register replay.
#include <fingate/fin_codec.hpp>
#include <fingate/fin_compat.hpp>
#include <fingate/router.hpp>
#include <gtest/gtest.h>

#include "recording_output.hpp"
#include "test_support.hpp"

using namespace fingate;
using fingate::test::env;
using fingate::test::kCap;
using fingate::test::kFin;
using fingate::test::vectorBytes;

namespace {

const std::string kNoAuth = vectorBytes("17-b-noauth-command.json");
const std::string kWithAuth = vectorBytes("13-b-ok-command-auth.json");

TEST(PythonFinRepair, EmptyAuthenticationIsRemovedAndNothingElseChanges) {
  std::string out;
  fin::RepairStats st;
  ASSERT_TRUE(fin::repairCommandForPythonFin(kNoAuth, out, st));
  EXPECT_EQ(st.auth_removed, 1);
  EXPECT_EQ(st.variables_completed, 0);
  std::string expected = kNoAuth;
  std::string auth = "\"authentication\":{\"type\":\"\",\"kms\":false},";
  auto at = expected.find(auth);
  ASSERT_NE(at, std::string::npos);
  expected.erase(at, auth.size());
  EXPECT_EQ(out, expected);
  EXPECT_TRUE(fin::parse(out).ok) << fin::parse(out).error;
}

TEST(PythonFinRepair, RealAuthenticationStays) {
  std::string out;
  fin::RepairStats st;
  EXPECT_FALSE(fin::repairCommandForPythonFin(kWithAuth, out, st));
  EXPECT_EQ(st.auth_removed, 0);
}

TEST(PythonFinRepair, VariablesGetTheFieldsGoOmits) {
  // Go drops empty description/value and false constant/external.
  std::string cmd = kWithAuth;
  auto at = cmd.find("\"variables\":{}");
  ASSERT_NE(at, std::string::npos);
  cmd.replace(at, 14,
              R"("variables":{"__a__":{"type":"string","name":"__a__"},"__b__":{"type":"string","name":"__b__","description":"d","value":"v","constant":true,"external":true},"__c__":{ }})");
  std::string out;
  fin::RepairStats st;
  ASSERT_TRUE(fin::repairCommandForPythonFin(cmd, out, st));
  EXPECT_EQ(st.variables_completed, 2);
  EXPECT_NE(out.find(R"("__a__":{"type":"string","name":"__a__","description":"","value":"","constant":false,"external":false})"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(R"("__b__":{"type":"string","name":"__b__","description":"d","value":"v","constant":true,"external":true})"),
            std::string::npos);
  EXPECT_NE(out.find(R"("__c__":{ "description":"","value":"","constant":false,"external":false})"), std::string::npos)
      << out;
  // Everything outside the variables is byte-identical.
  EXPECT_EQ(out.substr(0, at), cmd.substr(0, at));
  EXPECT_EQ(out.substr(out.find("},\"meta\"")), cmd.substr(cmd.find("},\"meta\"")));
  EXPECT_TRUE(fin::parse(out).ok);
}

TEST(PythonFinRepair, AuthenticationAsFirstFieldTakesTheFollowingComma) {
  std::string cmd = R"({"type":"command","message_id":"m","command":{ "authentication" : {"type":""} , "command":"x"},"meta":{}})";
  std::string out;
  fin::RepairStats st;
  ASSERT_TRUE(fin::repairCommandForPythonFin(cmd, out, st));
  EXPECT_EQ(out, R"({"type":"command","message_id":"m","command":{  "command":"x"},"meta":{}})");
}

TEST(PythonFinRepair, OnlyCommandsAreTouched) {
  std::string out;
  fin::RepairStats st;
  EXPECT_FALSE(fin::repairCommandForPythonFin(vectorBytes("14-b-ok-result.json"), out, st));
  EXPECT_FALSE(fin::repairCommandForPythonFin("not json", out, st));
}

// ---- router-level: per endpoint compat, nack -> ack, replay ----------------------------

using Collect = fingate::test::RecordingOutput;


const std::string kReg = vectorBytes("01-a-register.json");
const std::string kRegId = "abec7356-e6f0-11f1-acf4-02fc00000001";

class CompatRouter : public ::testing::Test {
 protected:
  void SetUp() override {
    auto o = std::make_shared<RouterEndpoint>();
    o->name = "soarca";
    o->role = Role::Orchestrator;
    o->out = &orch;
    orch.no_local = true;
    auto p = std::make_shared<RouterEndpoint>();
    p->name = "py";
    p->role = Role::Fins;
    p->out = &py;
    py.no_local = true;
    p->compat_python_fin = true;
    auto g = std::make_shared<RouterEndpoint>();
    g->name = "plain";
    g->role = Role::Fins;
    g->out = &plain;
    plain.no_local = true;
    router.setEndpoints({o, p, g});
    router.subscribeBase();
  }
  void registerAndAck(const std::string& ep, const std::string& reg) {
    router.route(ep, env("soarca", reg));
    ASSERT_EQ(orch.take().size(), 1u);
    router.route("soarca", env(kFin, fin::makeAck(fin::parse(reg).msg.message_id)));
  }
  Registry registry;
  Router router{registry, 100};
  Collect orch, py, plain;
};

TEST_F(CompatRouter, CommandToPythonFinEndpointIsRepairedAndCounted) {
  registerAndAck("py", kReg);
  py.take();
  router.route("soarca", env(kCap, kNoAuth));
  auto got = py.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload.find("\"authentication\""), std::string::npos);
  EXPECT_EQ(router.counters().compat_auth_removed.load(), 1u);
  // A result from the fin goes to SOARCA byte for byte.
  router.route("py", env(kCap, vectorBytes("14-b-ok-result.json")));
  auto r = orch.take();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, vectorBytes("14-b-ok-result.json"));
}

TEST_F(CompatRouter, CommandToPlainEndpointIsUntouched) {
  registerAndAck("plain", kReg);
  plain.take();
  router.route("soarca", env(kCap, kNoAuth));
  auto got = plain.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, kNoAuth);
  EXPECT_EQ(router.counters().compat_auth_removed.load(), 0u);
}

TEST_F(CompatRouter, AlreadyRegisteredNackBecomesAnAckForARestartedFin) {
  registerAndAck("py", kReg);
  ASSERT_TRUE(registry.lookup(kFin)->acked);
  py.take();
  // The fin restarts and sends the same ids with a new message id.
  std::string again = kReg;
  again.replace(again.find(kRegId), kRegId.size(), "ffff0000-e6f0-11f1-acf4-02fc00000001");
  router.route("py", env("soarca", again));
  ASSERT_EQ(orch.take().size(), 1u);  // SOARCA still hears it (it may have restarted too)
  // SOARCA's "already registered" answer (the shape of vectors/24-b-reregister-nack.json).
  router.route("soarca", env(kFin, fin::makeNack("ffff0000-e6f0-11f1-acf4-02fc00000001")));
  auto got = py.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, fin::makeAck("ffff0000-e6f0-11f1-acf4-02fc00000001"));
  EXPECT_TRUE(registry.lookup(kCap));
  EXPECT_EQ(router.counters().compat_nacks_to_acks.load(), 1u);
}

TEST_F(CompatRouter, NackOfANeverAckedRegisterIsForwardedAndUndoes) {
  router.route("py", env("soarca", kReg));
  orch.take();
  router.route("soarca", env(kFin, fin::makeNack(kRegId)));
  auto got = py.take();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, fin::makeNack(kRegId));
  EXPECT_FALSE(registry.lookup(kCap));
}

TEST_F(CompatRouter, ReplayResendsStoredRegistersAndSwallowsTheAnswers) {
  registerAndAck("py", kReg);
  py.take();
  router.replayRegisters("soarca");
  auto replayed = orch.take();
  ASSERT_EQ(replayed.size(), 1u);
  EXPECT_EQ(replayed[0].topic, "soarca");
  EXPECT_EQ(replayed[0].payload, kReg);
  // A restarted SOARCA acks it: the fin does not hear that.
  router.route("soarca", env(kFin, fin::makeAck(kRegId)));
  EXPECT_TRUE(py.take().empty());
  EXPECT_EQ(router.counters().replay_replies_swallowed.load(), 1u);
  // Then commands flow as before.
  router.route("soarca", env(kCap, kWithAuth));
  EXPECT_EQ(py.take().size(), 1u);
  // An unrestarted SOARCA answers a replay with "already registered": swallowed too.
  router.replayRegisters("");
  orch.take();
  router.route("soarca", env(kFin, fin::makeNack(kRegId)));
  EXPECT_TRUE(py.take().empty());
  EXPECT_TRUE(registry.lookup(kCap));
}

}  // namespace
