// The real fingate binary, TCP endpoints, real clients: the whole Fin exchange end to end.
#include <fingate/fin_codec.hpp>
#include <gtest/gtest.h>
#include <signal.h>

#include "gateway_process.hpp"

using namespace fingate::test;
using Frame = FrameClient::Frame;

namespace {

const std::string kRegA = vectorBytes("01-a-register.json");
const std::string kAckA = vectorBytes("02-a-ack.json");
const std::string kCmd = vectorBytes("13-b-ok-command-auth.json");
const std::string kResult = vectorBytes("14-b-ok-result.json");
const std::string kFinA = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCapA = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";

std::string replaceAll(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}
// Fin B: the same register with other ids.
const std::string kFinB = "soarca-fin--other-0000";
const std::string kCapB = "mod-other--0000";
const std::string kRegB = replaceAll(replaceAll(replaceAll(kRegA, kFinA, kFinB), kCapA, kCapB),
                                     "abec7356-e6f0-11f1-acf4-02fc00000001", "bbbb0000-e6f0-11f1-acf4-02fc00000001");

const char* kTwoTcp = R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: tcp, role: fins, listen: "127.0.0.1:0" }
)";

::testing::AssertionResult gotPublish(FrameClient& c, const std::string& topic, const std::string& payload,
                                      std::chrono::milliseconds t = 5s) {
  auto f = c.recv(t);
  if (!f) return ::testing::AssertionFailure() << "nothing received (expected " << topic << ")";
  if (f->kind != FrameClient::Publish || f->topic != topic || f->payload != payload)
    return ::testing::AssertionFailure() << "got kind " << int(f->kind) << " topic '" << f->topic << "' payload "
                                         << f->payload.substr(0, 200);
  return ::testing::AssertionSuccess();
}

class GatewayE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    gw = std::make_unique<GatewayProcess>("e2e", kTwoTcp);
    ASSERT_TRUE(gw->start({"orchestrator", "fins"})) << gw->log();
    orch_port = gw->port("orchestrator");
    fins_port = gw->port("fins");
    ASSERT_GT(orch_port, 0);
    ASSERT_GT(fins_port, 0);
  }
  void TearDown() override {
    if (HasFailure() && gw) std::cerr << "---- fingate log ----\n" << gw->log() << "\n";
  }

  // SOARCA-like: hears registers, subscribes the ids, acks.
  void registerFin(FrameClient& orch, FrameClient& fin, const std::string& reg, const std::string& fin_id,
                   const std::string& cap, const std::string& msg_id) {
    ASSERT_TRUE(fin.subscribe("soarca"));
    ASSERT_TRUE(fin.barrier());
    ASSERT_TRUE(fin.publish("soarca", reg));
    ASSERT_TRUE(gotPublish(orch, "soarca", reg));  // byte for byte
    ASSERT_TRUE(orch.subscribe(fin_id));
    ASSERT_TRUE(orch.subscribe(cap));
    ASSERT_TRUE(orch.barrier());
    std::string ack = fingate::fin::makeAck(msg_id);
    ASSERT_TRUE(orch.publish(fin_id, ack));
    ASSERT_TRUE(gotPublish(fin, fin_id, ack));
  }

  std::unique_ptr<GatewayProcess> gw;
  int orch_port = 0, fins_port = 0;
};

