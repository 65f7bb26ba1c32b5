// checkConfigForRun (what `validate` catches that `run` would refuse: listener clashes, TLS files,
// state_dir, credentials in URLs) and the admin keys (token, allowed_hosts).
#include <fingate/config.hpp>

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "test_support.hpp"

using fingate::Config;
using fingate::ConfigError;

namespace {

// parseConfig + checkConfigForRun; the error as "line:col: message", "" when it passes.
std::string check(const std::string& text) {
  try {
    Config cfg = fingate::parseConfig(text, "c.yaml");
    fingate::checkConfigForRun(cfg);
    return "";
  } catch (const ConfigError& e) {
    return std::to_string(e.mark().line) + ":" + std::to_string(e.mark().column) + ": " + e.message();
  }
}

std::string parseError(const std::string& text) {
  try {
    fingate::parseConfig(text, "c.yaml");
    return "";
  } catch (const ConfigError& e) {
    return std::to_string(e.mark().line) + ":" + std::to_string(e.mark().column) + ": " + e.message();
  }
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

}  // namespace

TEST(ConfigAdmin, TokenAndAllowedHosts) {
  ::setenv("FINGATE_TEST_ADMIN_TOKEN", "0123456789abcdef0123", 1);
  Config c = fingate::parseConfig(R"(admin:
  listen: 127.0.0.1:9400
  token: ${FINGATE_TEST_ADMIN_TOKEN}
  allowed_hosts: [admin.example.org, "localhost:8000"]
endpoints:
  a: { plugin: loopback, role: fins }
)",
                                  "c.yaml");
  EXPECT_EQ(c.admin.token, "0123456789abcdef0123");
  EXPECT_EQ(c.admin.token_mark.line, 3);
  ASSERT_EQ(c.admin.allowed_hosts.size(), 2u);
  EXPECT_EQ(c.admin.allowed_hosts[1], "localhost:8000");
  EXPECT_EQ(c.admin.listen, "127.0.0.1:9400");
}

TEST(ConfigAdmin, TokenErrorsNeverQuoteTheToken) {
  std::string e = parseError("admin: { token: sh0rt-s3cret }\nendpoints:\n  a: { plugin: loopback, role: fins }\n");
  EXPECT_EQ(e, "1:17: admin.token: too short (12 characters; use at least 16, e.g. the output of `openssl rand -hex 32`)");
  EXPECT_FALSE(has(e, "s3cret"));
  e = parseError("admin: { token: \"0123456789abcdef with-space\" }\nendpoints:\n  a: { plugin: loopback, role: fins }\n");
  EXPECT_EQ(e, "1:17: admin.token: must not contain spaces or control characters");
  e = parseError("admin: { allowed_hosts: evil }\nendpoints:\n  a: { plugin: loopback, role: fins }\n");
  EXPECT_TRUE(has(e, "1:25: admin.allowed_hosts: expected a list")) << e;
  e = parseError("admin: { allowed_hosts: [\"a/b\"] }\nendpoints:\n  a: { plugin: loopback, role: fins }\n");
  EXPECT_TRUE(has(e, "1:26: admin.allowed_hosts[0]: expected a host name")) << e;
  e = parseError("admin: { tokn: x }\nendpoints:\n  a: { plugin: loopback, role: fins }\n");
  EXPECT_EQ(e, "1:10: admin.tokn: unknown key (expected listen, token, allowed_hosts)");
}

