// Security of the real fingate binary (issue 8): secrets never leave it (logs, every admin
// endpoint, refusals, the state files), the admin API's token and Host check, an admin port
// that is never shared (at start and on reload), an admin listener that answers while a broker
// is down at start, and `validate` catching what `run` would refuse.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>

#include "mosquitto.hpp"
#include "test_support.hpp"

using namespace fingate::test;

namespace {

using Resp = fingate::test::HttpResponse;

// A raw HTTP/1.1 GET with the given extra header lines (Host is always sent: 127.0.0.1:port
// unless one is given).
Resp get(int port, const std::string& path, std::vector<std::string> headers = {}) {
  bool has_host = false;
  for (auto& h : headers) has_host = has_host || h.rfind("Host:", 0) == 0;
  if (!has_host) headers.push_back("Host: 127.0.0.1:" + std::to_string(port));
  return httpExchange(port, "GET", path, headers);
}

// The real binary on a config written whole by the test (no header added), with its ports
// read from its log.
class Gateway {
 public:
  Gateway(const std::string& name, const std::string& config) {
    dir_ = tempDir(name);
    path_ = dir_ + "/fingate.yaml";
    writeFile(path_, config);
  }
  void rewrite(const std::string& config) { writeFile(path_, config); }
  // Starts it; true once the admin port and `endpoints` are known (false if it exited).
  bool start(const std::vector<std::string>& endpoints = {}, std::chrono::milliseconds timeout = 20s) {
    proc_ = std::make_unique<Process>(std::vector<std::string>{FINGATE_BIN, "run", path_}, dir_ + "/fingate.log");
    return waitFor(
               [&] {
                 scan();
                 if (!proc_->running()) return true;
                 if (!admin_port_) return false;
                 for (auto& e : endpoints)
                   if (!ports_.count(e)) return false;
                 return true;
               },
               timeout) &&
           proc_->running();
  }
  void scan() {
    std::istringstream in(proc_->log());
    std::string line;
    while (std::getline(in, line)) {
      if (line.find("admin listening on") != std::string::npos) admin_port_ = portFromLine(line);
      auto at = line.find("endpoint ");
      auto colon = at == std::string::npos ? at : line.find(": up (", at);
      if (colon != std::string::npos) ports_[line.substr(at + 9, colon - at - 9)] = portFromLine(line);
    }
  }
  int adminPort() const { return admin_port_; }
  int port(const std::string& e) { return ports_.count(e) ? ports_[e] : 0; }
  Process& process() { return *proc_; }
  std::string log() const { return proc_ ? proc_->log() : ""; }
  const std::string& dir() const { return dir_; }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  std::unique_ptr<Process> proc_;
  int admin_port_ = 0;
  std::map<std::string, int> ports_;
};

std::string header(const std::string& state_dir, const std::string& admin = "{ listen: \"127.0.0.1:0\" }") {
  return "plugins_dir: " + std::string(FINGATE_PLUGINS_DIR) + "\nstate_dir: " + state_dir + "\nadmin: " + admin +
         "\ndrain_timeout_ms: 1000\n";
}

bool pluginBuilt(const std::string& name) {
  return std::filesystem::exists(std::string(FINGATE_PLUGINS_DIR) + "/libfingate-" + name + ".so");
}

// Every file under dir, concatenated.
std::string allFiles(const std::string& dir) {
  std::string out;
  std::error_code ec;
  for (auto& f : std::filesystem::recursive_directory_iterator(dir, ec))
    if (f.is_regular_file()) out += readFile(f.path().string());
  return out;
}

}  // namespace

