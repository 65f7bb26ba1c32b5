// The real fingate binary with ZeroMQ endpoints (issue 10): real DEALER clients (cppzmq), real
// TCP frame clients, a real mosquitto. Full Fin exchanges with byte-identical payloads, two fins
// on one ZeroMQ endpoint, vanishing peers, hostile input, CURVE. No timing assertions.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fingate/fin_codec.hpp>

#include "../plugins/zmq/zmq_test_client.hpp"
#include "gateway_process.hpp"
#include "mosquitto.hpp"
#include "mqtt_test_client.hpp"

using namespace fingate::test;

namespace {

const std::string kReg = vectorBytes("01-a-register.json");
const std::string kCmd = vectorBytes("13-b-ok-command-auth.json");
const std::string kResult = vectorBytes("14-b-ok-result.json");
const std::string kRegId = "abec7356-e6f0-11f1-acf4-02fc00000001";
const std::string kCmdId = "1b57ed0d-e6f1-11f1-bac7-e6e1bc57048a";
const std::string kResultId = "1b5823f2-e6f1-11f1-b0c5-02fc00000001";
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";

std::string replaceAll(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}
const std::string kFinB = "soarca-fin--other-0000";
const std::string kCapB = "mod-other--0000";
const std::string kRegIdB = "bbbb0000-e6f0-11f1-acf4-02fc00000001";
const std::string kRegB = replaceAll(replaceAll(replaceAll(kReg, kFin, kFinB), kCap, kCapB), kRegId, kRegIdB);
const std::string kCmdB = replaceAll(kCmd, kCmdId, "cccc0000-e6f1-11f1-bac7-e6e1bc57048a");

// One received message, whatever the client type.
struct Got {
  bool ok = false;
  std::string kind, topic, payload;
};
Got recvAny(FrameClient& c, std::chrono::milliseconds t = std::chrono::seconds(5)) {
  auto f = c.recv(t);
  if (!f) return {};
  return {true, f->kind == FrameClient::Publish ? "MSG" : "kind " + std::to_string(f->kind), f->topic, f->payload};
}
Got recvAny(ZmqClient& c, std::chrono::milliseconds t = std::chrono::seconds(5)) {
  auto m = c.recv(t);
  if (!m) return {};
  return {true, m->verb, m->topic, m->payload};
}

template <class C>
::testing::AssertionResult got(C& c, const std::string& topic, const std::string& payload) {
  Got g = recvAny(c);
  if (!g.ok) return ::testing::AssertionFailure() << "nothing received (expected " << topic << ")";
  if (g.kind != "MSG" || g.topic != topic || g.payload != payload)
    return ::testing::AssertionFailure() << "got " << g.kind << " topic '" << g.topic << "' payload "
                                         << g.payload.substr(0, 300);
  return ::testing::AssertionSuccess();
}

// Skips other messages (bounded) until one on `topic` whose payload contains `needle`.
template <class C>
::testing::AssertionResult gotContaining(C& c, const std::string& topic, const std::string& needle) {
  for (int i = 0; i < 50; ++i) {
    Got g = recvAny(c);
    if (!g.ok) break;
    if (g.kind == "MSG" && g.topic == topic && g.payload.find(needle) != std::string::npos)
      return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "no message on " << topic << " containing " << needle;
}

// SOARCA-like orchestrator client and a fin, any transports: register, ack, command, ack,
// result, ack; every payload compared byte for byte.
template <class O, class F>
void fullExchange(O& orch, F& fin, const std::string& reg, const std::string& fin_id, const std::string& cap,
                  const std::string& reg_id, const std::string& cmd, const std::string& cmd_id) {
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  ASSERT_TRUE(fin.subscribe("soarca"));
  ASSERT_TRUE(fin.barrier());
  ASSERT_TRUE(fin.publish("soarca", reg));
  ASSERT_TRUE(got(orch, "soarca", reg));
  ASSERT_TRUE(orch.subscribe(fin_id));
  ASSERT_TRUE(orch.subscribe(cap));
  ASSERT_TRUE(orch.barrier());
  const std::string reg_ack = fingate::fin::makeAck(reg_id);
  ASSERT_TRUE(orch.publish(fin_id, reg_ack));
  ASSERT_TRUE(got(fin, fin_id, reg_ack));
  ASSERT_TRUE(orch.publish(cap, cmd));
  ASSERT_TRUE(got(fin, cap, cmd));
  const std::string cmd_ack = fingate::fin::makeAck(cmd_id);
  ASSERT_TRUE(fin.publish(cap, cmd_ack));
  ASSERT_TRUE(fin.publish(cap, kResult));
  ASSERT_TRUE(got(orch, cap, cmd_ack));
  ASSERT_TRUE(got(orch, cap, kResult));
  const std::string res_ack = fingate::fin::makeAck(kResultId);
  ASSERT_TRUE(orch.publish(cap, res_ack));
  ASSERT_TRUE(got(fin, cap, res_ack));
}

std::string zmqAddr(GatewayProcess& gw, const std::string& ep) {
  return "tcp://127.0.0.1:" + std::to_string(gw.port(ep));
}

class ZmqE2E : public ::testing::Test {
 protected:
  void start(const std::string& body, const std::vector<std::string>& eps) {
    gw = std::make_unique<GatewayProcess>("zmq-e2e", body);
    ASSERT_TRUE(gw->start(eps)) << gw->log();
    for (auto& e : eps) {
      if (e == "soarca") continue;  // MQTT: no port
      ASSERT_GT(gw->port(e), 0) << e << "\n" << gw->log();
    }
  }
  void TearDown() override {
    if (HasFailure() && gw) std::cerr << "---- fingate log ----\n" << gw->log() << "\n";
  }
  std::unique_ptr<GatewayProcess> gw;
};

TEST_F(ZmqE2E, OrchestratorOnZmqFinOnTcp) {
  start(R"(endpoints:
  orchestrator: { plugin: zmq, role: orchestrator, bind: "tcp://127.0.0.1:*" }
  fins: { plugin: tcp, role: fins, listen: "127.0.0.1:0" }
)",
        {"orchestrator", "fins"});
  ZmqClient orch(zmqAddr(*gw, "orchestrator"));
  FrameClient fin(gw->port("fins"));
  fullExchange(orch, fin, kReg, kFin, kCap, kRegId, kCmd, kCmdId);
}

TEST_F(ZmqE2E, OrchestratorOnTcpFinOnZmq) {
  start(R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: zmq, role: fins, bind: "tcp://127.0.0.1:*" }
)",
        {"orchestrator", "fins"});
  FrameClient orch(gw->port("orchestrator"));
  ZmqClient fin(zmqAddr(*gw, "fins"));
  fullExchange(orch, fin, kReg, kFin, kCap, kRegId, kCmd, kCmdId);
  // Fins-side rules hold through the core: a second peer may not subscribe to A's ids.
  ZmqClient other(zmqAddr(*gw, "fins"));
  ASSERT_TRUE(other.subscribe(kCap));
  Got e = recvAny(other);
  ASSERT_TRUE(e.ok);
  EXPECT_EQ(e.kind, "ERR");
  EXPECT_NE(e.payload.find("\"error\":\"subscribe refused\""), std::string::npos) << e.payload;
  ASSERT_TRUE(other.subscribe("+"));
  e = recvAny(other);
  EXPECT_EQ(e.kind, "ERR");
  EXPECT_NE(e.payload.find("\"error\":\"subscribe refused\""), std::string::npos) << e.payload;
}

