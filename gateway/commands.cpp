#include "commands.hpp"

#include <fingate/config.hpp>
#include <fingate/gateway.hpp>
#include <fingate/plugin_loader.hpp>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <iostream>
#include <mutex>

#include "redact.hpp"

namespace fingate::cli {

namespace {

// Every log line passes through the URL redactor before it is written: whatever a plugin or
// an error message says, "scheme://user:pass@host" is written "scheme://user:***@host".
class RedactingSink : public spdlog::sinks::sink {
 public:
  explicit RedactingSink(std::shared_ptr<spdlog::sinks::sink> inner) : inner_(std::move(inner)) {}
  void log(const spdlog::details::log_msg& msg) override {
    std::string_view text(msg.payload.data(), msg.payload.size());
    if (text.find(":/") == std::string_view::npos) {  // no URL: nothing to redact
      inner_->log(msg);
      return;
    }
    std::string clean = redactText(text);
    spdlog::details::log_msg copy(msg);
    copy.payload = spdlog::string_view_t(clean.data(), clean.size());
    inner_->log(copy);
  }
  void flush() override { inner_->flush(); }
  void set_pattern(const std::string& pattern) override { inner_->set_pattern(pattern); }
  void set_formatter(std::unique_ptr<spdlog::formatter> f) override { inner_->set_formatter(std::move(f)); }

 private:
  std::shared_ptr<spdlog::sinks::sink> inner_;
};

void setupLogging(const std::string& level) {
  auto sink = std::make_shared<RedactingSink>(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  auto logger = std::make_shared<spdlog::logger>("fingate", sink);
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::flush_on(spdlog::level::trace);
}

// Config problems are one line on stderr and exit code 2.
// (Redacted: a plugin's message may quote a URL with credentials.)
int configFailure(const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", redactText(e.what()).c_str());
  return 2;
}

}  // namespace

int validate(const std::string& path) {
  try {
    Config cfg = loadConfig(path);
    validateConfig(cfg);
    std::printf("%s: ok (%zu endpoint(s), %zu route(s))\n", path.c_str(), cfg.endpoints.size(), cfg.routes.size());
    return 0;
  } catch (const ConfigError& e) {
    return configFailure(e);
  } catch (const PluginError& e) {
    return configFailure(e);
  }
}

int plugins(const std::string& dir_opt) {
  Config defaults;
  std::string dir = dir_opt.empty() ? resolvePluginsDir(defaults) : dir_opt;
  auto list = listPlugins(dir);
  if (list.empty()) {
    std::fprintf(stderr, "no plugins (libfingate-*.so) in %s\n", dir.c_str());
    return 1;
  }
  int bad = 0;
  for (auto& p : list) {
    if (!p.error.empty()) {
      std::printf("%-10s FAILED  %s\n", p.name.c_str(), p.error.c_str());
      ++bad;
      continue;
    }
    std::string keys;
    for (auto& k : p.keys) keys += (keys.empty() ? "" : ", ") + k;
    std::printf("%-10s %-8s %s\n           keys: %s\n", p.name.c_str(), p.version.c_str(), p.path.c_str(),
                keys.c_str());
  }
  return bad ? 1 : 0;
}

int run(const std::string& path) {
  Config cfg;
  try {
    cfg = loadConfig(path);
  } catch (const ConfigError& e) {
    return configFailure(e);
  }
  try {
    checkConfigForRun(cfg);  // what would fail later (port clashes, TLS files, state_dir, URL credentials)
  } catch (const ConfigError& e) {
    return configFailure(e);
  }
  setupLogging(cfg.log_level);
  // Signals are taken synchronously by this thread; every other thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<Gateway> gw;
  try {
    gw = std::make_unique<Gateway>(cfg);
  } catch (const ConfigError& e) {
    return configFailure(e);
  } catch (const PluginError& e) {
    return configFailure(e);
  } catch (const std::exception& e) {
    spdlog::error("cannot start: {}", e.what());
    return 1;
  }
  try {
    gw->start();
  } catch (const std::exception& e) {
    spdlog::error("cannot start: {}", e.what());
    gw->stop();
    return 1;
  }
  while (true) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) {
      spdlog::info("SIGHUP: reloading {}", path);
      try {
        Config next = loadConfig(path);
        std::string err;
        if (!gw->reload(next, err)) spdlog::error("reload refused, keeping the running config: {}", err);
        else spdlog::set_level(spdlog::level::from_str(next.log_level));
      } catch (const std::exception& e) {
        spdlog::error("reload refused, keeping the running config: {}", e.what());
      }
      continue;
    }
    spdlog::info("{}: draining and stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    gw->stop();
    return 0;
  }
}

}  // namespace fingate::cli