TEST_F(GatewayE2E, FullFinExchangeReachesOnlyTheRightFin) {
  FrameClient orch(orch_port), a(fins_port), b(fins_port);
  ASSERT_TRUE(orch.connected() && a.connected() && b.connected());
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  registerFin(orch, a, kRegA, kFinA, kCapA, "abec7356-e6f0-11f1-acf4-02fc00000001");
  registerFin(orch, b, kRegB, kFinB, kCapB, "bbbb0000-e6f0-11f1-acf4-02fc00000001");

  // command -> A only
  ASSERT_TRUE(orch.publish(kCapA, kCmd));
  ASSERT_TRUE(gotPublish(a, kCapA, kCmd));
  std::string cmd_ack = fingate::fin::makeAck("1b57ed0d-e6f1-11f1-bac7-e6e1bc57048a");
  ASSERT_TRUE(a.publish(kCapA, cmd_ack));
  ASSERT_TRUE(a.publish(kCapA, kResult));
  ASSERT_TRUE(gotPublish(orch, kCapA, cmd_ack));
  ASSERT_TRUE(gotPublish(orch, kCapA, kResult));
  std::string res_ack = fingate::fin::makeAck("1b5823f2-e6f1-11f1-b0c5-02fc00000001");
  ASSERT_TRUE(orch.publish(kCapA, res_ack));
  ASSERT_TRUE(gotPublish(a, kCapA, res_ack));

  // B heard none of A's traffic.
  ASSERT_TRUE(b.barrier());
  auto stray = b.recv(200ms);
  EXPECT_FALSE(stray) << "fin B received " << stray->topic;

  // The admin API shows both bindings, A acked.
  auto fins = httpGet(gw->adminPort(), "/v1/fins");
  ASSERT_EQ(fins.status, 200);
  EXPECT_NE(fins.body.find("\"fin_id\":\"" + kFinA + "\""), std::string::npos) << fins.body;
  EXPECT_NE(fins.body.find("\"fin_id\":\"" + kFinB + "\""), std::string::npos);
  EXPECT_NE(fins.body.find("\"acked\":true"), std::string::npos);
  EXPECT_NE(fins.body.find("\"capabilities\":[\"" + kCapA + "\"]"), std::string::npos);

  auto metrics = httpGet(gw->adminPort(), "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("fingate_bindings 2"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("fingate_messages_in_total{endpoint=\"fins\"}"), std::string::npos);
  EXPECT_EQ(httpGet(gw->adminPort(), "/readyz").status, 200);
  EXPECT_EQ(httpGet(gw->adminPort(), "/healthz").status, 200);

  // Unregister A's capability (Python-library style) on soarca: A's binding goes, B stays.
  ASSERT_TRUE(orch.publish("soarca", vectorBytes("10-a-unregister.json")));
  ASSERT_TRUE(gotPublish(a, "soarca", vectorBytes("10-a-unregister.json")));
  ASSERT_TRUE(waitFor([&] {
    return httpGet(gw->adminPort(), "/v1/fins").body.find(kCapA) == std::string::npos;
  }));
  EXPECT_NE(httpGet(gw->adminPort(), "/v1/fins").body.find(kCapB), std::string::npos);
}

TEST_F(GatewayE2E, MalformedFrameClosesOnlyThatConnection) {
  FrameClient orch(orch_port), a(fins_port), bad(fins_port);
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  registerFin(orch, a, kRegA, kFinA, kCapA, "abec7356-e6f0-11f1-acf4-02fc00000001");
  // length-of-rest 2 (< 3): a framing error.
  ASSERT_TRUE(bad.sendRaw(std::string("\x00\x00\x00\x02\x01\x00", 6)));
  auto err = bad.recv(5s);
  ASSERT_TRUE(err);
  EXPECT_EQ(err->kind, FrameClient::Error);
  EXPECT_NE(err->payload.find("\"error\""), std::string::npos) << err->payload;
  EXPECT_TRUE(bad.waitClosed(5s));
  // A and the orchestrator carry on.
  ASSERT_TRUE(orch.publish(kCapA, kCmd));
  ASSERT_TRUE(gotPublish(a, kCapA, kCmd));
}

TEST_F(GatewayE2E, InvalidRegisterIsNackedAndDeadLettered) {
  FrameClient orch(orch_port), a(fins_port);
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  std::string bad = replaceAll(kRegA, "\"capabilities\":[", "\"capabilities\":{\"x\":[");
  bad = replaceAll(bad, "}],\"meta\"", "}]},\"meta\"");
  ASSERT_TRUE(a.publish("soarca", bad));
  auto nack = a.recv(5s);
  ASSERT_TRUE(nack);
  EXPECT_EQ(nack->payload, fingate::fin::makeNack("abec7356-e6f0-11f1-acf4-02fc00000001"));
  EXPECT_FALSE(orch.recv(300ms));  // never forwarded
  auto dl = httpGet(gw->adminPort(), "/v1/dead-letters");
  EXPECT_NE(dl.body.find("\"reason\":\"invalid_message\""), std::string::npos) << dl.body;
  EXPECT_NE(httpGet(gw->adminPort(), "/metrics").body.find("fingate_dead_letters_total{reason=\"invalid_message\"} 1"),
            std::string::npos);
}

