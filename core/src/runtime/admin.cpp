#include "admin.hpp"

#include <arpa/inet.h>
#include <fingate/gateway.hpp>
#include <httplib.h>
#include <netdb.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "redact.hpp"

namespace fingate {

namespace {

std::string lowerCase(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

// "host:port" / "[v6]:port" -> host without brackets, port. False when it does not parse.
bool splitHostPort(const std::string& v, std::string& host, std::string& port) {
  size_t colon;
  if (!v.empty() && v.front() == '[') {
    size_t close = v.find(']');
    if (close == std::string::npos) return false;
    host = v.substr(1, close - 1);
    if (close + 1 == v.size()) {
      port.clear();
      return true;
    }
    if (v[close + 1] != ':') return false;
    port = v.substr(close + 2);
  } else if ((colon = v.rfind(':')) != std::string::npos) {
    if (v.find(':') != colon) return false;  // a bare IPv6 address: not a Host header form
    host = v.substr(0, colon);
    port = v.substr(colon + 1);
  } else {
    host = v;
    port.clear();
  }
  if (!port.empty() && port.find_first_not_of("0123456789") != std::string::npos) return false;
  if (port.size() > 5) return false;
  return true;
}

bool isIpLiteral(const std::string& h) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, h.c_str(), buf) == 1 || inet_pton(AF_INET6, h.c_str(), buf) == 1;
}

bool isWildcard(const std::string& h) { return h.empty() || h == "0.0.0.0" || h == "::" || h == "*"; }

bool constantTimeEqual(std::string_view a, std::string_view b) {
  size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

// Why binding host:port failed (httplib only says that it did): bind a probe socket the same
// way (SO_REUSEADDR, no SO_REUSEPORT) and read errno.
std::string bindFailure(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) return std::string("cannot resolve the host: ") + gai_strerror(rc);
  int err = 0;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    if (ai->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &yes, sizeof yes);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 1) != 0) {
      err = errno;
      ::close(fd);
      continue;
    }
    ::close(fd);
    err = 0;
    break;
  }
  ::freeaddrinfo(res);
  if (err == EADDRINUSE) return "address already in use (another fingate?)";
  if (err == EACCES) return "permission denied (ports below 1024 need privileges)";
  if (err == EADDRNOTAVAIL) return "cannot assign the address (not an address of this machine)";
  if (err) return std::strerror(err);
  return "cannot listen";
}

}  // namespace

struct AdminServer::Impl {
  httplib::Server server;
  std::atomic<bool> serving_done{false};
};

AdminViews AdminServer::viewsOf(Gateway& gw) {
  return AdminViews{
      [&gw](std::string& why) { return gw.ready(why); },
      [&gw] { return gw.metricsText(); },
      [&gw] { return gw.finsJson(); },
      [&gw] { return gw.deadLettersJson(); },
      [&gw] { return gw.endpointsJson(); },
      [&gw](uint64_t id, std::string& why) { return gw.router().retryDeadLetter(id, why); },
      [&gw](uint64_t id) { return gw.router().deadLetters().drop(id); },
      [&gw] { return gw.router().deadLetters().dropAll(); },
      [&gw](int& status) { return gw.migrationJson(status); },
      [&gw](const std::string& action, const std::map<std::string, std::string>& params, const std::string& body,
            std::string& reply) { return gw.migrationAction(action, params, body, reply); },
  };
}

AdminServer::AdminServer(Gateway& gw, const AdminConfig& cfg) : AdminServer(viewsOf(gw), cfg) {}

AdminServer::AdminServer(AdminViews views, const AdminConfig& cfg)
    : views_(std::move(views)), listen_(cfg.listen), cfg_(cfg) {}

AdminServer::~AdminServer() { stop(); }

std::string AdminServer::address() const {
  auto colon = listen_.rfind(':');
  return (colon == std::string::npos ? listen_ : listen_.substr(0, colon)) + ":" + std::to_string(port_);
}

AdminConfig AdminServer::config() const {
  std::lock_guard lk(access_mu_);
  return cfg_;
}

void AdminServer::setAccess(const AdminConfig& cfg) {
  std::lock_guard lk(access_mu_);
  cfg_.token = cfg.token;
  cfg_.token_mark = cfg.token_mark;
  cfg_.allowed_hosts = cfg.allowed_hosts;
}

