#include "admin.hpp"

#include <fingate/gateway.hpp>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include <stdexcept>

namespace fingate {

struct AdminServer::Impl {
  httplib::Server server;
};

AdminServer::AdminServer(Gateway& gw, std::string listen) : gw_(gw), listen_(std::move(listen)) {}

AdminServer::~AdminServer() { stop(); }

void AdminServer::start() {
  auto colon = listen_.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("admin.listen: expected host:port, got '" + listen_ + "'");
  std::string host = listen_.substr(0, colon);
  int port = std::stoi(listen_.substr(colon + 1));
  impl_ = std::make_unique<Impl>();
  auto& s = impl_->server;
  s.set_tcp_nodelay(true);
  s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  s.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    std::string why;
    bool ok = gw_.ready(why);
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ready\n" : "not ready: " + why + "\n", "text/plain");
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(gw_.metricsText(), "text/plain; version=0.0.4");
  });
  s.Get("/v1/fins", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(gw_.finsJson(), "application/json");
  });
  s.Get("/v1/dead-letters", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(gw_.deadLettersJson(), "application/json");
  });
  s.Get("/v1/endpoints", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(gw_.endpointsJson(), "application/json");
  });
  if (port == 0) {
    port_ = s.bind_to_any_port(host);
    if (port_ <= 0) throw std::runtime_error("admin: cannot listen on " + listen_);
  } else {
    if (!s.bind_to_port(host, port)) throw std::runtime_error("admin: cannot listen on " + listen_);
    port_ = port;
  }
  thread_ = std::thread([this] { impl_->server.listen_after_bind(); });
  spdlog::info("admin listening on {}:{}", host, port_);
}

void AdminServer::stop() {
  if (impl_) impl_->server.stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace fingate
