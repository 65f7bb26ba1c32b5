#include "gateway_process.hpp"

#include <sstream>

namespace fingate::test {

GatewayProcess::GatewayProcess(const std::string& name, const std::string& body, const std::string& state_dir) {
  dir_ = tempDir(name);
  state_dir_ = state_dir.empty() ? dir_ + "/state" : state_dir;
  config_path_ = dir_ + "/fingate.yaml";
  rewrite(body);
}

GatewayProcess::~GatewayProcess() = default;

std::string GatewayProcess::header() const {
  return "plugins_dir: " + std::string(FINGATE_PLUGINS_DIR) + "\nstate_dir: " + state_dir_ +
         "\nadmin: { listen: 127.0.0.1:0 }\ndrain_timeout_ms: 2000\n";
}

void GatewayProcess::rewrite(const std::string& body) { writeFile(config_path_, header() + body); }

bool GatewayProcess::start(const std::vector<std::string>& wait_endpoints, std::chrono::milliseconds timeout) {
  proc_ = std::make_unique<Process>(std::vector<std::string>{FINGATE_BIN, "run", config_path_}, dir_ + "/fingate.log");
  ports_.clear();
  admin_port_ = 0;
  return waitFor(
      [&] {
        std::istringstream in(proc_->log());
        std::string line;
        while (std::getline(in, line)) {
          if (line.find("admin listening on") != std::string::npos) admin_port_ = portFromLine(line);
          auto at = line.find("endpoint ");
          if (at == std::string::npos) continue;
          auto colon = line.find(": up (", at);
          if (colon == std::string::npos) continue;
          std::string ep = line.substr(at + 9, colon - at - 9);
          ports_[ep] = portFromLine(line);
        }
        if (!proc_->running()) return true;  // exited: give up now
        if (admin_port_ == 0) return false;
        for (auto& e : wait_endpoints)
          if (!ports_.count(e)) return false;
        return true;
      },
      timeout) &&
         proc_->running();
}

int GatewayProcess::port(const std::string& endpoint) const {
  auto it = ports_.find(endpoint);
  return it == ports_.end() ? 0 : it->second;
}

}  // namespace fingate::test
