// Runs the real build/bin/fingate on a generated config and finds the ports it bound.
#pragma once

#include <memory>
#include <string>

#include "test_support.hpp"

namespace fingate::test {

class GatewayProcess {
 public:
  // `body` is YAML with at least `endpoints:` (listen on port 0 so the gateway picks ports).
  // plugins_dir, admin (127.0.0.1:0) and state_dir (a fresh dir, or `state_dir` if given) are
  // prepended unless the body sets them.
  GatewayProcess(const std::string& name, const std::string& body, const std::string& state_dir = "");
  ~GatewayProcess();

  // Starts the process and waits until the admin listener and `wait_endpoints` report up.
  bool start(const std::vector<std::string>& wait_endpoints, std::chrono::milliseconds timeout = 20s);
  int port(const std::string& endpoint) const;  // 0 when unknown
  int adminPort() const { return admin_port_; }
  Process& process() { return *proc_; }
  std::string log() const { return proc_ ? proc_->log() : ""; }
  const std::string& configPath() const { return config_path_; }
  const std::string& dir() const { return dir_; }
  const std::string& stateDir() const { return state_dir_; }
  // Rewrites the config file (same header) — for SIGHUP reload tests.
  void rewrite(const std::string& body);

 private:
  std::string header() const;
  std::string dir_, state_dir_, config_path_;
  std::unique_ptr<Process> proc_;
  std::map<std::string, int> ports_;
  int admin_port_ = 0;
};

}  // namespace fingate::test
