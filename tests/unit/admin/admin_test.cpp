// The admin listener on its own (views are stubs): the bearer token, the Host-header check
// against DNS rebinding, the exclusive port (no SO_REUSEPORT) and the listener swap of a reload.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "admin.hpp"
#include "test_support.hpp"

using fingate::AdminConfig;
using fingate::AdminReload;
using fingate::AdminServer;
using fingate::AdminViews;

namespace {

const std::string kToken = "t0ken-for-the-admin-api-0123456789";

using Resp = fingate::test::HttpResponse;

// One raw HTTP request (headers exactly as given), read until the server closes.
Resp request(int port, const std::string& path, const std::vector<std::string>& headers, bool http10 = false) {
  return fingate::test::httpExchange(port, "GET", path, headers, http10);
}

Resp get(int port, const std::string& path, const std::string& host, const std::string& auth = "") {
  std::vector<std::string> h{"Host: " + host};
  if (!auth.empty()) h.push_back("Authorization: " + auth);
  return request(port, path, h);
}

AdminViews stubViews(std::atomic<bool>* ready = nullptr) {
  return AdminViews{
      [ready](std::string& why) {
        if (ready && *ready) return true;
        why = "endpoint(s) not up: soarca (connecting to tcp://fingate:hunter2@10.9.8.7:1883)";
        return false;
      },
      [] { return std::string("fingate_up 1\n"); },
      [] { return std::string("{\"fins\":[]}\n"); },
      [] { return std::string("{\"dead_letters\":[]}\n"); },
      [] { return std::string("{\"endpoints\":[{\"detail\":\"via tcp://u:pw-in-detail@h:1\"}]}\n"); },
      {},
      {},
      {},
      {},
      {},
  };
}

AdminConfig adminAt(const std::string& listen, const std::string& token = "") {
  AdminConfig c;
  c.listen = listen;
  c.token = token;
  return c;
}

std::string local(int port) { return "127.0.0.1:" + std::to_string(port); }

// A socket that asks for the port the way httplib's default did (SO_REUSEPORT + bind).
bool canBindWithReusePort(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int yes = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &yes, sizeof yes);
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd, 1) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

TEST(AdminToken, EverythingButHealthAndReadinessNeedsTheBearerToken) {
  AdminServer s(stubViews(), adminAt("127.0.0.1:0", kToken));
  s.start();
  int p = s.port();
  std::string host = local(p);
  for (const char* path : {"/metrics", "/v1/fins", "/v1/dead-letters", "/v1/endpoints", "/nope"}) {
    Resp none = get(p, path, host);
    EXPECT_EQ(none.status, 401) << path;
    EXPECT_NE(none.head.find("WWW-Authenticate: Bearer realm=\"fingate\""), std::string::npos) << none.head;
    Resp wrong = get(p, path, host, "Bearer " + kToken + "x");
    EXPECT_EQ(wrong.status, 401) << path;
    EXPECT_NE(wrong.head.find("error=\"invalid_token\""), std::string::npos) << wrong.head;
    EXPECT_EQ(get(p, path, host, "Bearer " + kToken.substr(1)).status, 401) << path;
    EXPECT_EQ(get(p, path, host, "Basic " + kToken).status, 401) << path;
    EXPECT_EQ(get(p, path, host, kToken).status, 401) << path;
  }
  EXPECT_EQ(get(p, "/metrics", host, "Bearer " + kToken).status, 200);
  EXPECT_EQ(get(p, "/metrics", host, "bearer " + kToken).status, 200);  // the scheme is case-insensitive
  EXPECT_EQ(get(p, "/v1/fins", host, "Bearer " + kToken).body, "{\"fins\":[]}\n");
  EXPECT_EQ(get(p, "/nope", host, "Bearer " + kToken).status, 404);
  // Open: liveness and readiness (probes carry no token).
  EXPECT_EQ(get(p, "/healthz", host).status, 200);
  EXPECT_EQ(get(p, "/readyz", host).status, 503);
  // The 401 never echoes the token.
  EXPECT_EQ(get(p, "/metrics", host, "Bearer " + kToken + "x").body.find(kToken), std::string::npos);
}

