// The HTTP plugin on its own: the real libfingate-http.so with a recording host, real sockets
// (cpp-httplib clients and raw requests for malformed input), a real httplib server as the
// webhook target, and certificates made with `openssl req` for TLS. No timing assertions: every
// wait is bounded and polls for a condition.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace fingate::test {
namespace {

using Cfg = std::vector<std::pair<std::string, std::string>>;
const std::string kToken = "0123456789abcdef-test-token";

std::shared_ptr<PluginLibrary> httpLib() {
  static std::shared_ptr<PluginLibrary> lib = loadBuiltPlugin("http");
  return lib;
}

struct Node {
  explicit Node(const Cfg& cfg) : inst(std::make_unique<PluginInstance>(httpLib(), host, cfg)) {}
  RecordingHost host;
  std::unique_ptr<PluginInstance> inst;
  int port = 0;

  fg_status publish(const std::string& topic, const std::string& payload, uint64_t delivery_id = 0,
                    uint64_t session = 0) {
    fg_message m{{topic.data(), topic.size()}, {payload.data(), payload.size()}, nullptr, 0, 0, session};
    return inst->publish(m, delivery_id);
  }
  std::optional<fg_delivery> delivery(uint64_t id) {
    auto d = host.deliveries();
    auto it = d.find(id);
    if (it == d.end()) return std::nullopt;
    return it->second;
  }
  bool waitDelivery(uint64_t id, fg_delivery want) {
    return waitFor([&] { return delivery(id) == want; });
  }
};

std::unique_ptr<Node> startNode(const Cfg& extra = {}, bool with_token = true) {
  Cfg cfg{{"listen", "127.0.0.1:0"}};
  if (with_token) cfg.emplace_back("token", kToken);
  cfg.insert(cfg.end(), extra.begin(), extra.end());
  auto n = std::make_unique<Node>(cfg);
  EXPECT_EQ(n->inst->start(), FG_OK);
  EXPECT_TRUE(n->host.waitState(FG_STATE_UP));
  n->port = portFromLine(n->host.stateDetail(FG_STATE_UP));
  EXPECT_GT(n->port, 0) << n->host.stateDetail(FG_STATE_UP);
  return n;
}

std::unique_ptr<httplib::Client> client(int port, const std::string& token = kToken) {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
  c->set_keep_alive(true);
  c->set_tcp_nodelay(true);
  c->set_read_timeout(30, 0);
  c->set_url_encode(false);
  if (!token.empty()) c->set_bearer_token_auth(token.c_str());
  return c;
}

// A raw request on its own connection (for what httplib's client will not send). `request` is
// everything up to and including the blank line after the headers, plus any body.
HttpResponse raw(int port, const std::string& request, std::chrono::milliseconds timeout = 10s) {
  HttpResponse r;
  int fd = connectLoopback(port);
  if (fd < 0) return r;
  size_t off = 0;
  const auto end = std::chrono::steady_clock::now() + timeout;
  std::string resp;
  while (std::chrono::steady_clock::now() < end) {
    pollfd p{fd, static_cast<short>(POLLIN | (off < request.size() ? POLLOUT : 0)), 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    if ((p.revents & POLLOUT) && off < request.size()) {
      ssize_t n = ::send(fd, request.data() + off, request.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) off += static_cast<size_t>(n);
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[8192];
      ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) break;
      resp.append(buf, static_cast<size_t>(n));
      // A whole response (the server may keep the connection open): done.
      const auto he = resp.find("\r\n\r\n");
      if (he != std::string::npos) {
        const auto cl = resp.find("Content-Length: ");
        if (cl != std::string::npos && cl < he &&
            resp.size() >= he + 4 + std::stoul(resp.substr(cl + 16, resp.find("\r\n", cl) - cl - 16)))
          break;
      }
    }
  }
  ::close(fd);
  if (resp.rfind("HTTP/1.", 0) != 0 || resp.size() < 12) return r;
  r.status = std::stoi(resp.substr(9, 3));
  const auto hdr_end = resp.find("\r\n\r\n");
  r.head = resp.substr(0, hdr_end);
  if (hdr_end != std::string::npos) r.body = resp.substr(hdr_end + 4);
  return r;
}

std::string auth() { return "Authorization: Bearer " + kToken + "\r\n"; }

// The plugin's own counter of refusals for `reason` (GET /v1/stats).
long stat(int port, const std::string& path_in_json) {
  auto c = client(port);
  auto res = c->Get("/v1/stats");
  if (!res || res->status != 200) return -1;
  const std::string needle = "\"" + path_in_json + "\":";
  auto at = res->body.find(needle);
  if (at == std::string::npos) return -1;
  return std::atol(res->body.c_str() + at + needle.size());
}

// A normal exchange: a publish reaches the host, a host message reaches a poller.
void normalExchange(Node& n, const std::string& tag) {
  auto c = client(n.port);
  auto res = c->Post("/v1/publish/fin-ok", "{\"n\":\"" + tag + "\"}", "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 202) << res->body;
  auto m = n.host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->topic, "fin-ok");
  EXPECT_EQ(m->payload, "{\"n\":\"" + tag + "\"}");
  ASSERT_EQ(n.publish("fin-ok", "{\"back\":\"" + tag + "\"}"), FG_OK);
  auto p = c->Get("/v1/poll/fin-ok?wait=10");
  ASSERT_TRUE(p);
  ASSERT_EQ(p->status, 200);
  EXPECT_EQ(p->body, "{\"back\":\"" + tag + "\"}");
  EXPECT_EQ(p->get_header_value("Fin-Topic"), "fin-ok");
}

struct Cert {
  std::string cert, key;
};
Cert makeCert(const std::string& dir, const std::string& name, const std::string& cn, const Cert* ca = nullptr) {
  Cert c{dir + "/" + name + ".pem", dir + "/" + name + ".key"};
  std::string cmd;
  if (!ca) {
    cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=" + cn +
          " -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " + c.key + " -out " + c.cert;
  } else {
    cmd = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=" + cn + " -keyout " + c.key +
          " -out " + dir + "/" + name + ".csr && openssl x509 -req -days 1 -in " + dir + "/" + name + ".csr -CA " +
          ca->cert + " -CAkey " + ca->key + " -CAcreateserial -out " + c.cert;
  }
  cmd += " > " + dir + "/" + name + ".log 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd << "\n" << readFile(dir + "/" + name + ".log");
  return c;
}

// ---- descriptor and config --------------------------------------------------------------

TEST(HttpPlugin, DescriptorDeclaresKeysAndCapabilities) {
  auto lib = httpLib();
  EXPECT_EQ(lib->name(), "http");
  EXPECT_EQ(lib->capabilities() & (FG_CAP_SESSIONS | FG_CAP_DELIVERY), FG_CAP_SESSIONS | FG_CAP_DELIVERY);
  for (const char* k : {"listen", "token", "tokens.my-fin", "tokens_file", "webhook", "max_body_bytes", "tls.cert_file",
                        "tls.key_file", "tls.client_ca_file", "max_polls", "backlog_ttl_ms"})
    EXPECT_TRUE(lib->acceptsKey(k)) << k;
  EXPECT_FALSE(lib->acceptsKey("url"));
}

TEST(HttpPlugin, ConfigErrorsNameTheKey) {
  RecordingHost host;
  auto expectError = [&](const Cfg& cfg, const std::string& starts) {
    try {
      PluginInstance inst(httpLib(), host, cfg);
      ADD_FAILURE() << "accepted: " << starts;
    } catch (const std::exception& e) {
      EXPECT_EQ(std::string(e.what()).find(starts), 0u) << e.what();
    }
  };
  expectError({}, "listen: ");
  expectError({{"listen", "127.0.0.1"}}, "listen: ");
  expectError({{"listen", "127.0.0.1:0"}, {"token", "short"}}, "token: ");
  expectError({{"webhook", "ftp://x/{topic}"}}, "webhook: ");
  expectError({{"webhook", "http://127.0.0.1:1/hook"}}, "webhook: ");
  expectError({{"listen", "127.0.0.1:0"}, {"max_polls", "600"}, {"max_connections", "600"}}, "max_polls: ");
  expectError({{"listen", "127.0.0.1:0"}, {"tokens.a", "0123456789abcdef"}, {"tokens.b", "0123456789abcdef"}},
              "tokens.");
  expectError({{"listen", "127.0.0.1:0"}, {"tls.cert_file", "/x.pem"}}, "tls.key_file: ");
  expectError({{"listen", "127.0.0.1:0"}, {"bogus", "1"}}, "bogus: ");
}

// ---- publish and poll --------------------------------------------------------------------

TEST(HttpPlugin, PublishIsTakenAndPollGetsBacklog) {
  auto n = startNode({{"publish_wait_ms", "0"}});
  auto c = client(n->port);
  auto res = c->Post("/v1/publish/soarca", "{\"type\":\"register\"}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 202);
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->topic, "soarca");
  EXPECT_EQ(m->session, 0u);
  EXPECT_NE(m->token, 0u);
  // A fin message with no poller waits for the first one.
  ASSERT_EQ(n->publish("fin-a", "{\"type\":\"command\"}", 7), FG_OK);
  EXPECT_FALSE(n->delivery(7).has_value());
  auto p = c->Get("/v1/poll/fin-a?wait=5");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 200);
  EXPECT_EQ(p->body, "{\"type\":\"command\"}");
  EXPECT_EQ(p->get_header_value("Fin-Topic"), "fin-a");
  EXPECT_TRUE(n->waitDelivery(7, FG_DELIVERY_OK));
  // Nothing more: a timed-out poll is 204.
  auto empty = c->Get("/v1/poll/fin-a?wait=0");
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->status, 204);
  // That keep-alive connection is now subscribed: a later message waits in its own queue.
  ASSERT_EQ(n->publish("fin-a", "{\"n\":2}", 8), FG_OK);
  auto again = c->Get("/v1/poll/fin-a?wait=0");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(again->body, "{\"n\":2}");
  EXPECT_TRUE(n->waitDelivery(8, FG_DELIVERY_OK));
}