// Issue 8.3: the MQTT password (from ${ENV}), a command's credentials and a URL's user-info
// appear nowhere the gateway writes or serves: not in its stdout/stderr at trace level, not in
// any admin endpoint, not in a refused reload, not in its state files. The dead letter is shown
// redacted. (The admin token's turn is AdminApi.TokenAndHostCheck.)
TEST(Secrets, NeverLeaveTheGateway) {
  if (!pluginBuilt("mqtt") || !Mosquitto::available()) GTEST_SKIP() << "needs the mqtt plugin and mosquitto";
  const std::string mqtt_pw = "mqtt-S3CRET-pw-4711";
  const std::string auth_pw = "auth-S3CRET-pw-42";
  const std::string api_key = "api-S3CRET-key-43";
  const std::string url_pw = "url-S3CRET-pw-44";
  const std::vector<std::string> secrets = {mqtt_pw, auth_pw, api_key, url_pw, "S3CRET"};

  std::string dir = tempDir("secrets-broker");
  Mosquitto::writePasswordFile(dir + "/passwd", "fingate", mqtt_pw);
  MosquittoOptions mo;
  mo.allow_anonymous = false;
  mo.password_file = dir + "/passwd";
  Mosquitto broker(mo);
  ::setenv("FINGATE_SECTEST_MQTT_PASSWORD", mqtt_pw.c_str(), 1);

  std::string state = tempDir("secrets-state");
  std::string body = "log_level: trace\nendpoints:\n"
                     "  soarca: { plugin: mqtt, role: orchestrator, url: \"" + broker.url() +
                     "\", username: fingate, password: \"${FINGATE_SECTEST_MQTT_PASSWORD}\" }\n"
                     "  orch: { plugin: tcp, role: orchestrator, listen: \"127.0.0.1:0\" }\n"
                     "  fins: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n";
  Gateway gw("secrets", header(state) + body);
  ASSERT_TRUE(gw.start({"soarca", "orch", "fins"})) << gw.log();
  const int ap = gw.adminPort();

  // A command with credentials for a capability no fin has bound: it ends in the dead letters.
  const std::string cap = "mod-nobody--5f0c1d9e-0000-4000-8000-000000000001";
  const std::string cmd =
      R"({"type":"command","message_id":"c0ffee00-0000-4000-8000-000000000001","command":{"command":"ssh ls",)"
      R"("authentication":{"id":"user-auth--1","type":"user-auth","username":"root","password":")" + auth_pw +
      R"(","kms":false},"context":{"completed_on":"0001-01-01T00:00:00Z","generated_on":"0001-01-01T00:00:00Z",)"
      R"("timeout":1,"delay":0,"step_id":"s","playbook_id":"p","execution_id":"e"},"variables":{"__t":{"type":"string",)"
      R"("value":"tcp://deploy:)" + url_pw + R"(@10.0.0.7:22"},"x":{"api_key":")" + api_key +
      R"("}}},"meta":{"timestamp":"2026-01-01T00:00:00Z","sender_id":"soarca"}})";
  FrameClient orch(gw.port("orch"));
  ASSERT_TRUE(orch.connected());
  ASSERT_TRUE(orch.publish(cap, cmd));
  ASSERT_TRUE(orch.barrier());
  ASSERT_TRUE(waitFor([&] { return get(ap, "/v1/dead-letters").body.find(cap) != std::string::npos; }))
      << get(ap, "/v1/dead-letters").body << gw.log();

  // A reload refused for credentials in the URL says why without the secret.
  gw.rewrite(header(state) + "log_level: trace\nendpoints:\n"
                                    "  soarca: { plugin: mqtt, role: orchestrator, url: \"tcp://fingate:" +
             url_pw + "@127.0.0.1:" + std::to_string(broker.port()) +
             "\" }\n  orch: { plugin: tcp, role: orchestrator, listen: \"127.0.0.1:0\" }\n"
             "  fins: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  ::kill(gw.process().pid(), SIGHUP);
  auto refused = gw.process().waitForLog("reload refused");
  EXPECT_TRUE(refused) << gw.log();
  if (refused) {
    EXPECT_NE(refused->find("tcp://fingate:***@127.0.0.1"), std::string::npos) << *refused;
    EXPECT_NE(refused->find("username and password keys"), std::string::npos) << *refused;
  }

  // Everything the admin API serves.
  std::string served;
  for (const char* path : {"/healthz", "/readyz", "/metrics", "/v1/fins", "/v1/dead-letters", "/v1/endpoints"}) {
    Resp r = get(ap, path);
    served += r.head + r.body;
    EXPECT_EQ(r.status, 200) << path;
  }
  Resp dl = get(ap, "/v1/dead-letters");
  EXPECT_EQ(dl.status, 200);
  // Shown redacted: the authentication block's values, the secret-named key, the URL password.
  EXPECT_NE(dl.body.find(R"(\"authentication\":{\"id\":\"***\",\"type\":\"***\",\"username\":\"***\",\"password\":\"***\",\"kms\":\"***\"})"),
            std::string::npos)
      << dl.body;
  EXPECT_NE(dl.body.find(R"(\"api_key\":\"***\")"), std::string::npos) << dl.body;
  EXPECT_NE(dl.body.find("tcp://deploy:***@10.0.0.7:22"), std::string::npos) << dl.body;
  EXPECT_NE(dl.body.find("ssh ls"), std::string::npos) << dl.body;  // the rest is shown

  EXPECT_EQ(gw.process().stop(SIGTERM), 0);
  std::string written = gw.log() + allFiles(state);
  for (const std::string& s : secrets) {
    EXPECT_EQ(written.find(s), std::string::npos) << "'" << s << "' in what the gateway wrote:\n" << written;
    EXPECT_EQ(served.find(s), std::string::npos) << "'" << s << "' in what the gateway served:\n" << served;
  }
}

