#include <dlfcn.h>
#include <fingate/plugin_loader.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace fingate {

namespace {
// The size of the first (1.0) descriptor: everything up to and including unsubscribe.
constexpr size_t kMinDescriptorSize = offsetof(fg_plugin, unsubscribe) + sizeof(void*);

PluginHost& hostOf(void* ctx) { return *static_cast<PluginHost*>(ctx); }

void cLog(void* ctx, fg_log_level level, const char* msg) {
  try {
    hostOf(ctx).log(level, msg ? msg : "");
  } catch (...) {
  }
}
fg_status cOnMessage(void* ctx, uint64_t sub_id, const fg_message* msg) {
  if (!msg) return FG_ERR_INVALID_ARG;
  try {
    return hostOf(ctx).onMessage(sub_id, *msg, 0);
  } catch (...) {
    return FG_ERR_INTERNAL;
  }
}
void cOnDelivery(void* ctx, uint64_t id, fg_delivery st) {
  try {
    hostOf(ctx).onDelivery(id, st);
  } catch (...) {
  }
}
void cOnState(void* ctx, fg_state st, const char* detail) {
  try {
    hostOf(ctx).onState(st, detail ? detail : "");
  } catch (...) {
  }
}
void cOnSession(void* ctx, uint64_t session, fg_session_event ev) {
  try {
    hostOf(ctx).onSession(session, ev);
  } catch (...) {
  }
}
fg_status cOnMessageTracked(void* ctx, uint64_t sub_id, const fg_message* msg, uint64_t token) {
  if (!msg) return FG_ERR_INVALID_ARG;
  try {
    return hostOf(ctx).onMessage(sub_id, *msg, token);
  } catch (...) {
    return FG_ERR_INTERNAL;
  }
}
void cOnEvent(void* ctx, const fg_event* ev) {
  if (!ev || ev->struct_size < offsetof(fg_event, detail) + sizeof(ev->detail)) return;
  try {
    hostOf(ctx).onEvent(*ev);
  } catch (...) {
  }
}
fg_status cAuthorize(void* ctx, uint64_t session, fg_str filter, char* reason, size_t reason_len) {
  try {
    std::string why;
    fg_status st = hostOf(ctx).authorizeSubscribe(
        session, filter.len ? std::string_view(filter.data, filter.len) : std::string_view(), why);
    if (st != FG_OK && reason && reason_len) {
      size_t n = std::min(why.size(), reason_len - 1);
      std::memcpy(reason, why.data(), n);
      reason[n] = '\0';
    }
    return st;
  } catch (...) {
    return FG_ERR_INTERNAL;
  }
}
}  // namespace

const char* stateName(fg_state s) {
  switch (s) {
    case FG_STATE_STARTING:
      return "starting";
    case FG_STATE_UP:
      return "up";
    case FG_STATE_DOWN:
      return "down";
    case FG_STATE_FAILED:
      return "failed";
    case FG_STATE_STOPPED:
      return "stopped";
    case FG_STATE_SUBSCRIBED:
      return "subscribed";
    case FG_STATE_RECONNECTED:
      return "reconnected";
    default:
      return "unknown";
  }
}

const char* statusName(fg_status s) {
  switch (s) {
    case FG_OK: return "OK";
    case FG_RETRY: return "RETRY";
    case FG_ERR_INVALID_ARG: return "ERR_INVALID_ARG";
    case FG_ERR_STATE: return "ERR_STATE";
    case FG_ERR_UNAVAILABLE: return "ERR_UNAVAILABLE";
    case FG_ERR_UNSUPPORTED: return "ERR_UNSUPPORTED";
    case FG_ERR_FATAL: return "ERR_FATAL";
    case FG_ERR_INTERNAL: return "ERR_INTERNAL";
    default: return "UNKNOWN_STATUS";
  }
}

std::string pluginPath(const std::string& dir, const std::string& name) {
  return (dir.empty() ? std::string(".") : dir) + "/libfingate-" + name + ".so";
}

PluginLibrary::PluginLibrary(void* handle, const fg_plugin* desc, std::string path)
    : handle_(handle), desc_(desc), path_(std::move(path)) {}

PluginLibrary::~PluginLibrary() {
  if (handle_) dlclose(handle_);
}

