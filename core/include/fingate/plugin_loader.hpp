// Loading transport plugins (dlopen) and driving instances through the C ABI.
#pragma once

#include <fingate/plugin.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fingate {

// One-line reason why a plugin could not be loaded or an instance not created.
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "<dir>/libfingate-<name>.so"
std::string pluginPath(const std::string& dir, const std::string& name);

// A loaded plugin library. Checks on load: the file opens (RTLD_NOW|RTLD_LOCAL), exports
// fg_plugin_entry, returns a descriptor, same ABI major, struct_size at least the v1 size,
// every required function present, name equals expected_name. On failure: dlclose and
// PluginError("<path>: <reason>").
class PluginLibrary {
 public:
  static std::shared_ptr<PluginLibrary> load(const std::string& path, const std::string& expected_name);
  ~PluginLibrary();
  PluginLibrary(const PluginLibrary&) = delete;
  PluginLibrary& operator=(const PluginLibrary&) = delete;

  const fg_plugin& descriptor() const { return *desc_; }
  const std::string& path() const { return path_; }
  std::string name() const { return desc_->name; }
  std::string version() const { return desc_->version ? desc_->version : ""; }
  uint32_t capabilities() const { return desc_->capabilities; }
  // True when the descriptor's config_keys accept key (exact, or a "prefix.*" entry).
  bool acceptsKey(std::string_view key) const;
  std::vector<std::string> configKeys() const;

 private:
  PluginLibrary(void* handle, const fg_plugin* desc, std::string path);
  void* handle_;
  const fg_plugin* desc_;
  fg_plugin copy_{};  // the plugin's descriptor copied by its struct_size (members it lacks = 0)
  std::string path_;
};

// The host side of one instance, as C++ virtuals (thread-safe implementations required:
// plugins call them from their own threads).
class PluginHost {
 public:
  virtual ~PluginHost() = default;
  virtual void log(fg_log_level level, std::string_view msg) = 0;
  // token != 0 (ABI 1.1 on_message_tracked): the host calls PluginInstance::ack(token, ...) once.
  virtual fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) = 0;
  virtual void onEvent(const fg_event& /*ev*/) {}
  virtual void onDelivery(uint64_t /*delivery_id*/, fg_delivery /*status*/) {}
  virtual void onState(fg_state /*state*/, std::string_view /*detail*/) {}
  virtual void onSession(uint64_t /*session*/, fg_session_event /*event*/) {}
  virtual fg_status authorizeSubscribe(uint64_t /*session*/, std::string_view /*filter*/, std::string& /*reason*/) {
    return FG_OK;
  }
};

// One plugin instance. create() in the constructor (PluginError with the plugin's message
// on failure); destroy() in the destructor. The host must outlive the instance.
class PluginInstance {
 public:
  PluginInstance(std::shared_ptr<PluginLibrary> lib, PluginHost& host,
                 const std::vector<std::pair<std::string, std::string>>& cfg);
  ~PluginInstance();
  PluginInstance(const PluginInstance&) = delete;
  PluginInstance& operator=(const PluginInstance&) = delete;

  fg_status start();
  fg_status stop(uint32_t timeout_ms);
  fg_status publish(const fg_message& msg, uint64_t delivery_id = 0);
  fg_status subscribe(std::string_view filter, uint64_t sub_id);
  fg_status unsubscribe(uint64_t sub_id);
  // ABI 1.1 members; absent ones are no-ops (hasAck() / canCloseSession() say which).
  bool hasAck() const;
  void ack(uint64_t token, fg_outcome outcome);
  bool canCloseSession() const;
  fg_status closeSession(uint64_t session, const char* reason);
  const PluginLibrary& library() const { return *lib_; }

 private:
  std::shared_ptr<PluginLibrary> lib_;
  fg_host_api api_{};
  fg_instance* inst_ = nullptr;
};

const char* statusName(fg_status s);
const char* stateName(fg_state s);  // "up", "down", ...

}  // namespace fingate