TEST(HttpPlugin, EncodedTopicIsDecodedOnceAndEchoedRaw) {
  auto n = startNode({{"publish_wait_ms", "0"}});
  auto c = client(n->port);
  auto res = c->Post("/v1/publish/a%20b%2Fc%2541", "{}", "application/json");  // "a b/c%41"
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 202) << res->body;
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->topic, "a b/c%41");
  ASSERT_EQ(n->publish("a b/c%41", "{\"x\":1}"), FG_OK);
  // Raw: cpp-httplib's client percent-decodes header values it receives.
  auto p = raw(n->port, "GET /v1/poll/a%20b%2Fc%2541?wait=5 HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n");
  EXPECT_EQ(p.status, 200);
  EXPECT_NE(p.head.find("\r\nFin-Topic: a b/c%41\r\n"), std::string::npos) << p.head;
  EXPECT_EQ(p.body, "{\"x\":1}");
}

TEST(HttpPlugin, BroadcastsGoToEveryPollerAndAreNotKept) {
  auto n = startNode();
  // No poller: not kept, reported as no receiver.
  ASSERT_EQ(n->publish("soarca", "{\"type\":\"unregister\",\"all\":true}", 1), FG_OK);
  EXPECT_TRUE(n->waitDelivery(1, FG_DELIVERY_NO_RECEIVER));
  auto a = client(n->port), b = client(n->port);
  ASSERT_EQ(a->Get("/v1/poll/soarca?wait=0")->status, 204);  // the old broadcast is gone
  ASSERT_EQ(b->Get("/v1/poll/soarca?wait=0")->status, 204);
  ASSERT_EQ(n->publish("soarca", "{\"b\":2}", 2), FG_OK);
  auto ra = a->Get("/v1/poll/soarca?wait=5");
  auto rb = b->Get("/v1/poll/soarca?wait=5");
  ASSERT_TRUE(ra && rb);
  EXPECT_EQ(ra->status, 200);
  EXPECT_EQ(rb->status, 200);
  EXPECT_EQ(ra->body, "{\"b\":2}");
  EXPECT_EQ(rb->body, "{\"b\":2}");
  EXPECT_TRUE(n->waitDelivery(2, FG_DELIVERY_OK));
}