TEST_F(ZmqE2E, OrchestratorOnMqttFinOnZmq) {
  Mosquitto broker;
  start("endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + broker.url() +
            "\", qos: 1 }\n  fins: { plugin: zmq, role: fins, bind: \"tcp://127.0.0.1:*\" }\n",
        {"soarca", "fins"});
  MqttTestClient soarca(broker.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  ZmqClient fin(zmqAddr(*gw, "fins"));
  ASSERT_TRUE(fin.subscribe("soarca"));
  ASSERT_TRUE(fin.barrier());
  ASSERT_TRUE(fin.publish("soarca", kReg));
  auto r = soarca.recvOn("soarca");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->payload, kReg);  // byte for byte
  soarca.subscribe(kCap);
  soarca.publish(kFin, fingate::fin::makeAck(kRegId));
  ASSERT_TRUE(got(fin, kFin, fingate::fin::makeAck(kRegId)));
  soarca.publish(kCap, kCmd);
  ASSERT_TRUE(got(fin, kCap, kCmd));
  ASSERT_TRUE(fin.publish(kCap, fingate::fin::makeAck(kCmdId)));
  ASSERT_TRUE(fin.publish(kCap, kResult));
  // SOARCA (3.1.1) also hears its own command on the capability topic.
  std::vector<std::string> heard;
  for (int i = 0; i < 3; ++i) {
    auto m = soarca.recvOn(kCap);
    ASSERT_TRUE(m) << i;
    heard.push_back(m->payload);
  }
  EXPECT_NE(std::find(heard.begin(), heard.end(), fingate::fin::makeAck(kCmdId)), heard.end());
  EXPECT_NE(std::find(heard.begin(), heard.end(), kResult), heard.end());
  soarca.publish(kCap, fingate::fin::makeAck(kResultId));
  ASSERT_TRUE(got(fin, kCap, fingate::fin::makeAck(kResultId)));
}