TEST_F(GatewayE2E, SessionCloseUnbindsTheFin) {
  FrameClient orch(orch_port);
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  {
    FrameClient a(fins_port);
    registerFin(orch, a, kRegA, kFinA, kCapA, "abec7356-e6f0-11f1-acf4-02fc00000001");
  }
  ASSERT_TRUE(waitFor([&] { return httpGet(gw->adminPort(), "/v1/fins").body == "{\"fins\":[]}\n"; }));
}

TEST_F(GatewayE2E, BindingsSurviveKill9AndSigtermExitsZero) {
  FrameClient orch(orch_port), a(fins_port);
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  registerFin(orch, a, kRegA, kFinA, kCapA, "abec7356-e6f0-11f1-acf4-02fc00000001");
  ASSERT_TRUE(waitFor([&] { return httpGet(gw->adminPort(), "/v1/fins").body.find("\"acked\":true") != std::string::npos; }));
  // State writes are coalesced off the router (limits.state_write_delay_ms, default 100 ms):
  // the kill comes once the acked binding is on disk.
  ASSERT_TRUE(waitFor([&] {
    auto f = readFile(gw->stateDir() + "/bindings.json");
    return f.find(kCapA) != std::string::npos && f.find("\"acked\":true") != std::string::npos;
  }));
  EXPECT_EQ(gw->process().stop(SIGKILL), 128 + SIGKILL);
  // Same state dir, new process.
  GatewayProcess again("e2e-restart", kTwoTcp, gw->stateDir());
  ASSERT_TRUE(again.start({"orchestrator", "fins"})) << again.log();
  auto fins = httpGet(again.adminPort(), "/v1/fins");
  EXPECT_NE(fins.body.find(kCapA), std::string::npos) << fins.body;
  EXPECT_NE(fins.body.find("\"restored\":true"), std::string::npos);
  EXPECT_EQ(again.process().stop(SIGTERM), 0);
}

TEST_F(GatewayE2E, SighupReloadKeepsRunningConfigOnErrorAndAppliesAGoodOne) {
  FrameClient orch(orch_port), a(fins_port);
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  registerFin(orch, a, kRegA, kFinA, kCapA, "abec7356-e6f0-11f1-acf4-02fc00000001");
  gw->rewrite(std::string(kTwoTcp) + "  broken: { plugin: tcp, role: nonsense }\n");
  ::kill(gw->process().pid(), SIGHUP);
  ASSERT_TRUE(gw->process().waitForLog("reload refused"));
  // Still serving, binding intact.
  ASSERT_TRUE(orch.publish(kCapA, kCmd));
  ASSERT_TRUE(gotPublish(a, kCapA, kCmd));
  // A good config adding an endpoint: existing sessions stay.
  gw->rewrite(std::string(kTwoTcp) + "  extra: { plugin: loopback, role: bridge }\n");
  ::kill(gw->process().pid(), SIGHUP);
  ASSERT_TRUE(gw->process().waitForLog("reload: applied"));
  ASSERT_TRUE(orch.publish(kCapA, kCmd));
  ASSERT_TRUE(gotPublish(a, kCapA, kCmd));
  EXPECT_NE(httpGet(gw->adminPort(), "/v1/endpoints").body.find("\"extra\""), std::string::npos);
}