TEST(HttpPlugin, BacklogExpiresAndIsReportedAsNoReceiver) {
  auto n = startNode({{"backlog_ttl_ms", "100"}});
  ASSERT_EQ(n->publish("fin-late", "{\"type\":\"command\"}", 5), FG_OK);
  EXPECT_TRUE(n->waitDelivery(5, FG_DELIVERY_NO_RECEIVER));
  EXPECT_TRUE(waitFor([&] { return stat(n->port, "backlog_expired") == 1; }));
  auto c = client(n->port);
  EXPECT_EQ(c->Get("/v1/poll/fin-late?wait=0")->status, 204);
}

// The backlog is bounded in bytes too: messages nobody polls cannot pile up without limit
// (a fin sending large results while no orchestrator polls).
TEST(HttpPlugin, BacklogIsBoundedInBytes) {
  auto n = startNode({{"backlog_max_bytes", "4096"}});
  const std::string big(1500, 'x');
  ASSERT_EQ(n->publish("fin-big", big, 1), FG_OK);
  ASSERT_EQ(n->publish("fin-big", big, 2), FG_OK);
  ASSERT_EQ(n->publish("fin-big", big, 3), FG_OK);  // 4500 bytes would pass the bound: failed
  EXPECT_TRUE(n->waitDelivery(3, FG_DELIVERY_FAILED));
  EXPECT_FALSE(n->delivery(1).has_value());  // the first two still wait for a poller
  auto c = client(n->port);
  auto p = c->Get("/v1/poll/fin-big?wait=5");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 200);
  EXPECT_TRUE(n->waitDelivery(1, FG_DELIVERY_OK));
  // Taken by the poller: the backlog has room again.
  ASSERT_EQ(n->publish("fin-other", big, 4), FG_OK);
  EXPECT_FALSE(n->delivery(4).has_value());
}