// Issue 8.3 / 8.10: `validate` and `run` refuse credentials in a URL (also from ${ENV}) and say
// so without repeating the secret.
TEST(Secrets, UrlCredentialsAreRefusedWithoutBeingRepeated) {
  ::setenv("FINGATE_SECTEST_URL", "tcp://fingate:env-S3CRET-in-url@127.0.0.1:1883", 1);
  std::string dir = tempDir("secrets-url");
  for (const std::string& url : {std::string("tcp://fingate:lit-S3CRET-in-url@127.0.0.1:1883"),
                                 std::string("${FINGATE_SECTEST_URL}")}) {
    writeFile(dir + "/c.yaml", header(dir + "/state") + "endpoints:\n  soarca:\n    plugin: mqtt\n"
                                                        "    role: orchestrator\n    url: \"" + url + "\"\n");
    for (const char* cmd : {"validate", "run"}) {
      Process p({FINGATE_BIN, cmd, dir + "/c.yaml"}, dir + "/" + cmd + ".log");
      EXPECT_EQ(p.wait(), 2) << cmd << ": " << p.log();
      std::string out = p.log();
      EXPECT_NE(out.find(dir + "/c.yaml:9:5: endpoints.soarca.url: credentials in the URL's user-info (tcp://fingate:***@"),
                std::string::npos)
          << cmd << ": " << out;
      EXPECT_EQ(out.find("S3CRET"), std::string::npos) << cmd << ": " << out;
    }
  }
}

// Issue 8.4: a token (from ${ENV}) for everything but /healthz and /readyz, and the Host check, on
// the binary. The token itself is never written or served.
TEST(AdminApi, TokenAndHostCheck) {
  ::setenv("FINGATE_SECTEST_ADMIN_TOKEN2", "0123456789abcdef-admin", 1);
  std::string served;
  std::string state = tempDir("admin-api-state");
  Gateway gw("admin-api", header(state, "{ listen: \"127.0.0.1:0\", token: \"${FINGATE_SECTEST_ADMIN_TOKEN2}\" }") +
                              "endpoints:\n  a: { plugin: loopback, role: fins }\n");
  ASSERT_TRUE(gw.start({"a"})) << gw.log();
  int ap = gw.adminPort();
  EXPECT_EQ(get(ap, "/healthz").status, 200);
  EXPECT_EQ(get(ap, "/readyz").status, 200);
  for (const char* path : {"/metrics", "/v1/fins", "/v1/dead-letters", "/v1/endpoints"}) {
    Resp r = get(ap, path);
    served += r.head + r.body;
    EXPECT_EQ(r.status, 401) << path;
    EXPECT_NE(r.head.find("WWW-Authenticate: Bearer"), std::string::npos) << r.head;
    EXPECT_EQ(get(ap, path, {"Authorization: Bearer wrong-token-0000000"}).status, 401) << path;
    Resp ok = get(ap, path, {"Authorization: Bearer 0123456789abcdef-admin"});
    served += ok.head + ok.body;
    EXPECT_EQ(ok.status, 200) << path;
  }
  // DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1.
  std::string ps = std::to_string(ap);
  EXPECT_EQ(get(ap, "/healthz", {"Host: evil.example:" + ps}).status, 403);
  EXPECT_EQ(get(ap, "/v1/fins", {"Host: evil.example:" + ps, "Authorization: Bearer 0123456789abcdef-admin"}).status,
            403);
  EXPECT_EQ(get(ap, "/healthz", {"Host: localhost:" + ps}).status, 200);
  EXPECT_EQ(gw.process().stop(SIGTERM), 0);
  EXPECT_EQ(served.find("0123456789abcdef-admin"), std::string::npos) << served;
  EXPECT_EQ(gw.log().find("0123456789abcdef-admin"), std::string::npos) << gw.log();
}