std::shared_ptr<PluginLibrary> PluginLibrary::load(const std::string& path, const std::string& expected_name) {
  dlerror();
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    throw PluginError(path + ": cannot load: " + (e ? e : "unknown dlopen error"));
  }
  auto fail = [&](const std::string& why) {
    dlclose(h);
    throw PluginError(path + ": " + why);
  };
  void* sym = dlsym(h, FG_PLUGIN_ENTRY_SYMBOL);
  if (!sym) fail("does not export " FG_PLUGIN_ENTRY_SYMBOL);
  auto entry = reinterpret_cast<fg_plugin_entry_fn>(sym);
  const fg_plugin* d = entry(FG_ABI_VERSION);
  if (!d) fail("refused to serve host ABI " + std::to_string(FG_ABI_VERSION_MAJOR) + "." +
               std::to_string(FG_ABI_VERSION_MINOR) + " (fg_plugin_entry returned NULL)");
  if (FG_ABI_MAJOR(d->abi_version) != FG_ABI_VERSION_MAJOR)
    fail("built for ABI major " + std::to_string(FG_ABI_MAJOR(d->abi_version)) + ", host has " +
         std::to_string(FG_ABI_VERSION_MAJOR));
  if (d->struct_size < kMinDescriptorSize)
    fail("descriptor too short: struct_size " + std::to_string(d->struct_size) + " < " +
         std::to_string(kMinDescriptorSize));
  if (!d->name || !*d->name) fail("descriptor has no name");
  const char* missing = nullptr;
  if (!d->create) missing = "create";
  else if (!d->destroy) missing = "destroy";
  else if (!d->start) missing = "start";
  else if (!d->stop) missing = "stop";
  else if (!d->publish) missing = "publish";
  else if (!d->subscribe) missing = "subscribe";
  else if (!d->unsubscribe) missing = "unsubscribe";
  if (missing) fail(std::string("descriptor lacks the required function ") + missing);
  if (!expected_name.empty() && expected_name != d->name)
    fail("plugin calls itself '" + std::string(d->name) + "', expected '" + expected_name + "'");
  // OBS's rule: copy what the plugin's build has (struct_size) into a zeroed descriptor of the
  // host's size; members the plugin does not know read as NULL, and a descriptor larger than
  // ours (a newer minor) is cut to what we know.
  auto lib = std::shared_ptr<PluginLibrary>(new PluginLibrary(h, d, path));
  std::memset(&lib->copy_, 0, sizeof lib->copy_);
  std::memcpy(&lib->copy_, d, std::min<size_t>(d->struct_size, sizeof lib->copy_));
  lib->desc_ = &lib->copy_;
  return lib;
}

bool PluginLibrary::acceptsKey(std::string_view key) const {
  if (!desc_->config_keys) return false;
  for (const char* const* k = desc_->config_keys; *k; ++k) {
    std::string_view a(*k);
    if (a.empty()) continue;
    if (a == key) return true;
    if (a.size() >= 2 && a.substr(a.size() - 2) == ".*" && key.size() > a.size() - 1 &&
        key.substr(0, a.size() - 1) == a.substr(0, a.size() - 1))
      return true;
  }
  return false;
}

std::vector<std::string> PluginLibrary::configKeys() const {
  std::vector<std::string> out;
  if (desc_->config_keys)
    for (const char* const* k = desc_->config_keys; *k; ++k)
      if (**k) out.emplace_back(*k);
  return out;
}

PluginInstance::PluginInstance(std::shared_ptr<PluginLibrary> lib, PluginHost& host,
                               const std::vector<std::pair<std::string, std::string>>& cfg)
    : lib_(std::move(lib)) {
  api_.struct_size = sizeof(fg_host_api);
  api_.abi_version = FG_ABI_VERSION;
  api_.log = cLog;
  api_.on_message = cOnMessage;
  api_.on_delivery = cOnDelivery;
  api_.on_state = cOnState;
  api_.on_session = cOnSession;
  api_.authorize_subscribe = cAuthorize;
  api_.on_message_tracked = cOnMessageTracked;
  api_.on_event = cOnEvent;
  std::vector<fg_kv> kv;
  kv.reserve(cfg.size());
  for (auto& [k, v] : cfg) kv.push_back(fg_kv{k.c_str(), v.c_str()});
  char err[512] = {0};
  inst_ = lib_->descriptor().create(&api_, &host, kv.data(), kv.size(), err, sizeof err);
  if (!inst_) throw PluginError(err[0] ? err : "create failed without a message");
}

PluginInstance::~PluginInstance() {
  if (inst_) lib_->descriptor().destroy(inst_);
}

fg_status PluginInstance::start() { return lib_->descriptor().start(inst_); }
fg_status PluginInstance::stop(uint32_t timeout_ms) { return lib_->descriptor().stop(inst_, timeout_ms); }
fg_status PluginInstance::publish(const fg_message& msg, uint64_t delivery_id) {
  return lib_->descriptor().publish(inst_, &msg, delivery_id);
}
fg_status PluginInstance::subscribe(std::string_view filter, uint64_t sub_id) {
  return lib_->descriptor().subscribe(inst_, fg_str{filter.data(), filter.size()}, sub_id);
}
fg_status PluginInstance::unsubscribe(uint64_t sub_id) { return lib_->descriptor().unsubscribe(inst_, sub_id); }
bool PluginInstance::hasAck() const { return lib_->descriptor().ack != nullptr; }
void PluginInstance::ack(uint64_t token, fg_outcome outcome) {
  if (auto f = lib_->descriptor().ack) f(inst_, token, outcome);
}
bool PluginInstance::canCloseSession() const { return lib_->descriptor().close_session != nullptr; }
fg_status PluginInstance::closeSession(uint64_t session, const char* reason) {
  auto f = lib_->descriptor().close_session;
  return f ? f(inst_, session, reason) : FG_ERR_UNSUPPORTED;
}

}  // namespace fingate