TEST(HttpPlugin, BackPressureIs503WithRetryAfterAndLosesNothing) {
  auto n = startNode({{"publish_wait_ms", "0"}});
  n->host.retry_budget = 1;
  auto c = client(n->port);
  auto res = c->Post("/v1/publish/fin-x", "{\"n\":1}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");
  EXPECT_FALSE(n->host.next(100ms).has_value());
  auto again = c->Post("/v1/publish/fin-x", "{\"n\":1}", "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 202);
  EXPECT_TRUE(n->host.next().has_value());
  EXPECT_EQ(stat(n->port, "back_pressure"), 1);
}

TEST(HttpPlugin, AnswerCarriesTheOutcome) {
  auto n = startNode({{"publish_wait_ms", "10000"}});
  std::atomic<bool> done{false};
  std::thread acker([&] {
    while (!done) {
      auto m = n->host.next(50ms);
      if (!m) continue;
      n->inst->ack(m->token, m->payload.find("bad") != std::string::npos    ? FG_OUTCOME_REFUSED
                             : m->payload.find("lost") != std::string::npos ? FG_OUTCOME_DEAD_LETTERED
                                                                            : FG_OUTCOME_DELIVERED);
    }
  });
  auto c = client(n->port);
  auto ok = c->Post("/v1/publish/fin-x", "{\"good\":1}", "application/json");
  auto lost = c->Post("/v1/publish/fin-x", "{\"lost\":1}", "application/json");
  auto bad = c->Post("/v1/publish/fin-x", "{\"bad\":1}", "application/json");
  done = true;
  acker.join();
  ASSERT_TRUE(ok && lost && bad);
  EXPECT_EQ(ok->status, 202);
  EXPECT_EQ(ok->get_header_value("Fin-Outcome"), "delivered");
  EXPECT_EQ(lost->status, 202);
  EXPECT_EQ(lost->get_header_value("Fin-Outcome"), "dead_lettered");
  EXPECT_EQ(bad->status, 422);
  EXPECT_EQ(bad->get_header_value("Fin-Outcome"), "refused");
}

// ---- refusals ----------------------------------------------------------------------------

TEST(HttpPlugin, EveryBadRequestIsRefusedCountedAndRoutesNothing) {
  auto n = startNode({{"publish_wait_ms", "0"}, {"max_body_bytes", "1024"}});
  const int port = n->port;
  // 401: missing and wrong token (nothing routed).
  EXPECT_EQ(raw(port, "POST /v1/publish/soarca HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").status, 401);
  EXPECT_EQ(raw(port,
                "POST /v1/publish/soarca HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-0123456789\r\n"
                "Content-Length: 2\r\n\r\n{}")
                .status,
            401);
  EXPECT_EQ(raw(port, "GET /v1/poll/soarca?wait=0 HTTP/1.1\r\nHost: x\r\n\r\n").status, 401);
  // 413: declared and chunked.
  EXPECT_EQ(raw(port, "POST /v1/publish/fin HTTP/1.1\r\nHost: x\r\n" + auth() + "Content-Length: 5000\r\n\r\n" +
                          std::string(5000, 'x'))
                .status,
            413);
  {
    std::string chunked =
        "POST /v1/publish/fin HTTP/1.1\r\nHost: x\r\n" + auth() + "Transfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 10; ++i) chunked += "200\r\n" + std::string(0x200, ' ') + "\r\n";
    chunked += "0\r\n\r\n";
    EXPECT_EQ(raw(port, chunked).status, 413);
  }
  // A chunk size larger than anything: refused at the cap, not read to the end.
  EXPECT_EQ(raw(port, "POST /v1/publish/fin HTTP/1.1\r\nHost: x\r\n" + auth() +
                          "Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFF\r\n" + std::string(2048, 'y'))
                .status,
            413);
  // 400: not JSON; 411 without a length; 415 compressed.
  EXPECT_EQ(
      raw(port, "POST /v1/publish/fin HTTP/1.1\r\nHost: x\r\n" + auth() + "Content-Length: 5\r\n\r\nhello").status,
      400);
  EXPECT_EQ(raw(port, "POST /v1/publish/fin HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n").status, 411);
  EXPECT_EQ(raw(port, "POST /v1/publish/fin HTTP/1.1\r\nHost: x\r\n" + auth() +
                          "Content-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}")
                .status,
            415);
  // 405 and 404.
  auto m405 = raw(port, "GET /v1/publish/fin HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n");
  EXPECT_EQ(m405.status, 405);
  EXPECT_NE(m405.head.find("Allow: POST"), std::string::npos);
  EXPECT_EQ(raw(port, "POST /v1/poll/fin HTTP/1.1\r\nHost: x\r\n" + auth() + "Content-Length: 2\r\n\r\n{}").status,
            405);
  EXPECT_EQ(raw(port, "DELETE /v1/poll/fin HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n").status, 405);
  EXPECT_EQ(raw(port, "GET /v2/other HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n").status, 404);
  // A 1 MB URL and 10,000 headers.
  EXPECT_EQ(
      raw(port, "GET /v1/poll/" + std::string(1 << 20, 'a') + " HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n").status,
      414);
  EXPECT_EQ(raw(port, "GET /v1/poll/" + std::string(6000, 'a') + " HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n").status,
            414);
  {
    std::string many = "GET /v1/poll/fin?wait=0 HTTP/1.1\r\nHost: x\r\n" + auth();
    for (int i = 0; i < 10000; ++i) many += "X-H" + std::to_string(i) + ": v\r\n";
    many += "\r\n";
    EXPECT_EQ(raw(port, many).status, 431);
  }
  // Bad waits.
  for (const char* w : {"abc", "-1", "61", "1.5", "9999999999"})
    EXPECT_EQ(
        raw(port, "GET /v1/poll/fin?wait=" + std::string(w) + " HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n").status, 400)
        << w;
  // Encoded NUL, CR/LF, .., wildcards, bad escapes, invalid UTF-8.
  for (const char* t : {"a%00b", "a%0D%0Ab", "%0A", "..", "a%2F..%2Fb", "%2E%2E", "a%2F%2Fb", "%2Fa", "a%2B", "%23",
                        "a%zz", "a%4", "%FF%FE"}) {
    EXPECT_EQ(raw(port, "POST /v1/publish/" + std::string(t) + " HTTP/1.1\r\nHost: x\r\n" + auth() +
                            "Content-Length: 2\r\n\r\n{}")
                  .status,
              400)
        << t;
    EXPECT_EQ(raw(port, "GET /v1/poll/" + std::string(t) + "?wait=0 HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n").status,
              400)
        << t;
  }
  // A poll with a body.
  EXPECT_EQ(
      raw(port, "GET /v1/poll/fin?wait=0 HTTP/1.1\r\nHost: x\r\n" + auth() + "Content-Length: 2\r\n\r\n{}").status,
      400);

  // Nothing of all that reached the host.
  EXPECT_FALSE(n->host.next(100ms).has_value());
  // Each counted.
  EXPECT_EQ(stat(port, "unauthorized"), 3);
  EXPECT_EQ(stat(port, "body_too_large"), 3);
  EXPECT_EQ(stat(port, "not_json"), 1);
  EXPECT_EQ(stat(port, "length_required"), 1);
  EXPECT_EQ(stat(port, "unsupported_encoding"), 1);
  EXPECT_EQ(stat(port, "method_not_allowed"), 3);
  EXPECT_EQ(stat(port, "not_found"), 1);
  EXPECT_EQ(stat(port, "url_too_long"), 2);
  EXPECT_EQ(stat(port, "too_many_headers"), 1);
  EXPECT_EQ(stat(port, "bad_wait"), 5);
  EXPECT_EQ(stat(port, "bad_topic"), 26);
  EXPECT_EQ(stat(port, "bad_body"), 1);
  // And a normal exchange still passes.
  normalExchange(*n, "after");
}

TEST(HttpPlugin, ChunkedBodyWithinTheLimitIsTaken) {
  auto n = startNode({{"publish_wait_ms", "0"}});
  std::string req = "POST /v1/publish/fin-c HTTP/1.1\r\nHost: x\r\n" + auth() +
                    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
  EXPECT_EQ(raw(n->port, req).status, 202);
  auto m = n->host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->payload, "{\"a\":1}");
}

