// The admin HTTP listener (cpp-httplib lives only in admin.cpp).
//
// Access: /healthz and /readyz are open; every other path needs `Authorization: Bearer
// <admin.token>` when a token is configured (401 with WWW-Authenticate otherwise). Every request
// whose Host header names another host than this listener (its address, localhost, 127.0.0.1,
// [::1], admin.allowed_hosts; any IP literal when listening on a wildcard address) or another
// port is refused with 403: a web page that rebinds its DNS name to 127.0.0.1 cannot read the
// admin API through the victim's browser. The port is bound with SO_REUSEADDR only (never
// SO_REUSEPORT), so a second gateway on the same port fails to start instead of sharing it.
#pragma once

#include <fingate/config.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace fingate {

class Gateway;

// What the admin API shows. Each is called on an admin thread.
struct AdminViews {
  std::function<bool(std::string& why)> ready;
  std::function<std::string()> metrics;
  std::function<std::string()> fins;
  std::function<std::string()> dead_letters;
  std::function<std::string()> endpoints;
  // Dead-letter actions: re-publish one (true, or false with why), drop one, drop all.
  std::function<bool(uint64_t id, std::string& why)> retry_dead_letter;
  std::function<bool(uint64_t id)> drop_dead_letter;
  std::function<size_t()> drop_dead_letters;
  // Migration: GET /v1/migration (sets the status), POST /v1/migration/<action> (returns it).
  std::function<std::string(int& status)> migration;
  std::function<int(const std::string& action, const std::map<std::string, std::string>& params,
                    const std::string& body, std::string& reply)>
      migration_action;
};

class AdminServer {
 public:
  AdminServer(Gateway& gw, const AdminConfig& cfg);  // the gateway's views
  AdminServer(AdminViews views, const AdminConfig& cfg);
  static AdminViews viewsOf(Gateway& gw);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds cfg.listen and serves on its own thread. Throws std::runtime_error when it cannot,
  // e.g. "admin.listen 127.0.0.1:9400: address already in use (another fingate?)".
  void start();
  // Closes the listening socket and returns at once (requests in progress finish).
  void shutdown();
  // shutdown(), then waits for the serving thread. Never call it while holding a lock that a
  // view takes (a request in progress may be waiting for it).
  void stop();
  // A new token / allowed_hosts, for the next request (the listen address stays).
  void setAccess(const AdminConfig& cfg);

  int port() const { return port_; }
  const std::string& listen() const { return listen_; }  // as configured
  std::string address() const;                            // as bound: host:port (port 0 resolved)
  AdminConfig config() const;

 private:
  struct Impl;
  AdminViews views_;
  std::string listen_;
  int port_ = 0;
  mutable std::mutex access_mu_;
  AdminConfig cfg_;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

// A reload's change of the admin listener, in three steps around the gateway's lock:
//   AdminReload change(gw, admin_.get(), next.admin);   // before taking the lock
//   if (!change.prepare(error)) return false;           // new address bound; or refused, nothing changed
//   ... lock, apply the rest ...
//   change.commit(admin_);                              // under the lock: the new listener in
//   (the destructor, after the lock is released, stops the listener no longer used)
// A clash (the new address is taken) refuses the reload and the old listener stays. A move to
// another host on the same port (only possible once the old socket is closed) is done in
// commit(); should the new address then fail, the old one is bound again and the error logged.
class AdminReload {
 public:
  AdminReload(Gateway& gw, AdminServer* current, const AdminConfig& next);
  AdminReload(AdminViews views, AdminServer* current, const AdminConfig& next);
  ~AdminReload();
  AdminReload(const AdminReload&) = delete;
  AdminReload& operator=(const AdminReload&) = delete;
  bool prepare(std::string& error);
  void commit(std::unique_ptr<AdminServer>& admin);

 private:
  enum class Mode { Nothing, Update, Remove, Replace, Rebind };
  AdminViews views_;
  AdminServer* current_;
  AdminConfig next_;
  Mode mode_ = Mode::Nothing;
  std::unique_ptr<AdminServer> fresh_;  // started by prepare(), not yet in use
  std::unique_ptr<AdminServer> old_;    // taken out by commit(), stopped by the destructor
};

}  // namespace fingate
