// The gateway at run time: plugin libraries, endpoints, router, registry, admin listener.
#pragma once

#include <fingate/config.hpp>
#include <fingate/registry.hpp>
#include <fingate/router.hpp>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <optional>
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

  // Migration (config `migration:`, docs/migration.md), driven through the admin API.
  // GET /v1/migration: the pair, its state, the mirror's counters, the last verify report and
  // whether a cutover is allowed now. status 404 when no migration is configured.
  std::string migrationJson(int& status) const;
  // POST /v1/migration/<action>: "mirror" (params: enabled), "verify" (params: parity, messages,
  // topics; body: the verify report, stored), "cutover", "rollback". Returns the HTTP status
  // (200, 400, 404, 409) and the JSON reply. Switches go through the reload path (the router's
  // tables swap atomically) and are kept in <state_dir>/migration.json.
  int migrationAction(const std::string& action, const std::map<std::string, std::string>& params,
                      const std::string& body, std::string& reply);

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
  // reload(), with the migration state taken from `next` (admin actions: the running config with
  // another migration state, so not validated again) or kept from the running gateway while the
  // file names the same pair (SIGHUP).
  bool apply(const Config& next, bool migration_from_next, std::string& error);
  static MigrationPair pairOf(const MigrationConfig& m);
  std::string migrationStateFile() const;
  void saveMigrationState(const MigrationConfig& m) const;
  void loadMigrationState(MigrationConfig& m) const;
  bool cutoverAllowed(const MigrationConfig& m, std::string& why) const;  // under mig_mu_

  struct VerifyReport {
    bool parity = false;
    int64_t at_ms = 0;       // wall clock
    int64_t at_steady = 0;   // steady clock ms
    std::string active;      // the active side when it was posted
    uint64_t messages = 0, topics = 0;
    uint64_t mirror_failed_at = 0;  // the mirror_failed counter when it was posted
    uint64_t switches_at = 0;       // switches_ when it was posted (a switch since makes it stale)
    std::string body;               // the report as posted (JSON)
  };
  mutable std::mutex mig_mu_;  // the report and switch times (lock order: reload_mu_, then mig_mu_)
  std::optional<VerifyReport> verify_;
  std::mutex mig_action_mu_;  // one migration action at a time
  std::atomic<size_t> last_moved_{0};  // bindings the last apply() moved
  int64_t switched_at_ms_ = 0;
  uint64_t switches_ = 0;  // changes of the active side (under mig_mu_)

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
