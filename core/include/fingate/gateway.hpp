// The gateway at run time: plugin libraries, endpoints, router, registry, admin listener.
#pragma once

#include <fingate/config.hpp>
#include <fingate/registry.hpp>
#include <fingate/router.hpp>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

namespace fingate {

class Endpoint;
class AdminServer;
class PluginLibrary;

// plugins_dir from the config, or (empty) `<dir of the executable>/../plugins`.
std::string resolvePluginsDir(const Config& cfg);

// Everything `fingate validate` checks, without starting anything: the config itself, that
// every plugin loads, that every endpoint key is one the plugin accepts, and that the plugin
// accepts the values (create + destroy). Throws ConfigError (file:line:col) or PluginError.
void validateConfig(const Config& cfg);

struct PluginInfo {
  std::string name, version, path;
  std::vector<std::string> keys;
  uint32_t capabilities = 0;
  std::string error;  // non-empty when it did not load
};
// Every libfingate-*.so in dir, loaded and checked.
std::vector<PluginInfo> listPlugins(const std::string& dir);

class Gateway {
 public:
  explicit Gateway(Config cfg);  // loads plugins and creates instances (throws like validateConfig)
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  void start();  // opens everything; throws PluginError when an endpoint cannot start
  // Drains in-flight messages (bounded by drain_timeout_ms), then stops everything.
  void stop();
  // Applies a new, already-parsed config: validated first; on any error the running
  // configuration stays and the error is returned. Endpoints whose config is unchanged keep
  // running (and their sessions and bindings); others are stopped/started; routes swap.
  bool reload(const Config& next, std::string& error);

  // Admin views.
  bool ready(std::string& why) const;
  std::string metricsText() const;
  std::string finsJson() const;
  std::string deadLettersJson() const;
  std::string endpointsJson() const;
  int adminPort() const;
  const Config& config() const { return cfg_; }
  Router& router() { return *router_; }

 private:
  std::vector<std::shared_ptr<Endpoint>> buildEndpoints(const Config& cfg, const std::vector<std::string>& only);
  void publishEndpoints();
  static std::vector<RouteRule> routesOf(const Config& cfg);

  Config cfg_;
  Registry registry_;
  std::unique_ptr<Router> router_;
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Endpoint>> endpoints_;
  std::unique_ptr<AdminServer> admin_;
  bool started_ = false;
  std::mutex reload_mu_;                              // one reload at a time
  std::vector<std::shared_ptr<Endpoint>> graveyard_;  // removed endpoints still referenced elsewhere
  void collectGraveyard();
  // Register replay timer (register_replay_s).
  void replayLoop();
  std::thread replay_thread_;
  std::mutex replay_mu_;
  std::condition_variable replay_cv_;
  bool replay_stop_ = false;
};

}  // namespace fingate
