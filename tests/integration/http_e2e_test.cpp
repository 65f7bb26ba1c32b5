// The real fingate binary with the HTTP plugin: fins that long-poll (and fins that are webhook
// targets) beside orchestrators on TCP and on MQTT (real mosquitto), and an orchestrator on HTTP
// with a fin on TCP. The captured protocol vectors, byte for byte.
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <fingate/fin_codec.hpp>
#include <mutex>
#include <thread>

#include "gateway_process.hpp"
#include "mosquitto.hpp"
#include "mqtt_test_client.hpp"

using namespace fingate::test;

namespace {

const std::string kReg = vectorBytes("01-a-register.json");
const std::string kCmd = vectorBytes("13-b-ok-command-auth.json");
const std::string kResult = vectorBytes("14-b-ok-result.json");
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kRegId = "abec7356-e6f0-11f1-acf4-02fc00000001";
const std::string kToken = "e2e-token-0123456789abcdef";

std::unique_ptr<httplib::Client> client(int port, const std::string& token = kToken) {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
  c->set_keep_alive(true);
  c->set_tcp_nodelay(true);
  c->set_read_timeout(30, 0);
  c->set_url_encode(false);
  c->set_bearer_token_auth(token.c_str());
  return c;
}

::testing::AssertionResult gotFrame(FrameClient& c, const std::string& topic, const std::string& payload) {
  auto f = c.recv(5s);
  if (!f) return ::testing::AssertionFailure() << "nothing received on TCP (expected " << topic << ")";
  if (f->topic != topic || f->payload != payload)
    return ::testing::AssertionFailure() << "got on " << f->topic << ": " << f->payload.substr(0, 300);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult polled(httplib::Client& c, const std::string& topic, const std::string& payload) {
  auto r = c.Get(("/v1/poll/" + topic + "?wait=10").c_str());
  if (!r) return ::testing::AssertionFailure() << "no answer: " << httplib::to_string(r.error());
  if (r->status != 200) return ::testing::AssertionFailure() << "status " << r->status << " " << r->body;
  if (r->body != payload) return ::testing::AssertionFailure() << "got " << r->body.substr(0, 300);
  if (r->get_header_value("Fin-Topic") != topic)
    return ::testing::AssertionFailure() << "Fin-Topic " << r->get_header_value("Fin-Topic");
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult posted(httplib::Client& c, const std::string& topic, const std::string& payload,
                                  const std::string& outcome = "delivered") {
  auto r = c.Post(("/v1/publish/" + topic).c_str(), payload, "application/json");
  if (!r) return ::testing::AssertionFailure() << "no answer: " << httplib::to_string(r.error());
  if (r->status != 202) return ::testing::AssertionFailure() << "status " << r->status << " " << r->body;
  if (r->get_header_value("Fin-Outcome") != outcome)
    return ::testing::AssertionFailure() << "outcome " << r->get_header_value("Fin-Outcome");
  return ::testing::AssertionSuccess();
}

class HttpE2E : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && gw) std::cerr << "---- fingate log ----\n" << gw->log() << "\n";
  }
  std::unique_ptr<GatewayProcess> gw;
};