// Two fins on one ZeroMQ endpoint; one stops reading, the other still gets every command.
TEST_F(ZmqE2E, TwoFinsOneStopsReadingTheOtherKeepsReceiving) {
  start(R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: zmq, role: fins, bind: "tcp://127.0.0.1:*", send_hwm: 16, session_buffer_bytes: 16384 }
)",
        {"orchestrator", "fins"});
  FrameClient orch(gw->port("orchestrator"));
  ZmqClientOptions stalled;
  stalled.rcvhwm = 4;
  stalled.rcvbuf = 4096;
  ZmqClient a(zmqAddr(*gw, "fins"), stalled), b(zmqAddr(*gw, "fins"));
  fullExchange(orch, a, kReg, kFin, kCap, kRegId, kCmd, kCmdId);
  ASSERT_TRUE(b.publish("soarca", kRegB));
  ASSERT_TRUE(got(orch, "soarca", kRegB));
  ASSERT_TRUE(orch.subscribe(kFinB));
  ASSERT_TRUE(orch.subscribe(kCapB));
  ASSERT_TRUE(orch.barrier());
  ASSERT_TRUE(orch.publish(kFinB, fingate::fin::makeAck(kRegIdB)));
  ASSERT_TRUE(got(b, kFinB, fingate::fin::makeAck(kRegIdB)));
  // A stops reading from here on. 2000 commands each.
  const int n = 2000;
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(orch.publish(kCap, kCmd));
    ASSERT_TRUE(orch.publish(kCapB, kCmdB));
  }
  int b_got = 0;
  for (int i = 0; i < n; ++i) {
    auto m = b.recv(std::chrono::seconds(10));
    if (!m) break;
    ASSERT_EQ(m->topic, kCapB);  // only its own commands
    ASSERT_EQ(m->payload, kCmdB);
    ++b_got;
  }
  EXPECT_EQ(b_got, n);
  // A reads again: whatever reached it is its own.
  for (int i = 0; i < 100; ++i) {
    auto m = a.recv(std::chrono::milliseconds(200));
    if (!m) break;
    if (m->verb == "MSG") {
      ASSERT_TRUE(m->topic == kCap || m->topic == "soarca") << m->topic;
    }
  }
  EXPECT_TRUE(gw->process().running());
}

// A fin that vanishes without a word loses its bindings after 3 heartbeats; it comes back with
// a new socket, registers again and is routed again.
TEST_F(ZmqE2E, VanishedFinIsUnboundAfterTheHeartbeatLimitAndRebinds) {
  start(R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: zmq, role: fins, bind: "tcp://127.0.0.1:*", heartbeat_ms: 200 }
)",
        {"orchestrator", "fins"});
  FrameClient orch(gw->port("orchestrator"));
  {
    ZmqClient fin(zmqAddr(*gw, "fins"));
    fullExchange(orch, fin, kReg, kFin, kCap, kRegId, kCmd, kCmdId);
    EXPECT_NE(httpGet(gw->adminPort(), "/v1/fins").body.find(kFin), std::string::npos);
  }  // gone: closed with linger 0, no message
  EXPECT_TRUE(waitFor([&] { return httpGet(gw->adminPort(), "/v1/fins").body.find(kFin) == std::string::npos; }))
      << httpGet(gw->adminPort(), "/v1/fins").body;
  // A command for it now is refused at once (nacked), nothing waits.
  ASSERT_TRUE(orch.publish(kCap, kCmd));
  EXPECT_TRUE(gotContaining(orch, kCap, "\"type\":\"nack\""));
  // Back with a new socket: registers, is bound and routed again.
  ZmqClient again(zmqAddr(*gw, "fins"));
  ASSERT_TRUE(again.subscribe("soarca"));
  ASSERT_TRUE(again.publish("soarca", kReg));
  EXPECT_TRUE(gotContaining(orch, "soarca", "\"type\":\"register\""));
  ASSERT_TRUE(orch.publish(kFin, fingate::fin::makeAck(kRegId)));
  ASSERT_TRUE(gotContaining(again, kFin, kRegId));
  ASSERT_TRUE(orch.publish(kCap, kCmd));
  ASSERT_TRUE(gotContaining(again, kCap, kCmdId));
  EXPECT_NE(httpGet(gw->adminPort(), "/v1/fins").body.find(kFin), std::string::npos);
}