TEST(GatewayCli, ValidateReportsFileLineColumnAndExitsTwo) {
  std::string dir = tempDir("validate");
  writeFile(dir + "/bad.yaml", "plugins_dir: " + std::string(FINGATE_PLUGINS_DIR) +
                                   "\nendpoints:\n  orchestrator:\n    plugin: tcp\n    role: orchestrator\n"
                                   "    listen: 127.0.0.1:0\n    bogus_key: 1\n");
  Process p({FINGATE_BIN, "validate", dir + "/bad.yaml"}, dir + "/out.log");
  EXPECT_EQ(p.wait(), 2);
  auto out = p.log();
  EXPECT_NE(out.find(dir + "/bad.yaml:7:5:"), std::string::npos) << out;
  EXPECT_NE(out.find("bogus_key"), std::string::npos) << out;

  writeFile(dir + "/syntax.yaml", "endpoints:\n  a: { plugin: tcp\n");
  Process q({FINGATE_BIN, "validate", dir + "/syntax.yaml"}, dir + "/out2.log");
  EXPECT_EQ(q.wait(), 2);
  EXPECT_NE(q.log().find(dir + "/syntax.yaml:"), std::string::npos) << q.log();

  writeFile(dir + "/good.yaml", "plugins_dir: " + std::string(FINGATE_PLUGINS_DIR) + "\n" + kTwoTcp);
  Process g({FINGATE_BIN, "validate", dir + "/good.yaml"}, dir + "/out3.log");
  EXPECT_EQ(g.wait(), 0) << g.log();
  // run on a bad file exits 2 as well
  Process r({FINGATE_BIN, "run", dir + "/bad.yaml"}, dir + "/out4.log");
  EXPECT_EQ(r.wait(), 2) << r.log();
}

TEST(GatewayCli, PluginsListsWhatLoads) {
  std::string dir = tempDir("plugins");
  Process p({FINGATE_BIN, "plugins", "--dir", FINGATE_PLUGINS_DIR}, dir + "/out.log");
  EXPECT_EQ(p.wait(), 0) << p.log();
  EXPECT_NE(p.log().find("loopback"), std::string::npos);
  EXPECT_NE(p.log().find("tcp"), std::string::npos);
}

}  // namespace

namespace {

// One stuck endpoint (a TCP connect-mode endpoint whose peer is gone) must not stall delivery
// to another target of the same source; what cannot be queued for it is dead-lettered and counted.
TEST(GatewayIsolation, StuckEndpointDoesNotStallTheOthers) {
  int dead = freePort();  // nobody listens here
  GatewayProcess gw("isolation", "queue_capacity: 50\nendpoints:\n"
                                 "  in: { plugin: tcp, role: bridge, listen: \"127.0.0.1:0\" }\n"
                                 "  ok: { plugin: tcp, role: bridge, listen: \"127.0.0.1:0\" }\n"
                                 "  stuck: { plugin: tcp, role: bridge, required: false, connect: \"127.0.0.1:" +
                                     std::to_string(dead) +
                                     "\", max_outbound_bytes: 1024 }\n"
                                     "routes:\n"
                                     "  - { from: { endpoint: in, topic: \"#\" }, to: { endpoint: stuck } }\n"
                                     "  - { from: { endpoint: in, topic: \"#\" }, to: { endpoint: ok } }\n");
  ASSERT_TRUE(gw.start({"in", "ok"})) << gw.log();
  FrameClient sub(gw.port("ok")), pub(gw.port("in"));
  ASSERT_TRUE(sub.subscribe("#"));
  ASSERT_TRUE(sub.barrier());
  const int n = 400;
  std::string payload(512, 'x');
  for (int i = 0; i < n; ++i) ASSERT_TRUE(pub.publish("t/" + std::to_string(i), payload));
  for (int i = 0; i < n; ++i) {
    auto f = sub.recv(10s);
    ASSERT_TRUE(f) << "message " << i << " never arrived\n" << gw.log();
    ASSERT_EQ(f->topic, "t/" + std::to_string(i));  // in order
  }
  auto dl = httpGet(gw.adminPort(), "/v1/dead-letters").body;
  EXPECT_NE(dl.find("\"queue_full\""), std::string::npos) << dl;
  EXPECT_EQ(httpGet(gw.adminPort(), "/readyz").status, 200);  // stuck is not required
}

}  // namespace