TEST(HttpPlugin, NoTokenConfiguredMeansOpen) {
  auto n = startNode({{"publish_wait_ms", "0"}}, false);
  auto c = client(n->port, "");
  auto res = c->Post("/v1/publish/fin", "{}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 202);
}

// ---- per-fin tokens ----------------------------------------------------------------------

TEST(HttpPlugin, PerFinTokensAreSessions) {
  const std::string ta = "token-of-fin-a-0123456789", tb = "token-of-fin-b-0123456789";
  const std::string dir = tempDir("http-tokens");
  writeFile(dir + "/tokens", "# fin id  token\nfin-b " + tb + "\n");
  auto n = startNode({{"publish_wait_ms", "0"}, {"tokens.fin-a", ta}, {"tokens_file", dir + "/tokens"}});
  // One session per fin token, opened at start.
  std::vector<uint64_t> opened;
  for (auto& [s, e] : n->host.sessions())
    if (e == FG_SESSION_OPENED) opened.push_back(s);
  ASSERT_EQ(opened.size(), 2u);
  auto a = client(n->port, ta), b = client(n->port, tb), shared = client(n->port);
  ASSERT_EQ(a->Post("/v1/publish/soarca", "{\"type\":\"register\",\"fin_id\":\"fin-a\"}", "application/json")->status,
            202);
  auto ma = n->host.next();
  ASSERT_TRUE(ma);
  ASSERT_EQ(b->Post("/v1/publish/fin-b", "{}", "application/json")->status, 202);
  auto mb = n->host.next();
  ASSERT_TRUE(mb);
  ASSERT_EQ(shared->Post("/v1/publish/fin-x", "{}", "application/json")->status, 202);
  auto ms = n->host.next();
  ASSERT_TRUE(ms);
  EXPECT_NE(ma->session, 0u);
  EXPECT_NE(mb->session, 0u);
  EXPECT_NE(ma->session, mb->session);
  EXPECT_EQ(ms->session, 0u);
  // A register for another fin with fin-a's token is refused in the plugin.
  auto wrong = a->Post("/v1/publish/soarca", "{\"type\":\"register\",\"fin_id\":\"fin-b\"}", "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 403);
  EXPECT_FALSE(n->host.next(100ms).has_value());
  // A message for fin-a's session reaches only fin-a's connections.
  ASSERT_EQ(b->Get("/v1/poll/fin-a?wait=0")->status, 204);  // b subscribed to the topic too
  ASSERT_EQ(n->publish("fin-a", "{\"for\":\"a\"}", 11, ma->session), FG_OK);
  EXPECT_EQ(b->Get("/v1/poll/fin-a?wait=0")->status, 204);
  auto pa = a->Get("/v1/poll/fin-a?wait=5");
  ASSERT_TRUE(pa);
  EXPECT_EQ(pa->status, 200);
  EXPECT_TRUE(n->waitDelivery(11, FG_DELIVERY_OK));
  // The core refuses a subscription: the poll is 403.
  n->host.authorize = [](uint64_t, std::string_view f, std::string& why) {
    why = "bound to another fin session";
    return f == "fin-z" ? FG_ERR_STATE : FG_OK;
  };
  auto refused = a->Get("/v1/poll/fin-z?wait=0");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 403);
  EXPECT_NE(refused->body.find("bound to another fin session"), std::string::npos);
  // close_session: the session is replaced by a new one (CLOSED, then OPENED).
  ASSERT_EQ(n->inst->closeSession(ma->session, "slow consumer: test"), FG_OK);
  EXPECT_TRUE(waitFor([&] {
    size_t opened_now = 0;
    bool closed = false;
    for (auto& [s, e] : n->host.sessions()) {
      opened_now += e == FG_SESSION_OPENED;
      closed = closed || (s == ma->session && e == FG_SESSION_CLOSED);
    }
    return closed && opened_now == 3;
  }));
  EXPECT_EQ(n->publish("fin-a", "{}", 0, ma->session), FG_ERR_STATE);
}

// ---- webhooks ----------------------------------------------------------------------------

struct HookServer {
  httplib::Server svr;
  std::thread th;
  int port = 0;
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> got;  // path, body
  std::map<std::string, int> hits;
  std::set<std::string> failing;  // paths answered 503
  HookServer() {
    svr.set_tcp_nodelay(true);
    svr.Post(R"(/hook/(.*))", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard lk(mu);
      hits[req.target]++;
      if (failing.count(req.target)) {
        res.status = 503;
        return;
      }
      got.emplace_back(req.target, req.body);
      res.status = 204;
    });
    port = svr.bind_to_any_port("127.0.0.1");
    th = std::thread([this] { svr.listen_after_bind(); });
    waitFor([this] { return svr.is_running(); });
  }
  ~HookServer() {
    svr.stop();
    th.join();
  }
  size_t count(const std::string& target) {
    std::lock_guard lk(mu);
    size_t n = 0;
    for (auto& [p, b] : got) n += p == target;
    return n;
  }
  int hitsOf(const std::string& target) {
    std::lock_guard lk(mu);
    return hits[target];
  }
};