void AdminServer::start() {
  std::string host, port_text;
  if (!splitHostPort(listen_, host, port_text) || port_text.empty())
    throw std::runtime_error("admin.listen: expected host:port, got '" + listen_ + "'");
  int port = std::stoi(port_text);
  const std::string listen_host = lowerCase(host);
  impl_ = std::make_unique<Impl>();
  auto& s = impl_->server;
  s.set_tcp_nodelay(true);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which let a second gateway bind
  // the same port and take a share of the first one's requests.
  s.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  s.set_read_timeout(5, 0);
  s.set_write_timeout(5, 0);
  s.set_keep_alive_max_count(100);
  s.set_payload_max_length(1 << 20);  // the largest body: a migration verify report

  // Host check (all paths), then the token (all but /healthz and /readyz).
  s.set_pre_routing_handler([this, listen_host](const httplib::Request& req, httplib::Response& res) {
    // `curl -X POST URL` sends no Content-Length: cpp-httplib would answer a bare 400 before any
    // handler runs. A bodiless POST/DELETE is an empty body.
    if ((req.method == "POST" || req.method == "DELETE") && !req.has_header("Content-Length") &&
        !req.has_header("Transfer-Encoding"))
      const_cast<httplib::Request&>(req).headers.emplace("Content-Length", "0");  // the server owns req
    AdminConfig access = config();
    if (req.has_header("Host")) {
      std::string value = lowerCase(req.get_header_value("Host"));
      std::string h, p;
      bool ok = splitHostPort(value, h, p);
      while (ok && !h.empty() && h.back() == '.') h.pop_back();
      bool port_ok = p.empty() || p == std::to_string(port_);
      bool host_ok = h == listen_host || h == "localhost" || h == "127.0.0.1" || h == "::1" ||
                     (isWildcard(listen_host) && isIpLiteral(h));
      bool allowed = ok && host_ok && port_ok;
      for (const std::string& a : access.allowed_hosts) {
        std::string ah = lowerCase(a), ap;
        std::string entry = ah;
        if (!splitHostPort(entry, ah, ap)) continue;
        if (ok && ah == h && (ap.empty() ? port_ok : ap == p)) allowed = true;
      }
      if (!allowed) {
        res.status = 403;
        res.set_content(
            "forbidden: the Host header does not name this admin listener (DNS-rebinding protection; "
            "add the name to admin.allowed_hosts if it is yours)\n",
            "text/plain");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (req.path == "/healthz" || req.path == "/readyz" || access.token.empty())
      return httplib::Server::HandlerResponse::Unhandled;
    std::string auth = req.get_header_value("Authorization");
    std::string given;
    if (auth.size() > 7 && lowerCase(auth.substr(0, 7)) == "bearer ") given = auth.substr(7);
    while (!given.empty() && given.front() == ' ') given.erase(0, 1);
    while (!given.empty() && given.back() == ' ') given.pop_back();
    if (given.empty() || !constantTimeEqual(given, access.token)) {
      res.status = 401;
      res.set_header("WWW-Authenticate", given.empty() ? "Bearer realm=\"fingate\""
                                                       : "Bearer realm=\"fingate\", error=\"invalid_token\"");
      res.set_content(given.empty() ? "unauthorized: send Authorization: Bearer <admin.token>\n"
                                    : "unauthorized: wrong token\n",
                      "text/plain");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Every body goes through the URL redactor once more: plugins' state details and dead letters
  // are redacted where they are built; this catches what a future view forgets.
  s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  s.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    std::string why;
    bool ok = views_.ready(why);
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ready\n" : redactText("not ready: " + why) + "\n", "text/plain");
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(redactText(views_.metrics()), "text/plain; version=0.0.4");
  });
  s.Get("/v1/fins", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(redactText(views_.fins()), "application/json");
  });
  s.Get("/v1/dead-letters", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(redactText(views_.dead_letters()), "application/json");
  });
  // POST /v1/dead-letters/{id}/retry: routed again from where it came (a static route's copy is
  // published to its target again); DELETE /v1/dead-letters/{id} drops one, DELETE
  // /v1/dead-letters drops every stored one (the counters stay).
  auto idOf = [](const std::string& text, uint64_t& id) {
    if (text.empty() || text.size() > 19) return false;
    id = 0;
    for (char c : text) {
      if (c < '0' || c > '9') return false;
      id = id * 10 + static_cast<uint64_t>(c - '0');
    }
    return true;
  };
  // A browser page elsewhere may send a "simple" cross-site POST/DELETE to a loopback port: a
  // request that changes something and carries a foreign Origin is refused (CSRF).
  auto crossSite = [this](const httplib::Request& req, httplib::Response& res) {
    if (!req.has_header("Origin")) return false;
    std::string o = req.get_header_value("Origin");
    std::string p = std::to_string(port_);
    for (const char* h : {"http://127.0.0.1:", "http://localhost:", "http://[::1]:"})
      if (o == h + p) return false;
    res.status = 403;
    res.set_content("forbidden: cross-site request (Origin " + o.substr(0, 100) + ")\n", "text/plain");
    return true;
  };
  s.Post(R"(/v1/dead-letters/([^/]+)/retry)", [this, idOf, crossSite](const httplib::Request& req, httplib::Response& res) {
    uint64_t id;
    std::string why;
    if (crossSite(req, res)) return;
    if (!idOf(req.matches[1], id)) {
      res.status = 400;
      res.set_content("{\"error\":\"the dead letter id is a decimal number\"}\n", "application/json");
    } else if (!views_.retry_dead_letter || !views_.retry_dead_letter(id, why)) {
      res.status = 404;
      std::string j = "{\"error\":\"";
      for (char c : why) j += (c == '"' || c == '\\') ? '\'' : c;
      res.set_content(j + "\"}\n", "application/json");
    } else {
      res.status = 202;
      res.set_content("{\"retried\":" + std::to_string(id) + "}\n", "application/json");
    }
  });
  s.Delete(R"(/v1/dead-letters/([^/]+))", [this, idOf, crossSite](const httplib::Request& req, httplib::Response& res) {
    uint64_t id;
    if (crossSite(req, res)) return;
    if (!idOf(req.matches[1], id) || !views_.drop_dead_letter || !views_.drop_dead_letter(id)) {
      res.status = 404;
      res.set_content("{\"error\":\"no such dead letter\"}\n", "application/json");
      return;
    }
    res.set_content("{\"dropped\":1}\n", "application/json");
  });
  s.Delete("/v1/dead-letters", [this, crossSite](const httplib::Request& req, httplib::Response& res) {
    if (crossSite(req, res)) return;
    size_t n = views_.drop_dead_letters ? views_.drop_dead_letters() : 0;
    res.set_content("{\"dropped\":" + std::to_string(n) + "}\n", "application/json");
  });
  // Migration (docs/migration.md): the state, and the actions of `fingate migrate`.
  s.Get("/v1/migration", [this](const httplib::Request&, httplib::Response& res) {
    int status = 404;
    std::string body = views_.migration ? views_.migration(status) : "{\"error\":\"no migration configured\"}\n";
    res.status = status;
    res.set_content(redactText(body), "application/json");
  });
  s.Post(R"(/v1/migration/([a-z]+))", [this, crossSite](const httplib::Request& req, httplib::Response& res) {
    if (crossSite(req, res)) return;
    std::map<std::string, std::string> params;
    for (auto& [k, v] : req.params) params[k] = v;
    std::string reply = "{\"error\":\"no migration configured\"}\n";
    res.status = views_.migration_action ? views_.migration_action(req.matches[1], params, req.body, reply) : 404;
    res.set_content(reply, "application/json");
  });
  s.Get("/v1/endpoints", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(redactText(views_.endpoints()), "application/json");
  });

  if (port == 0) {
    port_ = s.bind_to_any_port(host);
    if (port_ <= 0) throw std::runtime_error("admin.listen " + listen_ + ": " + bindFailure(host, 0));
  } else {
    if (!s.bind_to_port(host, port)) throw std::runtime_error("admin.listen " + listen_ + ": " + bindFailure(host, port));
    port_ = port;
  }
  thread_ = std::thread([this] {
    impl_->server.listen_after_bind();
    impl_->serving_done = true;
  });
  spdlog::info("admin listening on {}:{}{}", host.find(':') != std::string::npos ? "[" + host + "]" : host, port_,
               config().token.empty() ? "" : " (bearer token required but for /healthz and /readyz)");
}