// Issue 8.4: the admin port is never shared. A second gateway on it fails at start, clearly.
TEST(AdminPort, SecondGatewayOnTheSamePortFailsAtStart) {
  std::string ep = "endpoints:\n  a: { plugin: loopback, role: fins }\n";
  Gateway first("admin-port-1", header(tempDir("admin-port-1-state")) + ep);
  ASSERT_TRUE(first.start({"a"})) << first.log();
  std::string listen = "127.0.0.1:" + std::to_string(first.adminPort());
  Gateway second("admin-port-2", header(tempDir("admin-port-2-state"), "{ listen: \"" + listen + "\" }") + ep);
  EXPECT_FALSE(second.start({"a"}, 10s));
  EXPECT_EQ(second.process().wait(5s), 1) << second.log();
  EXPECT_NE(second.log().find("admin.listen " + listen + ": address already in use (another fingate?)"),
            std::string::npos)
      << second.log();
  EXPECT_EQ(second.log().find("endpoint a: up"), std::string::npos) << "no endpoint starts:\n" << second.log();
  EXPECT_EQ(get(first.adminPort(), "/healthz").status, 200);
  EXPECT_EQ(first.process().stop(SIGTERM), 0);
}

// Issue 8.4: on reload, a port clash keeps the old listener and reports the error.
TEST(AdminPort, ReloadOntoATakenPortKeepsTheOldListener) {
  std::string state1 = tempDir("admin-reload-1-state"), state2 = tempDir("admin-reload-2-state");
  Gateway first("admin-reload-1", header(state1) + "endpoints:\n  first: { plugin: loopback, role: fins }\n");
  ASSERT_TRUE(first.start({"first"})) << first.log();
  Gateway second("admin-reload-2", header(state2) + "endpoints:\n  second: { plugin: loopback, role: fins }\n");
  ASSERT_TRUE(second.start({"second"})) << second.log();
  int p1 = first.adminPort(), p2 = second.adminPort();
  second.rewrite(header(state2, "{ listen: \"127.0.0.1:" + std::to_string(p1) + "\" }") +
                 "endpoints:\n  second: { plugin: loopback, role: fins }\n");
  ::kill(second.process().pid(), SIGHUP);
  auto line = second.process().waitForLog("reload refused");
  ASSERT_TRUE(line) << second.log();
  EXPECT_NE(line->find("admin.listen 127.0.0.1:" + std::to_string(p1) + ": address already in use (another fingate?)"),
            std::string::npos)
      << *line;
  EXPECT_NE(line->find("stays on 127.0.0.1:" + std::to_string(p2)), std::string::npos) << *line;
  // The old listener still answers; the first gateway alone answers on its port.
  EXPECT_NE(get(p2, "/v1/endpoints").body.find("\"second\""), std::string::npos);
  for (int i = 0; i < 20; ++i) {
    std::string b = get(p1, "/v1/endpoints").body;
    ASSERT_NE(b.find("\"first\""), std::string::npos) << b;
  }
  EXPECT_EQ(first.process().stop(SIGTERM), 0);
  EXPECT_EQ(second.process().stop(SIGTERM), 0);
}