TEST(AdminToken, NoTokenConfiguredMeansOpenAndSetAccessAppliesToTheNextRequest) {
  AdminServer s(stubViews(), adminAt("127.0.0.1:0"));
  s.start();
  std::string host = local(s.port());
  EXPECT_EQ(get(s.port(), "/metrics", host).status, 200);
  s.setAccess(adminAt("127.0.0.1:0", kToken));
  EXPECT_EQ(get(s.port(), "/metrics", host).status, 401);
  EXPECT_EQ(get(s.port(), "/metrics", host, "Bearer " + kToken).status, 200);
}

TEST(AdminHostCheck, ForeignHostNamesAndPortsAreRefused) {
  AdminConfig c = adminAt("127.0.0.1:0");
  c.allowed_hosts = {"admin.example.org", "localhost:8000"};
  AdminServer s(stubViews(), c);
  s.start();
  int p = s.port();
  std::string ps = std::to_string(p);
  // A rebinding page's requests carry its own name.
  for (const std::string& bad : std::vector<std::string>{"evil.example:" + ps, "evil.example", "127.0.0.1.evil.example:" + ps,
                                 "127.0.0.1:" + std::to_string(p + 1), "localhost:8001", "[::2]:" + ps, "10.0.0.1:" + ps,
                                 "admin.example.org:" + std::to_string(p + 1), "a b"}) {
    for (const char* path : {"/healthz", "/readyz", "/metrics"}) {
      Resp r = get(p, path, bad);
      EXPECT_EQ(r.status, 403) << "Host: " << bad << " " << path;
    }
  }
  for (const std::string& good : std::vector<std::string>{"127.0.0.1:" + ps, "localhost:" + ps, "LOCALHOST:" + ps, "[::1]:" + ps, "127.0.0.1",
                                  "localhost", "admin.example.org:" + ps, "admin.example.org", "localhost:8000",
                                  "localhost.:" + ps}) {
    EXPECT_EQ(get(p, "/metrics", good).status, 200) << "Host: " << good;
  }
  // No Host header at all (HTTP/1.0 tools): not a browser, allowed.
  EXPECT_EQ(request(p, "/metrics", {}, true).status, 200);
}

TEST(AdminHostCheck, WildcardListenAcceptsIpLiteralsButNotNames) {
  AdminServer s(stubViews(), adminAt("0.0.0.0:0"));
  s.start();
  std::string ps = std::to_string(s.port());
  EXPECT_EQ(get(s.port(), "/metrics", "10.1.2.3:" + ps).status, 200);
  EXPECT_EQ(get(s.port(), "/metrics", "[fe80::1]:" + ps).status, 200);
  EXPECT_EQ(get(s.port(), "/metrics", "localhost:" + ps).status, 200);
  EXPECT_EQ(get(s.port(), "/metrics", "rebind.evil.example:" + ps).status, 403);
  EXPECT_EQ(get(s.port(), "/metrics", "10.1.2.3:" + std::to_string(s.port() + 1)).status, 403);
}

TEST(AdminBodies, UrlCredentialsInViewsAreRedacted) {
  AdminServer s(stubViews(), adminAt("127.0.0.1:0"));
  s.start();
  std::string host = local(s.port());
  Resp ready = get(s.port(), "/readyz", host);
  EXPECT_EQ(ready.status, 503);
  EXPECT_EQ(ready.body.find("hunter2"), std::string::npos) << ready.body;
  EXPECT_NE(ready.body.find("tcp://fingate:***@10.9.8.7:1883"), std::string::npos) << ready.body;
  Resp eps = get(s.port(), "/v1/endpoints", host);
  EXPECT_EQ(eps.body.find("pw-in-detail"), std::string::npos) << eps.body;
  EXPECT_NE(eps.body.find("tcp://u:***@h:1"), std::string::npos) << eps.body;
}