TEST(HttpWebhook, PostsEachMessageToTheTemplate) {
  HookServer hook;
  RecordingHost host;
  PluginInstance inst(httpLib(), host,
                      {{"webhook", "http://127.0.0.1:" + std::to_string(hook.port) + "/hook/{topic}?x=1"}});
  ASSERT_EQ(inst.start(), FG_OK);
  for (uint64_t i = 1; i <= 20; ++i) {
    const std::string t = i % 2 ? "fin a/b" : "soarca";
    const std::string p = "{\"i\":" + std::to_string(i) + "}";
    fg_message m{{t.data(), t.size()}, {p.data(), p.size()}, nullptr, 0, 0, 0};
    ASSERT_EQ(inst.publish(m, i), FG_OK);
  }
  EXPECT_TRUE(waitFor([&] { return host.deliveries().size() == 20; }));
  for (auto& [id, st] : host.deliveries()) EXPECT_EQ(st, FG_DELIVERY_OK) << id;
  EXPECT_EQ(hook.count("/hook/fin%20a%2Fb?x=1"), 10u);
  EXPECT_EQ(hook.count("/hook/soarca?x=1"), 10u);
  // Per topic, in order.
  std::lock_guard lk(hook.mu);
  int last = 0;
  for (auto& [p, b] : hook.got)
    if (p == "/hook/soarca?x=1") {
      int i = std::atoi(b.c_str() + 5);
      EXPECT_GT(i, last);
      last = i;
    }
}