TEST(ConfigChecks, ListenersOnTheSameAddressAndPortClash) {
  // Two tcp endpoints on one port: reported at the second, naming the first.
  EXPECT_EQ(check(R"(admin: { listen: "" }
endpoints:
  a: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:7400" }
  b: { plugin: tcp, role: fins, listen: "127.0.0.1:7400" }
)"),
            "4:33: endpoints.b.listen: 127.0.0.1:7400 is also where endpoints.a.listen listens (127.0.0.1:7400, line 3): "
            "two listeners cannot share an address and port (a wildcard host such as 0.0.0.0 takes the port on every "
            "address)");
  // A wildcard clashes with any host on its port; localhost is 127.0.0.1.
  EXPECT_TRUE(has(check(R"(admin: { listen: "" }
endpoints:
  a: { plugin: tcp, role: orchestrator, listen: "0.0.0.0:7400" }
  b: { plugin: tcp, role: fins, listen: "10.1.2.3:7400" }
)"),
                  "4:33: endpoints.b.listen: 10.1.2.3:7400 is also where endpoints.a.listen listens"));
  EXPECT_TRUE(has(check(R"(admin: { listen: "localhost:7400" }
endpoints:
  a: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:7400" }
)"),
                  "3:41: endpoints.a.listen: 127.0.0.1:7400 is also where admin.listen listens (localhost:7400, line 1)"));
  // The admin listener written after the endpoints: reported at admin.listen.
  EXPECT_TRUE(has(check(R"(endpoints:
  a: { plugin: tcp, role: orchestrator, listen: "[::]:9400" }
admin: { listen: 127.0.0.1:9400 }
)"),
                  "3:18: admin.listen: 127.0.0.1:9400 is also where endpoints.a.listen listens ([::]:9400, line 2)"));
  // zmq bind (tcp://*:P is a wildcard) against an http listen.
  EXPECT_TRUE(has(check(R"(admin: { listen: "" }
endpoints:
  z: { plugin: zmq, role: fins, bind: "tcp://*:7401" }
  h: { plugin: http, role: fins, listen: "127.0.0.1:7401" }
)"),
                  "4:34: endpoints.h.listen: 127.0.0.1:7401 is also where endpoints.z.bind listens (tcp://*:7401"));
  // No clash: port 0, other ports, other specific hosts, connect (not a listener), ipc.
  EXPECT_EQ(check(R"(admin: { listen: "127.0.0.1:0" }
endpoints:
  a: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  b: { plugin: tcp, role: fins, listen: "0.0.0.0:0" }
  c: { plugin: tcp, role: fins, listen: "127.0.0.1:7400" }
  d: { plugin: tcp, role: fins, listen: "127.0.0.2:7400" }
  e: { plugin: tcp, role: fins, connect: "127.0.0.1:7400" }
  f: { plugin: zmq, role: fins, bind: "ipc:///tmp/x" }
)"),
            "");
}

TEST(ConfigChecks, TlsFilesMustBeReadableFiles) {
  std::string dir = fingate::test::tempDir("config_checks_tls");
  fingate::test::writeFile(dir + "/cert.pem", "x");
  std::string head = "admin: { listen: \"\" }\nendpoints:\n  a:\n    plugin: tcp\n    role: fins\n    listen: 127.0.0.1:0\n";
  std::string line7 = "    tls: { enabled: true, cert_file: " + dir + "/cert.pem, key_file: " + dir + "/key.pem }";
  EXPECT_EQ(check(head + line7 + "\n"), "7:" + std::to_string(line7.find("key_file") + 1) +
                                            ": endpoints.a.tls.key_file: cannot read '" + dir +
                                            "/key.pem': No such file or directory");
  EXPECT_TRUE(has(check(head + "    tls:\n      enabled: true\n      cert_file: " + dir + "\n"),
                  "9:7: endpoints.a.tls.cert_file: '" + dir + "' is not a file"));
  EXPECT_TRUE(has(check(head + "    tls.ca_file: /nonexistent/ca.pem\n"), "7:5: endpoints.a.tls.ca_file: cannot read"));
  EXPECT_TRUE(has(check(head + "    tls: { ca: /nonexistent/ca.pem }\n"), "endpoints.a.tls.ca: cannot read"));
  // Not used when TLS is off; fine when present.
  EXPECT_EQ(check(head + "    tls: { enabled: false, cert_file: /nonexistent/c.pem }\n"), "");
  EXPECT_EQ(check(head + "    tls: { cert_file: " + dir + "/cert.pem }\n"), "");
}