// SOARCA on TCP, a fin that long-polls over HTTP: register, ack, command, ack, result.
TEST_F(HttpE2E, OrchestratorOnTcpFinOnHttpLongPoll) {
  gw = std::make_unique<GatewayProcess>("http-tcp",
                                        "endpoints:\n"
                                        "  soarca: { plugin: tcp, role: orchestrator, listen: \"127.0.0.1:0\" }\n"
                                        "  web: { plugin: http, role: fins, listen: \"127.0.0.1:0\", token: \"" +
                                            kToken + "\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "web"})) << gw->log();
  FrameClient soarca(gw->port("soarca"));
  ASSERT_TRUE(soarca.subscribe("soarca"));
  ASSERT_TRUE(soarca.barrier());
  auto fin = client(gw->port("web"));
  ASSERT_TRUE(posted(*fin, "soarca", kReg));
  ASSERT_TRUE(gotFrame(soarca, "soarca", kReg));
  ASSERT_TRUE(soarca.subscribe(kFin));
  ASSERT_TRUE(soarca.subscribe(kCap));
  ASSERT_TRUE(soarca.barrier());
  const std::string reg_ack = fingate::fin::makeAck(kRegId);
  ASSERT_TRUE(soarca.publish(kFin, reg_ack));
  ASSERT_TRUE(polled(*fin, kFin, reg_ack));  // waited in the backlog for the first poll
  ASSERT_TRUE(soarca.publish(kCap, kCmd));
  ASSERT_TRUE(polled(*fin, kCap, kCmd));
  const std::string cmd_id = fingate::fin::parse(kCmd).msg.message_id;
  ASSERT_TRUE(posted(*fin, kCap, fingate::fin::makeAck(cmd_id)));
  ASSERT_TRUE(gotFrame(soarca, kCap, fingate::fin::makeAck(cmd_id)));
  ASSERT_TRUE(posted(*fin, kCap, kResult));
  ASSERT_TRUE(gotFrame(soarca, kCap, kResult));
  // SOARCA acks the result; the fin (still subscribed on this keep-alive connection) gets it.
  ASSERT_TRUE(soarca.publish(kCap, fingate::fin::makeAck("1b5823f2-e6f1-11f1-b0c5-02fc00000001")));
  ASSERT_TRUE(polled(*fin, kCap, fingate::fin::makeAck("1b5823f2-e6f1-11f1-b0c5-02fc00000001")));
  // A fin on HTTP may not speak on a topic it has not registered: refused and nacked.
  auto foreign = fin->Post("/v1/publish/soarca", "{\"type\":\"unregister\",\"message_id\":\"m-1\",\"all\":true}",
                           "application/json");
  ASSERT_TRUE(foreign);
  EXPECT_EQ(foreign->status, 422) << foreign->body;
  // Without the token nothing is routed.
  auto anon = client(gw->port("web"), "wrong-token-0123456789abcdef");
  auto r = anon->Post("/v1/publish/soarca", kReg, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_FALSE(soarca.recv(300ms));
}

// SOARCA on MQTT (real mosquitto, 3.1.1), the fin on HTTP.
TEST_F(HttpE2E, OrchestratorOnMqttFinOnHttpLongPoll) {
  Mosquitto broker;
  gw = std::make_unique<GatewayProcess>(
      "http-mqtt", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + broker.url() +
                       "\", qos: 1 }\n  web: { plugin: http, role: fins, listen: "
                       "\"127.0.0.1:0\", token: \"" +
                       kToken + "\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "web"})) << gw->log();
  MqttTestClient soarca(broker.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  soarca.subscribe(kCap);
  auto fin = client(gw->port("web"));
  ASSERT_TRUE(posted(*fin, "soarca", kReg));  // delivered: MQTT PUBACK
  auto m = soarca.recvOn("soarca");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, kReg);
  soarca.publish(kFin, fingate::fin::makeAck(kRegId));
  ASSERT_TRUE(polled(*fin, kFin, fingate::fin::makeAck(kRegId)));
  soarca.publish(kCap, kCmd);
  ASSERT_TRUE(polled(*fin, kCap, kCmd));
  const std::string cmd_id = fingate::fin::parse(kCmd).msg.message_id;
  ASSERT_TRUE(posted(*fin, kCap, fingate::fin::makeAck(cmd_id)));
  ASSERT_TRUE(posted(*fin, kCap, kResult));
  // SOARCA (3.1.1, no no-local) sees its own command, then the fin's ack and result.
  std::vector<std::string> seen;
  for (int i = 0; i < 3; ++i)
    if (auto x = soarca.recvOn(kCap)) seen.push_back(x->payload);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[1], fingate::fin::makeAck(cmd_id));
  EXPECT_EQ(seen[2], kResult);
}

// SOARCA on HTTP (it posts and long-polls), the fin on TCP.
TEST_F(HttpE2E, OrchestratorOnHttpFinOnTcp) {
  gw = std::make_unique<GatewayProcess>("http-orch",
                                        "endpoints:\n"
                                        "  soarca: { plugin: http, role: orchestrator, listen: \"127.0.0.1:0\", "
                                        "token: \"" +
                                            kToken +
                                            "\" }\n  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "edge"})) << gw->log();
  auto soarca = client(gw->port("soarca"));
  // SOARCA keeps one keep-alive connection per topic it listens on.
  auto soarca_cap = client(gw->port("soarca"));
  ASSERT_EQ(soarca->Get("/v1/poll/soarca?wait=0")->status, 204);  // subscribed from now on
  FrameClient fin(gw->port("edge"));
  ASSERT_TRUE(fin.subscribe("soarca"));
  ASSERT_TRUE(fin.barrier());
  ASSERT_TRUE(fin.publish("soarca", kReg));
  ASSERT_TRUE(polled(*soarca, "soarca", kReg));
  ASSERT_EQ(soarca_cap->Get(("/v1/poll/" + kCap + "?wait=0").c_str())->status, 204);
  ASSERT_TRUE(posted(*soarca, kFin, fingate::fin::makeAck(kRegId)));
  ASSERT_TRUE(gotFrame(fin, kFin, fingate::fin::makeAck(kRegId)));
  ASSERT_TRUE(posted(*soarca, kCap, kCmd));  // delivered: written to the fin's TCP session
  ASSERT_TRUE(gotFrame(fin, kCap, kCmd));
  const std::string cmd_id = fingate::fin::parse(kCmd).msg.message_id;
  ASSERT_TRUE(fin.publish(kCap, fingate::fin::makeAck(cmd_id)));
  ASSERT_TRUE(fin.publish(kCap, kResult));
  ASSERT_TRUE(polled(*soarca_cap, kCap, fingate::fin::makeAck(cmd_id)));
  ASSERT_TRUE(polled(*soarca_cap, kCap, kResult));
}

// The fin is a webhook target (a small HTTP server in the test) and answers by POST.
TEST_F(HttpE2E, FinAsWebhookTarget) {
  httplib::Server hook;
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> got;
  hook.Post(R"(/hook/(.*))", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lk(mu);
    got.emplace_back(req.matches[1], req.body);
    res.status = 204;
  });
  const int hook_port = hook.bind_to_any_port("127.0.0.1");
  std::thread th([&] { hook.listen_after_bind(); });
  gw = std::make_unique<GatewayProcess>("http-hook",
                                        "endpoints:\n"
                                        "  soarca: { plugin: tcp, role: orchestrator, listen: \"127.0.0.1:0\" }\n"
                                        "  fn: { plugin: http, role: fins, listen: \"127.0.0.1:0\", token: \"" +
                                            kToken + "\", webhook: \"http://127.0.0.1:" + std::to_string(hook_port) +
                                            "/hook/{topic}\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "fn"})) << gw->log();
  FrameClient soarca(gw->port("soarca"));
  ASSERT_TRUE(soarca.subscribe("soarca"));
  ASSERT_TRUE(soarca.barrier());
  auto fin = client(gw->port("fn"));
  ASSERT_TRUE(posted(*fin, "soarca", kReg));
  ASSERT_TRUE(gotFrame(soarca, "soarca", kReg));
  ASSERT_TRUE(soarca.subscribe(kCap));
  ASSERT_TRUE(soarca.barrier());
  ASSERT_TRUE(soarca.publish(kFin, fingate::fin::makeAck(kRegId)));
  ASSERT_TRUE(soarca.publish(kCap, kCmd));
  ASSERT_TRUE(waitFor([&] {
    std::lock_guard lk(mu);
    return got.size() == 2;
  }));
  {
    // Order holds per topic; the ack (fin id) and the command (capability id) are two topics,
    // delivered by independent webhook workers.
    std::lock_guard lk(mu);
    std::sort(got.begin(), got.end());
    std::vector<std::pair<std::string, std::string>> want = {{kFin, fingate::fin::makeAck(kRegId)}, {kCap, kCmd}};
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want);
  }
  ASSERT_TRUE(posted(*fin, kCap, kResult));
  ASSERT_TRUE(gotFrame(soarca, kCap, kResult));
  gw.reset();  // its keep-alive webhook connection goes first, so the hook server stops at once
  hook.stop();
  th.join();
}

// Per-fin tokens through the core: a token speaks for its own fin only.
TEST_F(HttpE2E, PerFinTokensApplyTheSessionRules) {
  const std::string ta = "token-fin-a-0123456789abcdef", tb = "token-fin-b-0123456789abcdef";
  gw = std::make_unique<GatewayProcess>("http-tokens",
                                        "endpoints:\n"
                                        "  soarca: { plugin: tcp, role: orchestrator, listen: \"127.0.0.1:0\" }\n"
                                        "  web:\n    plugin: http\n    role: fins\n    listen: \"127.0.0.1:0\"\n"
                                        "    tokens:\n      \"" +
                                            kFin + "\": \"" + ta + "\"\n      other-fin: \"" + tb + "\"\n");
  ASSERT_TRUE(gw->start({"soarca", "web"})) << gw->log();
  FrameClient soarca(gw->port("soarca"));
  ASSERT_TRUE(soarca.subscribe("soarca"));
  ASSERT_TRUE(soarca.barrier());
  auto a = client(gw->port("web"), ta), b = client(gw->port("web"), tb);
  // b may not register a's fin (the plugin checks the token's fin id).
  auto stolen = b->Post("/v1/publish/soarca", kReg, "application/json");
  ASSERT_TRUE(stolen);
  EXPECT_EQ(stolen->status, 403);
  ASSERT_TRUE(posted(*a, "soarca", kReg));
  ASSERT_TRUE(gotFrame(soarca, "soarca", kReg));
  // b may neither poll a's topics nor publish on them (the core's session rules).
  auto peek = b->Get(("/v1/poll/" + kCap + "?wait=0").c_str());
  ASSERT_TRUE(peek);
  EXPECT_EQ(peek->status, 403) << peek->body;
  auto spoof = b->Post(("/v1/publish/" + kCap).c_str(), kResult, "application/json");
  ASSERT_TRUE(spoof);
  EXPECT_EQ(spoof->status, 422) << spoof->body;
  EXPECT_FALSE(soarca.recv(300ms));
  // a's own exchange works.
  ASSERT_TRUE(soarca.subscribe(kCap));
  ASSERT_TRUE(soarca.barrier());
  ASSERT_TRUE(soarca.publish(kCap, kCmd));
  ASSERT_TRUE(polled(*a, kCap, kCmd));
  ASSERT_TRUE(posted(*a, kCap, kResult));
  ASSERT_TRUE(gotFrame(soarca, kCap, kResult));
}

}  // namespace