TEST(AdminPort, NeverSharedASecondListenerFailsWithAClearMessage) {
  AdminServer first(stubViews(), adminAt("127.0.0.1:0"));
  first.start();
  int p = first.port();
  // httplib's default options set SO_REUSEPORT: a second SO_REUSEPORT socket could then bind
  // the same port and take a share of the requests. Without it, nobody can.
  EXPECT_FALSE(canBindWithReusePort(p));
  AdminServer second(stubViews(), adminAt(local(p)));
  try {
    second.start();
    FAIL() << "a second admin listener started on " << p;
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "admin.listen " + local(p) + ": address already in use (another fingate?)");
  }
  EXPECT_EQ(get(p, "/healthz", local(p)).status, 200);  // the first one is untouched
  first.stop();
  // Once it is gone, the port can be taken again at once (SO_REUSEADDR).
  AdminServer third(stubViews(), adminAt(local(p)));
  EXPECT_NO_THROW(third.start());
  EXPECT_EQ(get(p, "/healthz", local(p)).status, 200);
}

TEST(AdminReloadTest, ClashRefusesAndKeepsTheOldListener) {
  AdminServer other(stubViews(), adminAt("127.0.0.1:0"));  // "another fingate"
  other.start();
  auto current = std::make_unique<AdminServer>(stubViews(), adminAt("127.0.0.1:0"));
  current->start();
  int old_port = current->port();
  std::string error;
  {
    AdminReload change(stubViews(), current.get(), adminAt(local(other.port())));
    EXPECT_FALSE(change.prepare(error));
  }
  EXPECT_NE(error.find("address already in use (another fingate?)"), std::string::npos) << error;
  EXPECT_NE(error.find("stays on " + local(old_port)), std::string::npos) << error;
  ASSERT_TRUE(current);
  EXPECT_EQ(get(old_port, "/healthz", local(old_port)).status, 200);
}

TEST(AdminReloadTest, MoveToAFreeAddressSwapsListeners) {
  auto current = std::make_unique<AdminServer>(stubViews(), adminAt("127.0.0.1:0"));
  current->start();
  int old_port = current->port();
  int next_port = fingate::test::freePort();
  {
    AdminReload change(stubViews(), current.get(), adminAt(local(next_port), kToken));
    std::string error;
    ASSERT_TRUE(change.prepare(error)) << error;
    // Bound and answering before the commit (so a clash is known before anything changes).
    EXPECT_EQ(get(next_port, "/healthz", local(next_port)).status, 200);
    change.commit(current);
  }
  ASSERT_TRUE(current);
  EXPECT_EQ(current->port(), next_port);
  EXPECT_EQ(get(current->port(), "/metrics", local(current->port())).status, 401);  // the new token applies
  EXPECT_EQ(get(old_port, "/healthz", local(old_port)).status, 0);                // the old one is closed
}

TEST(AdminReloadTest, SameAddressOnlyUpdatesTheTokenAndSamePortOtherHostRebinds) {
  auto current = std::make_unique<AdminServer>(stubViews(), adminAt("127.0.0.1:0"));
  current->start();
  int p = current->port();
  AdminServer* before = current.get();
  {
    AdminReload change(stubViews(), current.get(), adminAt("127.0.0.1:0", kToken));
    // The same text "127.0.0.1:0": the listener stays, only the access changes.
    std::string error;
    ASSERT_TRUE(change.prepare(error));
    change.commit(current);
  }
  EXPECT_EQ(current.get(), before);
  EXPECT_EQ(get(p, "/metrics", local(p)).status, 401);
  {
    // The same port on the wildcard address: only possible once the old socket is closed.
    AdminReload change(stubViews(), current.get(), adminAt("0.0.0.0:" + std::to_string(p)));
    std::string error;
    ASSERT_TRUE(change.prepare(error)) << error;
    change.commit(current);
  }
  ASSERT_TRUE(current);
  EXPECT_EQ(current->listen(), "0.0.0.0:" + std::to_string(p));
  EXPECT_EQ(get(p, "/metrics", local(p)).status, 200);
}