void AdminServer::shutdown() {
  if (!impl_ || !thread_.joinable()) return;
  // httplib's stop() is a no-op until listen_after_bind() runs: wait for it to begin.
  while (!impl_->server.is_running() && !impl_->serving_done)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->server.stop();
}

void AdminServer::stop() {
  shutdown();
  if (thread_.joinable()) thread_.join();
}

// ---- AdminReload --------------------------------------------------------------------------

AdminReload::AdminReload(Gateway& gw, AdminServer* current, const AdminConfig& next)
    : AdminReload(AdminServer::viewsOf(gw), current, next) {}

AdminReload::AdminReload(AdminViews views, AdminServer* current, const AdminConfig& next)
    : views_(std::move(views)), current_(current), next_(next) {}

AdminReload::~AdminReload() {
  if (old_) old_->stop();
  if (fresh_) fresh_->stop();
}

bool AdminReload::prepare(std::string& error) {
  if (current_ && current_->listen() == next_.listen) {
    mode_ = Mode::Update;
    return true;
  }
  if (next_.listen.empty()) {
    mode_ = current_ ? Mode::Remove : Mode::Nothing;
    return true;
  }
  fresh_ = std::make_unique<AdminServer>(views_, next_);
  try {
    fresh_->start();
    mode_ = Mode::Replace;
    return true;
  } catch (const std::exception& e) {
    fresh_.reset();
    // The same port on another host: taken by our own listener until commit() closes it.
    auto colon = next_.listen.rfind(':');
    int port = colon == std::string::npos ? -1 : std::atoi(next_.listen.c_str() + colon + 1);
    if (current_ && port == current_->port()) {
      mode_ = Mode::Rebind;
      return true;
    }
    error = std::string(e.what()) + "; the admin listener stays on " + (current_ ? current_->address() : "nothing");
    return false;
  }
}

