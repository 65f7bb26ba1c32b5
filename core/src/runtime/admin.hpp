// The admin HTTP listener (cpp-httplib lives only in admin.cpp).
#pragma once

#include <memory>
#include <string>
#include <thread>

namespace fingate {

class Gateway;

class AdminServer {
 public:
  AdminServer(Gateway& gw, std::string listen);  // "host:port" (port 0 = any)
  ~AdminServer();
  void start();  // binds (throws std::runtime_error when it cannot) and serves on its own thread
  void stop();
  int port() const { return port_; }
  const std::string& listen() const { return listen_; }

 private:
  struct Impl;
  Gateway& gw_;
  std::string listen_;
  int port_ = 0;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace fingate