TEST(ConfigChecks, StateDirMustBeAWritableDirectoryOrCreatable) {
  std::string dir = fingate::test::tempDir("config_checks_state");
  fingate::test::writeFile(dir + "/a-file", "x");
  std::string tail = "admin: { listen: \"\" }\nendpoints:\n  a: { plugin: loopback, role: fins }\n";
  EXPECT_EQ(check("state_dir: " + dir + "/a-file\n" + tail),
            "1:12: state_dir: '" + dir + "/a-file' exists and is not a directory");
  EXPECT_EQ(check("state_dir: " + dir + "/a-file/sub/dir\n" + tail),
            "1:12: state_dir: cannot create '" + dir + "/a-file/sub/dir': '" + dir + "/a-file' is not a directory");
  EXPECT_EQ(check("state_dir: " + dir + "\n" + tail), "");
  EXPECT_EQ(check("state_dir: " + dir + "/new/deeper\n" + tail), "");
  EXPECT_FALSE(std::filesystem::exists(dir + "/new"));  // nothing created
  if (::geteuid() != 0) {  // root writes anywhere: the permission case only means something for others
    std::filesystem::create_directory(dir + "/ro");
    ::chmod((dir + "/ro").c_str(), 0500);
    EXPECT_TRUE(has(check("state_dir: " + dir + "/ro/state\n" + tail), "is not writable"));
    EXPECT_TRUE(has(check("state_dir: " + dir + "/ro\n" + tail), "cannot write in"));
    ::chmod((dir + "/ro").c_str(), 0700);
  }
}

TEST(ConfigChecks, CredentialsInAUrlPointAtUsernameAndPassword) {
  std::string e = check(R"(admin: { listen: "" }
endpoints:
  soarca: { plugin: mqtt, role: orchestrator, url: "tcp://fingate:s3cr3t@127.0.0.1:1883" }
)");
  EXPECT_TRUE(has(e, "3:47: endpoints.soarca.url: credentials in the URL's user-info (tcp://fingate:***@127.0.0.1:1883): "
                     "give them in the username and password keys instead")) << e;
  EXPECT_FALSE(has(e, "s3cr3t")) << e;
  // Also when the URL is built from the environment, and for a user name alone.
  ::setenv("FINGATE_TEST_BROKER_URL", "ssl://u:from-env-s3cr3t@broker:8883", 1);
  e = check("admin: { listen: \"\" }\nendpoints:\n  s: { plugin: mqtt, role: orchestrator, url: \"${FINGATE_TEST_BROKER_URL}\" }\n");
  EXPECT_TRUE(has(e, "(ssl://u:***@broker:8883)")) << e;
  EXPECT_FALSE(has(e, "s3cr3t")) << e;
  e = check("admin: { listen: \"\" }\nendpoints:\n  s: { plugin: mqtt, role: orchestrator, url: \"tcp://tok@h:1\" }\n");
  EXPECT_TRUE(has(e, "(tcp://***@h:1)")) << e;
  // Not credentials: an '@' after the authority, none at all.
  EXPECT_EQ(check("admin: { listen: \"\" }\nendpoints:\n  s: { plugin: http, role: fins, webhook: \"https://h/x@y\" }\n"), "");
  EXPECT_EQ(check("admin: { listen: \"\" }\nendpoints:\n  s: { plugin: mqtt, role: orchestrator, url: tcp://h:1883 }\n"), "");
}

// Found by tests/fuzz/config_fuzz.cpp: yaml-cpp 0.7's LoadAll never returned on a stray ','
// at the top level (an endless stream of empty documents). Now a syntax error at the ','.
// (The inputs are also kept in tests/fuzz/crashes/config.)
TEST(ConfigYaml, StrayCommaIsASyntaxErrorNotAHang) {
  EXPECT_EQ(parseError(","), "1:1: YAML syntax error: unexpected ',' (a ',' separates items inside [ ] or { })");
  EXPECT_EQ(parseError("endpoints:\n  a: { plugin: loopback, role: fins }\n,\n"), "3:1: YAML syntax error: end of map not found");
  EXPECT_EQ(parseError("- a\n,"), "2:1: YAML syntax error: unexpected ',' (a ',' separates items inside [ ] or { })");
  // Still: two documents, an empty second one, and the end marker alone.
  EXPECT_EQ(parseError("endpoints:\n  a: { plugin: loopback, role: fins }\n---\n"),
            "3:1: expected one YAML document, found more than one (remove the '---')");
  EXPECT_EQ(parseError("endpoints:\n  a: { plugin: loopback, role: fins }\n...\n"), "");
  EXPECT_EQ(parseError("# only a comment\n"), "0:0: the file is empty: expected a map with at least 'endpoints'");
}