TEST_F(ZmqE2E, HostileInputThenANormalExchange) {
  start(R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: zmq, role: fins, bind: "tcp://127.0.0.1:*", max_frame_bytes: 4096, heartbeat_ms: 1000 }
)",
        {"orchestrator", "fins"});
  const std::string addr = zmqAddr(*gw, "fins");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"PUB"}, "wrong frame count"},
      {{"PUB", "soarca", kReg, "extra"}, "wrong frame count"},
      {{"SEND", "soarca", kReg}, "unknown verb"},
      {{"PUB", "soarca", std::string(6000, '{')}, "frame too large"},
      {{"PUB", std::string("fin-\xc3\x28", 6), "{}"}, "invalid topic"},
      {{"PUB", "soarca/#", "{}"}, "invalid topic"},
      {{"SUB", "soarca/#/x", ""}, "invalid filter"},
  };
  for (auto& [frames, error] : cases) {
    ZmqClient bad(addr);
    ASSERT_TRUE(bad.sendFrames(frames));
    Got g = recvAny(bad);
    ASSERT_TRUE(g.ok) << error;
    EXPECT_EQ(g.kind, "ERR");
    EXPECT_EQ(g.payload.rfind("{\"error\":\"" + error + "\"", 0), 0u) << g.payload;
  }
  // Raw garbage on the port (not ZMTP), a part far over the limit, peers that vanish.
  const int port = gw->port("fins");
  for (const std::string& junk : {std::string("GET / HTTP/1.1\r\n\r\n"), std::string(8192, '\x01')}) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    (void)::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
    ::close(fd);
  }
  {
    ZmqClient huge(addr);
    ASSERT_TRUE(huge.sendFrames({"PUB", "soarca", std::string(64 * 1024, 'x')}));
  }
  for (int i = 0; i < 100; ++i) {
    ZmqClient v(addr);
    ASSERT_TRUE(v.send("PING", "", std::to_string(i)));
  }
  // Everything else still works.
  FrameClient orch(gw->port("orchestrator"));
  ZmqClient fin(addr);
  fullExchange(orch, fin, kReg, kFin, kCap, kRegId, kCmd, kCmdId);
  EXPECT_TRUE(gw->process().running());
  EXPECT_NE(gw->log().find("bad messages on this endpoint so far"), std::string::npos);
}

TEST_F(ZmqE2E, CurveWithTheSecretFromTheEnvironment) {
  const CurveKeys server = curveKeypair(), known = curveKeypair(), unknown = curveKeypair();
  ASSERT_EQ(::setenv("FG_ZMQ_E2E_SERVER_SECRET", server.sec.c_str(), 1), 0);
  const std::string dir = tempDir("zmq-e2e-curve");
  writeFile(dir + "/clients", "# allowed fins\n" + known.pub + "\n");
  start(R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins:
    plugin: zmq
    role: fins
    bind: "tcp://127.0.0.1:*"
    curve:
      server_secret_key: "${FG_ZMQ_E2E_SERVER_SECRET}"
      allowed_clients_file: ")" +
            dir + R"(/clients"
)",
        {"orchestrator", "fins"});
  ::unsetenv("FG_ZMQ_E2E_SERVER_SECRET");
  EXPECT_NE(gw->log().find("server public key " + server.pub), std::string::npos);
  FrameClient orch(gw->port("orchestrator"));
  ZmqClientOptions bad;
  bad.curve_server_key = server.pub;
  bad.curve_public_key = unknown.pub;
  bad.curve_secret_key = unknown.sec;
  ZmqClient intruder(zmqAddr(*gw, "fins"), bad);
  ASSERT_TRUE(intruder.publish("soarca", kRegB));
  EXPECT_TRUE(waitFor([&] { return gw->log().find("CURVE client key " + unknown.pub) != std::string::npos; }));
  ZmqClientOptions ok = bad;
  ok.curve_public_key = known.pub;
  ok.curve_secret_key = known.sec;
  ZmqClient fin(zmqAddr(*gw, "fins"), ok);
  fullExchange(orch, fin, kReg, kFin, kCap, kRegId, kCmd, kCmdId);
  // The intruder's register never arrived.
  EXPECT_EQ(httpGet(gw->adminPort(), "/v1/fins").body.find(kFinB), std::string::npos);
}

}  // namespace