// Issue 8.11: the admin listener opens before the endpoints: with the broker down at start,
// /healthz and /readyz answer at once (readyz 503 with the reason), not after the timeouts.
TEST(AdminPort, AnswersWhileABrokerIsDownAtStart) {
  if (!pluginBuilt("mqtt")) GTEST_SKIP() << "needs the mqtt plugin";
  int dead = freePort();  // nobody listens here
  Gateway gw("admin-early", header(tempDir("admin-early-state")) +
                                "subscribe_timeout_ms: 60000\nendpoints:\n"
                                "  soarca: { plugin: mqtt, role: orchestrator, url: \"tcp://127.0.0.1:" +
                                std::to_string(dead) + "\", connect_timeout_ms: 60000 }\n"
                                "  fins: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(gw.start({}, 10s)) << gw.log();
  int ap = gw.adminPort();
  ASSERT_GT(ap, 0);
  EXPECT_EQ(get(ap, "/healthz").status, 200);
  Resp ready = get(ap, "/readyz");
  EXPECT_EQ(ready.status, 503);
  EXPECT_NE(ready.body.find("soarca"), std::string::npos) << ready.body;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  EXPECT_EQ(gw.process().stop(SIGTERM), 0) << gw.log();
}

// Issue 8.10: `validate` catches, with file:line:col and exit code 2, what `run` would refuse.
TEST(Validate, CatchesWhatRunWouldRefuse) {
  std::string dir = tempDir("validate-run");
  std::string base = "plugins_dir: " + std::string(FINGATE_PLUGINS_DIR) + "\n";
  writeFile(dir + "/a-file", "x");
  struct Case {
    std::string name, config, where, what;
  };
  std::vector<Case> cases = {
      {"two endpoints on one port",
       base + "admin: { listen: \"\" }\nendpoints:\n  a: { plugin: tcp, role: orchestrator, listen: "
              "\"127.0.0.1:PORT_A\" }\n  b: { plugin: tcp, role: fins, listen: \"0.0.0.0:PORT_A\" }\n",
       ":5:33:", "is also where endpoints.a.listen listens"},
      {"an endpoint on the admin port",
       base + "admin: { listen: \"127.0.0.1:PORT_A\" }\nendpoints:\n  a: { plugin: tcp, role: fins, listen: "
              "\"127.0.0.1:PORT_A\" }\n",
       ":4:33:", "is also where admin.listen listens"},
      {"a missing TLS key",
       base + "admin: { listen: \"\" }\nendpoints:\n  a:\n    plugin: tcp\n    role: fins\n    listen: 127.0.0.1:0\n"
              "    tls: { enabled: true, cert_file: " + dir + "/a-file, key_file: " + dir + "/missing.pem }\n",
       ":8:", "endpoints.a.tls.key_file: cannot read '" + dir + "/missing.pem'"},
      {"a state_dir that is a file",
       base + "state_dir: " + dir + "/a-file\nadmin: { listen: \"\" }\nendpoints:\n  a: { plugin: loopback, role: fins }\n",
       ":2:12:", "state_dir: '" + dir + "/a-file' exists and is not a directory"},
      {"credentials in a URL",
       base + "admin: { listen: \"\" }\nendpoints:\n  s: { plugin: mqtt, role: orchestrator, url: "
              "\"tcp://u:pw@127.0.0.1:1883\" }\n",
       ":4:42:", "credentials in the URL's user-info (tcp://u:***@127.0.0.1:1883): give them in the username and "
                 "password keys"},
  };
  int port_a = freePort();
  for (auto& c : cases) {
    std::string cfg = c.config;
    for (size_t p = cfg.find("PORT_A"); p != std::string::npos; p = cfg.find("PORT_A")) cfg.replace(p, 6, std::to_string(port_a));
    writeFile(dir + "/c.yaml", cfg);
    Process v({FINGATE_BIN, "validate", dir + "/c.yaml"}, dir + "/v.log");
    EXPECT_EQ(v.wait(), 2) << c.name << ": " << v.log();
    std::string out = v.log();
    EXPECT_NE(out.find(dir + "/c.yaml" + c.where), std::string::npos) << c.name << ": " << out;
    EXPECT_NE(out.find(c.what), std::string::npos) << c.name << ": " << out;
    // run refuses the same, before opening anything.
    Process r({FINGATE_BIN, "run", dir + "/c.yaml"}, dir + "/r.log");
    EXPECT_EQ(r.wait(), 2) << c.name << ": " << r.log();
    EXPECT_NE(r.log().find(c.what), std::string::npos) << c.name << ": " << r.log();
  }
}