TEST(HttpWebhook, FailingTopicRetriesThenDeadLettersWhileOthersFlow) {
  HookServer hook;
  hook.failing.insert("/hook/broken");
  RecordingHost host;
  PluginInstance inst(httpLib(), host,
                      {{"webhook", "http://127.0.0.1:" + std::to_string(hook.port) + "/hook/{topic}"},
                       {"webhook_retries", "3"},
                       {"webhook_backoff_ms", "20"},
                       {"webhook_backoff_max_ms", "100"},
                       {"webhook_workers", "1"}});
  ASSERT_EQ(inst.start(), FG_OK);
  auto pub = [&](const std::string& t, uint64_t id) {
    fg_message m{{t.data(), t.size()}, {"{}", 2}, nullptr, 0, 0, 0};
    return inst.publish(m, id);
  };
  ASSERT_EQ(pub("broken", 1), FG_OK);
  ASSERT_EQ(pub("broken", 2), FG_OK);
  for (uint64_t i = 10; i < 30; ++i) ASSERT_EQ(pub("fine", i), FG_OK);
  // The good topic flows while the broken one backs off (one worker serves both).
  EXPECT_TRUE(waitFor([&] { return hook.count("/hook/fine") == 20; }));
  EXPECT_TRUE(waitFor([&] { return host.deliveries().size() == 22; }));
  auto d = host.deliveries();
  EXPECT_EQ(d[1], FG_DELIVERY_FAILED);
  EXPECT_EQ(d[2], FG_DELIVERY_FAILED);
  for (uint64_t i = 10; i < 30; ++i) EXPECT_EQ(d[i], FG_DELIVERY_OK);
  EXPECT_EQ(hook.hitsOf("/hook/broken"), 8);  // 2 messages x (1 + 3 retries)
}

TEST(HttpWebhook, TargetDownRetriesThenDeadLetters) {
  const int dead_port = freePort();
  RecordingHost host;
  PluginInstance inst(httpLib(), host,
                      {{"webhook", "http://127.0.0.1:" + std::to_string(dead_port) + "/hook/{topic}"},
                       {"webhook_retries", "2"},
                       {"webhook_backoff_ms", "10"},
                       {"webhook_timeout_ms", "500"}});
  ASSERT_EQ(inst.start(), FG_OK);
  fg_message m{{"fin", 3}, {"{}", 2}, nullptr, 0, 0, 0};
  ASSERT_EQ(inst.publish(m, 9), FG_OK);
  EXPECT_TRUE(waitFor([&] { return host.deliveries().count(9) == 1; }));
  EXPECT_EQ(host.deliveries()[9], FG_DELIVERY_FAILED);
  bool logged = false;
  for (auto& l : host.logs()) logged = logged || l.find("after 3 attempt(s): dead-lettered") != std::string::npos;
  EXPECT_TRUE(logged);
}

