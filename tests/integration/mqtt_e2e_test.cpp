// The real fingate binary between real mosquitto brokers, SOARCA-like (MQTT 3.1.1, QoS 1) and
// Python-fin-like (MQTT 5, QoS 0, no-local) clients, using the captured protocol vectors.
#include <fingate/fin_codec.hpp>
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>

#include "gateway_process.hpp"
#include "mosquitto.hpp"
#include "mqtt_test_client.hpp"

using namespace fingate::test;

namespace {

const std::string kReg = vectorBytes("01-a-register.json");
const std::string kCmdAuth = vectorBytes("13-b-ok-command-auth.json");
const std::string kCmdNoAuth = vectorBytes("17-b-noauth-command.json");
const std::string kResult = vectorBytes("14-b-ok-result.json");
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kRegId = "abec7356-e6f0-11f1-acf4-02fc00000001";

std::string withoutEmptyAuth(std::string s) {
  const std::string auth = "\"authentication\":{\"type\":\"\",\"kms\":false},";
  s.erase(s.find(auth), auth.size());
  return s;
}

::testing::AssertionResult got(std::optional<MqttTestClient::Msg> m, const std::string& payload) {
  if (!m) return ::testing::AssertionFailure() << "nothing received";
  if (m->payload != payload) return ::testing::AssertionFailure() << "got on " << m->topic << ": " << m->payload;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult gotFrame(FrameClient& c, const std::string& topic, const std::string& payload) {
  auto f = c.recv(5s);
  if (!f) return ::testing::AssertionFailure() << "nothing received on TCP (expected " << topic << ")";
  if (f->topic != topic || f->payload != payload)
    return ::testing::AssertionFailure() << "got on " << f->topic << ": " << f->payload.substr(0, 300);
  return ::testing::AssertionSuccess();
}

// Skips messages on the topic until one carries `payload` (e.g. a 3.1.1 client's own echoes).
::testing::AssertionResult gotEventually(MqttTestClient& c, const std::string& topic, const std::string& payload,
                                         std::chrono::milliseconds t = 10s) {
  auto end = std::chrono::steady_clock::now() + t;
  std::string seen;
  while (std::chrono::steady_clock::now() < end) {
    auto m = c.recvOn(topic, std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()));
    if (!m) break;
    if (m->payload == payload) return ::testing::AssertionSuccess();
    seen += m->payload.substr(0, 80) + " | ";
  }
  return ::testing::AssertionFailure() << "never got it; saw: " << seen;
}

std::string metric(int admin_port, const std::string& name) {
  auto body = httpGet(admin_port, "/metrics").body;
  auto at = body.find("\n" + name + " ");
  if (at == std::string::npos) return "";
  auto end = body.find('\n', at + 1);
  return body.substr(at + name.size() + 2, end - at - name.size() - 2);
}

class MqttE2E : public ::testing::Test {
 protected:
  void TearDown() override {
    if (HasFailure() && gw) std::cerr << "---- fingate log ----\n" << gw->log() << "\n";
  }
  std::unique_ptr<GatewayProcess> gw;
};

// SOARCA (Go, 3.1.1) on MQTT, a fin on TCP: the whole exchange with Go's exact command bytes.
TEST_F(MqttE2E, SoarcaOnMqttFinOnTcp) {
  Mosquitto broker;
  gw = std::make_unique<GatewayProcess>("mqtt-tcp", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" +
                                                        broker.url() +
                                                        "\", qos: 1 }\n  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "edge"})) << gw->log();
  MqttTestClient soarca(broker.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  FrameClient fin(gw->port("edge"));
  ASSERT_TRUE(fin.subscribe("soarca"));
  ASSERT_TRUE(fin.barrier());
  ASSERT_TRUE(fin.publish("soarca", kReg));
  ASSERT_TRUE(got(soarca.recvOn("soarca"), kReg));  // byte for byte
  soarca.subscribe(kCap);
  soarca.publish(kFin, fingate::fin::makeAck(kRegId));
  ASSERT_TRUE(gotFrame(fin, kFin, fingate::fin::makeAck(kRegId)));

  for (const std::string& cmd : {kCmdAuth, kCmdNoAuth}) {
    MqttTestClient commander(broker.url(), "soarca-fin-capability", 3, 1);
    commander.subscribe(kCap);
    commander.publish(kCap, cmd);
    ASSERT_TRUE(gotFrame(fin, kCap, cmd));  // TCP endpoint without compat: unchanged
    std::string id = fingate::fin::parse(cmd).msg.message_id;
    ASSERT_TRUE(fin.publish(kCap, fingate::fin::makeAck(id)));
    ASSERT_TRUE(fin.publish(kCap, kResult));
    ASSERT_TRUE(got(commander.recvOn(kCap), cmd));  // its own publish (3.1.1 has no no-local)
    ASSERT_TRUE(got(commander.recvOn(kCap), fingate::fin::makeAck(id)));
    ASSERT_TRUE(got(commander.recvOn(kCap), kResult));
    commander.publish(kCap, fingate::fin::makeAck("1b5823f2-e6f1-11f1-b0c5-02fc00000001"));
    ASSERT_TRUE(gotFrame(fin, kCap, fingate::fin::makeAck("1b5823f2-e6f1-11f1-b0c5-02fc00000001")));
  }
}

// SOARCA on one broker (gateway speaks 3.1.1 there), Python fins on another (MQTT 5, compat).
TEST_F(MqttE2E, TwoBrokersMixedVersionsWithPythonFinRepair) {
  Mosquitto m1, m2;
  gw = std::make_unique<GatewayProcess>(
      "mqtt-mqtt", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m1.url() +
                       "\", mqtt_version: 3 }\n  pyfins: { plugin: mqtt, role: fins, url: \"" + m2.url() +
                       "\", mqtt_version: 5, compat: python-fin }\n");
  ASSERT_TRUE(gw->start({"soarca", "pyfins"})) << gw->log();
  MqttTestClient soarca(m1.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  MqttTestClient fin(m2.url(), kFin, 5, 0);
  fin.subscribe("soarca", true);
  fin.subscribe(kFin, true);
  fin.subscribe(kCap, true);
  fin.publish("soarca", kReg);
  ASSERT_TRUE(got(soarca.recvOn("soarca"), kReg));
  soarca.subscribe(kCap);
  soarca.publish(kFin, fingate::fin::makeAck(kRegId));
  ASSERT_TRUE(got(fin.recvOn(kFin), fingate::fin::makeAck(kRegId)));

  soarca.publish(kCap, kCmdNoAuth);
  ASSERT_TRUE(got(fin.recvOn(kCap), withoutEmptyAuth(kCmdNoAuth)));  // repaired, all else identical
  fin.publish(kCap, kResult);
  ASSERT_TRUE(got(soarca.recvOn(kCap), kCmdNoAuth));  // SOARCA hears its own command (3.1.1)
  ASSERT_TRUE(got(soarca.recvOn(kCap), kResult));
  // Nothing more: the gateway re-routed none of its own publishes.
  auto extra = soarca.recv(500ms);
  EXPECT_FALSE(extra) << extra->topic << " " << extra->payload;
  auto extra_fin = fin.recv(300ms);
  EXPECT_FALSE(extra_fin) << extra_fin->topic << " " << extra_fin->payload;
  EXPECT_NE(metric(gw->adminPort(), "fingate_compat_repairs_total{kind=\"auth_removed\"}"), "0");
  EXPECT_NE(metric(gw->adminPort(), "fingate_echoes_suppressed_total"), "0");
}

// Both endpoints on the same broker (fins under a topic prefix), 3.1.1: loop suppression.
TEST_F(MqttE2E, SameBrokerNeverReroutesItsOwnPublishes) {
  Mosquitto m;
  gw = std::make_unique<GatewayProcess>(
      "mqtt-same", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m.url() +
                       "\", mqtt_version: 3 }\n  fins: { plugin: mqtt, role: fins, url: \"" + m.url() +
                       "\", mqtt_version: 3, topic_prefix: \"edge/\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "fins"})) << gw->log();
  MqttTestClient soarca(m.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  MqttTestClient fin(m.url(), "fin", 3, 1);
  fin.subscribe("edge/" + kFin);
  fin.subscribe("edge/" + kCap);
  fin.publish("edge/soarca", kReg);
  ASSERT_TRUE(got(soarca.recvOn("soarca"), kReg));
  soarca.subscribe(kCap);
  soarca.publish(kFin, fingate::fin::makeAck(kRegId));
  ASSERT_TRUE(got(fin.recvOn("edge/" + kFin), fingate::fin::makeAck(kRegId)));
  soarca.publish(kCap, kCmdAuth);
  ASSERT_TRUE(got(fin.recvOn("edge/" + kCap), kCmdAuth));
  fin.publish("edge/" + kCap, kResult);
  ASSERT_TRUE(got(soarca.recvOn(kCap), kCmdAuth));
  ASSERT_TRUE(got(soarca.recvOn(kCap), kResult));
  // Exactly once each way: no echo loops.
  auto extra = soarca.recv(700ms);
  EXPECT_FALSE(extra) << extra->topic << " " << extra->payload;
  std::optional<MqttTestClient::Msg> extra_fin;
  while ((extra_fin = fin.recv(300ms)))
    EXPECT_EQ(extra_fin->payload, kResult) << "fin heard " << extra_fin->topic;  // only its own publish (3.1.1)
  EXPECT_NE(metric(gw->adminPort(), "fingate_echoes_suppressed_total"), "0");
}

// A fin restarts (re-register -> "already registered" nack -> ack for the fin); then SOARCA
// restarts and learns the fin from the gateway's replay, with no help from the fin.
TEST_F(MqttE2E, ReRegisterAndReplayAfterRestarts) {
  Mosquitto m1, m2;
  gw = std::make_unique<GatewayProcess>(
      "mqtt-replay", "register_replay: 1\nendpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m1.url() +
                         "\" }\n  pyfins: { plugin: mqtt, role: fins, url: \"" + m2.url() +
                         "\", compat: python-fin }\n");
  ASSERT_TRUE(gw->start({"soarca", "pyfins"})) << gw->log();
  auto soarca = std::make_unique<MqttTestClient>(m1.url(), "soarca", 3, 1);
  soarca->subscribe("soarca");
  MqttTestClient fin(m2.url(), kFin, 5, 0);
  fin.subscribe(kFin, true);
  fin.subscribe(kCap, true);
  fin.publish("soarca", kReg);
  ASSERT_TRUE(got(soarca->recvOn("soarca"), kReg));
  soarca->subscribe(kCap);
  soarca->publish(kFin, fingate::fin::makeAck(kRegId));
  ASSERT_TRUE(got(fin.recvOn(kFin), fingate::fin::makeAck(kRegId)));

  // The fin restarts: same ids, new message id. SOARCA says "already registered".
  std::string again = kReg;
  const std::string new_id = "abec7356-ffff-11f1-acf4-02fc00000001";
  again.replace(again.find(kRegId), kRegId.size(), new_id);
  fin.publish("soarca", again);
  ASSERT_TRUE(got(soarca->recvOn("soarca"), again));
  soarca->publish(kFin, fingate::fin::makeNack(new_id));
  ASSERT_TRUE(got(fin.recvOn(kFin), fingate::fin::makeAck(new_id)));

  // SOARCA restarts and knows no fins: the replay brings the register back.
  soarca.reset();
  MqttTestClient fresh(m1.url(), "soarca", 3, 1);
  fresh.subscribe("soarca");
  auto replayed = fresh.recvOn("soarca", 10s);
  ASSERT_TRUE(replayed);
  EXPECT_EQ(fingate::fin::parse(replayed->payload).msg.fin_id, kFin);
  fresh.subscribe(kCap);
  fresh.publish(kFin, fingate::fin::makeAck(fingate::fin::parse(replayed->payload).msg.message_id));
  fresh.publish(kCap, kCmdAuth);
  auto m = fin.recvOn(kCap, 10s);  // the fin did nothing and still gets the command
  ASSERT_TRUE(got(m, kCmdAuth));
  auto stray = fin.recv(300ms);  // the fin never hears the answer to a replay
  if (stray) {
    EXPECT_NE(stray->topic, kFin) << stray->payload;
  }
}

// kill -9 of the fins-side broker mid-stream: reconnect, resubscribe learned topics, go on.
TEST_F(MqttE2E, FinsBrokerKill9AndRestartResubscribes) {
  Mosquitto m1, m2;
  gw = std::make_unique<GatewayProcess>(
      "mqtt-kill", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m1.url() +
                       "\" }\n  pyfins: { plugin: mqtt, role: fins, url: \"" + m2.url() +
                       "\", reconnect_max_ms: 500 }\n");
  ASSERT_TRUE(gw->start({"soarca", "pyfins"})) << gw->log();
  MqttTestClient soarca(m1.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  {
    MqttTestClient fin(m2.url(), kFin, 5, 0);
    fin.subscribe(kFin, true);
    fin.subscribe(kCap, true);
    fin.publish("soarca", kReg);
    ASSERT_TRUE(got(soarca.recvOn("soarca"), kReg));
    soarca.subscribe(kCap);
    soarca.publish(kFin, fingate::fin::makeAck(kRegId));
    ASSERT_TRUE(got(fin.recvOn(kFin), fingate::fin::makeAck(kRegId)));
    soarca.publish(kCap, kCmdAuth);
    ASSERT_TRUE(got(fin.recvOn(kCap), kCmdAuth));
    m2.kill9();
  }
  ASSERT_TRUE(gw->process().waitForLog("endpoint pyfins: down", 10s)) << gw->log();
  m2.restart();
  ASSERT_TRUE(gw->process().waitForLog("endpoint pyfins: reconnected", 15s)) << gw->log();
  MqttTestClient fin(m2.url(), kFin, 5, 0);  // the fin reconnects too, and resubscribes itself
  fin.subscribe(kCap, true);
  soarca.publish(kCap, kCmdAuth);
  ASSERT_TRUE(got(fin.recvOn(kCap, 10s), kCmdAuth));  // gateway -> fin after the restart
  fin.publish(kCap, kResult);
  ASSERT_TRUE(gotEventually(soarca, kCap, kResult));  // fin -> gateway: learned topic resubscribed
  EXPECT_NE(httpGet(gw->adminPort(), "/metrics").body.find("fingate_reconnects_total{endpoint=\"pyfins\"} 1"),
            std::string::npos);
  EXPECT_EQ(httpGet(gw->adminPort(), "/readyz").status, 200);
}

TEST_F(MqttE2E, WrongPasswordIsAClearErrorNotACrash) {
  std::string dir = tempDir("mqtt-auth");
  Mosquitto::writePasswordFile(dir + "/passwd", "soarca", "right-password");
  MosquittoOptions o;
  o.allow_anonymous = false;
  o.password_file = dir + "/passwd";
  Mosquitto m(o);
  ::setenv("FINGATE_TEST_MQTT_PASSWORD", "wrong-password", 1);
  gw = std::make_unique<GatewayProcess>(
      "mqtt-wrongpw", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m.url() +
                          "\", username: soarca, password: \"${FINGATE_TEST_MQTT_PASSWORD}\" }\n");
  gw->start({});
  ASSERT_TRUE(gw->process().running()) << gw->log();
  ASSERT_TRUE(waitFor([&] { return httpGet(gw->adminPort(), "/readyz").body.find("uthori") != std::string::npos; }, 15s))
      << httpGet(gw->adminPort(), "/readyz").body << gw->log();
  EXPECT_EQ(httpGet(gw->adminPort(), "/readyz").status, 503);
  EXPECT_TRUE(gw->process().running());
  EXPECT_EQ(gw->log().find("wrong-password"), std::string::npos);  // secrets never logged
  // The right password works.
  ::setenv("FINGATE_TEST_MQTT_PASSWORD", "right-password", 1);
  GatewayProcess ok("mqtt-rightpw", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m.url() +
                                        "\", username: soarca, password: \"${FINGATE_TEST_MQTT_PASSWORD}\" }\n");
  ASSERT_TRUE(ok.start({"soarca"})) << ok.log();
  EXPECT_TRUE(waitFor([&] { return httpGet(ok.adminPort(), "/readyz").status == 200; }));
}

TEST_F(MqttE2E, TlsBrokerWithGeneratedCa) {
  std::string d = tempDir("mqtt-tls");
  std::string cmd = "cd " + d +
                    " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=fingate-test-ca -keyout ca.key "
                    "-out ca.crt 2>/dev/null"
                    " && openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr "
                    "2>/dev/null"
                    " && printf 'subjectAltName=IP:127.0.0.1' > san.ext"
                    " && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
                    "-extfile san.ext -out server.crt 2>/dev/null && chmod 644 *.key";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  int plain = freePort();
  MosquittoOptions o;
  o.cafile = d + "/ca.crt";
  o.certfile = d + "/server.crt";
  o.keyfile = d + "/server.key";
  o.extra = "listener " + std::to_string(plain) + " 127.0.0.1\n";
  Mosquitto m(o);
  std::string plain_url = "tcp://127.0.0.1:" + std::to_string(plain);
  gw = std::make_unique<GatewayProcess>(
      "mqtt-tls", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m.url() +
                      "\", tls: { ca_file: \"" + d + "/ca.crt\" } }\n  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "edge"})) << gw->log();
  MqttTestClient soarca(plain_url, "soarca", 3, 1);  // the same broker, through its plain listener
  soarca.subscribe("soarca");
  FrameClient fin(gw->port("edge"));
  ASSERT_TRUE(fin.publish("soarca", kReg));
  ASSERT_TRUE(got(soarca.recvOn("soarca"), kReg));  // crossed the TLS connection
}

TEST_F(MqttE2E, BadInputOnAFinTopicIsDeadLetteredAndTheNextGoodMessagePasses) {
  Mosquitto m1, m2;
  gw = std::make_unique<GatewayProcess>(
      "mqtt-bad", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + m1.url() +
                      "\" }\n  pyfins: { plugin: mqtt, role: fins, url: \"" + m2.url() + "\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "pyfins"})) << gw->log();
  MqttTestClient soarca(m1.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  MqttTestClient fin(m2.url(), kFin, 5, 0);
  fin.subscribe(kFin, true);
  fin.subscribe(kCap, true);
  fin.publish("soarca", kReg);
  ASSERT_TRUE(got(soarca.recvOn("soarca"), kReg));
  soarca.subscribe(kCap);
  fin.publish(kCap, "this is not JSON");
  fin.publish(kCap, R"({"type":"result","message_id":"bad-shape-1","result":[1,2]})");
  auto nack = fin.recvOn(kCap);
  ASSERT_TRUE(got(nack, fingate::fin::makeNack("bad-shape-1")));
  fin.publish(kCap, kResult);
  ASSERT_TRUE(got(soarca.recvOn(kCap), kResult));  // the good one passes, nothing else did
  auto dl = httpGet(gw->adminPort(), "/v1/dead-letters").body;
  EXPECT_NE(dl.find("\"by_reason\":{\"invalid_message\":2}"), std::string::npos) << dl;
  EXPECT_NE(httpGet(gw->adminPort(), "/metrics").body.find("fingate_dead_letters_total{reason=\"invalid_message\"} 2"),
            std::string::npos);
}

}  // namespace