void AdminReload::commit(std::unique_ptr<AdminServer>& admin) {
  switch (mode_) {
    case Mode::Nothing: return;
    case Mode::Update:
      if (admin) admin->setAccess(next_);
      return;
    case Mode::Remove:
      old_ = std::move(admin);
      if (old_) old_->shutdown();
      spdlog::info("reload: admin listener closed");
      return;
    case Mode::Replace:
      old_ = std::move(admin);
      if (old_) old_->shutdown();
      admin = std::move(fresh_);
      return;
    case Mode::Rebind: {
      old_ = std::move(admin);
      AdminConfig previous = old_ ? old_->config() : AdminConfig{};
      if (old_) old_->shutdown();
      auto next = std::make_unique<AdminServer>(views_, next_);
      try {
        next->start();
        admin = std::move(next);
        return;
      } catch (const std::exception& e) {
        spdlog::error("reload: {}; the admin listener stays on {}", e.what(), old_ ? old_->address() : previous.listen);
      }
      if (previous.listen.empty()) return;
      auto back = std::make_unique<AdminServer>(views_, previous);
      try {
        back->start();
        admin = std::move(back);
      } catch (const std::exception& e) {
        spdlog::error("reload: the admin listener could not be bound again: {}", e.what());
      }
      return;
    }
  }
}

}  // namespace fingate

// ---- the admin API's client (fingate/admin_client.hpp) --------------------------------------

#include <fingate/admin_client.hpp>

namespace fingate {

AdminResponse adminRequest(const std::string& host, int port, const std::string& method, const std::string& path,
                           const std::string& token, const std::string& body, int timeout_ms) {
  AdminResponse out;
  httplib::Client cli(host.find(':') != std::string::npos ? "[" + host + "]" : host, port);
  const time_t sec = timeout_ms / 1000;
  const time_t usec = static_cast<time_t>(timeout_ms % 1000) * 1000;
  cli.set_connection_timeout(sec, usec);
  cli.set_read_timeout(sec, usec);
  cli.set_write_timeout(sec, usec);
  httplib::Headers headers;
  if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
  if (method != "GET" && method != "POST" && method != "DELETE") {
    out.error = "unsupported method " + method;
    return out;
  }
  httplib::Result res = method == "GET"    ? cli.Get(path, headers)
                        : method == "POST" ? cli.Post(path, headers, body, "application/json")
                                           : cli.Delete(path, headers);
  if (!res) {
    auto e = res.error();
    out.error = e == httplib::Error::Connection     ? "connection refused (is the gateway running with this admin address?)"
                : e == httplib::Error::Read         ? "no answer (read failed or timed out)"
                : e == httplib::Error::ConnectionTimeout ? "connection timed out"
                                                         : httplib::to_string(e);
    return out;
  }
  out.status = res->status;
  out.body = res->body;
  return out;
}

}  // namespace fingate