// ---- TLS ---------------------------------------------------------------------------------

TEST(HttpTls, ServerCertificateAndClientCertificates) {
  const std::string dir = tempDir("http-tls");
  const Cert ca = makeCert(dir, "ca", "test-ca");
  const Cert server = makeCert(dir, "server", "localhost");
  const Cert fin = makeCert(dir, "fin", "fin", &ca);
  auto n = startNode({{"publish_wait_ms", "0"},
                      {"tls.cert_file", server.cert},
                      {"tls.key_file", server.key},
                      {"tls.client_ca_file", ca.cert}});
  EXPECT_NE(n->host.stateDetail(FG_STATE_UP).find("(TLS, client certificates)"), std::string::npos);
  {
    httplib::SSLClient c("127.0.0.1", n->port, fin.cert, fin.key);
    c.set_ca_cert_path(server.cert.c_str());
    c.enable_server_certificate_verification(true);
    c.set_bearer_token_auth(kToken.c_str());
    auto res = c.Post("/v1/publish/fin-tls", "{\"tls\":true}", "application/json");
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, 202);
    auto m = n->host.next();
    ASSERT_TRUE(m);
    EXPECT_EQ(m->payload, "{\"tls\":true}");
  }
  {
    httplib::SSLClient c("127.0.0.1", n->port);  // no client certificate
    c.set_ca_cert_path(server.cert.c_str());
    c.enable_server_certificate_verification(true);
    c.set_bearer_token_auth(kToken.c_str());
    auto res = c.Post("/v1/publish/fin-tls", "{}", "application/json");
    EXPECT_FALSE(res && res->status == 202);
  }
  EXPECT_FALSE(n->host.next(100ms).has_value());
}

// ---- many long polls ---------------------------------------------------------------------

TEST(HttpPolls, FiveHundredLongPollsThenTheLimitRefusesWith429) {
  constexpr int kPolls = 500;
  auto n = startNode({{"publish_wait_ms", "0"},
                      {"max_polls", std::to_string(kPolls)},
                      {"max_polls_per_client", std::to_string(kPolls)},
                      {"max_connections", "600"},
                      {"max_connections_per_client", "600"}});
  std::vector<int> fds;
  for (int i = 0; i < kPolls; ++i) {
    int fd = connectLoopback(n->port);
    ASSERT_GE(fd, 0);
    const std::string req =
        "GET /v1/poll/fin-" + std::to_string(i) + "?wait=60 HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n";
    ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
    fds.push_back(fd);
  }
  // Every one is parked (none refused), and normal traffic still flows beside them.
  EXPECT_TRUE(waitFor([&] { return stat(n->port, "polls") == kPolls; }, 30s)) << stat(n->port, "polls");
  EXPECT_EQ(stat(n->port, "too_many_polls"), 0);
  auto c = client(n->port);
  for (int i = 0; i < 20; ++i) {
    auto res = c->Post("/v1/publish/fin-traffic", "{\"i\":" + std::to_string(i) + "}", "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 202);
    EXPECT_TRUE(n->host.next().has_value());
  }
  // A message for one of the parked pollers reaches it.
  ASSERT_EQ(n->publish("fin-123", "{\"to\":123}", 77), FG_OK);
  EXPECT_TRUE(n->waitDelivery(77, FG_DELIVERY_OK));
  {
    std::string resp;
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (resp.find("{\"to\":123}") == std::string::npos && std::chrono::steady_clock::now() < end) {
      pollfd p{fds[123], POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      ssize_t k = ::recv(fds[123], buf, sizeof buf, 0);
      if (k <= 0) break;
      resp.append(buf, static_cast<size_t>(k));
    }
    EXPECT_EQ(resp.rfind("HTTP/1.1 200", 0), 0u) << resp;
  }
  // Poller 123 is answered; one more fills the limit again, and the next is refused with 429.
  {
    const std::string req = "GET /v1/poll/fin-123?wait=60 HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n";
    ASSERT_EQ(::send(fds[123], req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  }
  EXPECT_TRUE(waitFor([&] { return stat(n->port, "polls") == kPolls; }, 10s));
  auto over = c->Get("/v1/poll/fin-over?wait=1");
  ASSERT_TRUE(over);
  EXPECT_EQ(over->status, 429);
  EXPECT_FALSE(over->get_header_value("Retry-After").empty());
  EXPECT_EQ(stat(n->port, "too_many_polls"), 1);
  for (int fd : fds) ::close(fd);
  n->inst->stop(5000);  // wakes the parked polls
}

}  // namespace
}  // namespace fingate::test
