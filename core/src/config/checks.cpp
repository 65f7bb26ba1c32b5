// checkConfigForRun: what `fingate run` would refuse once it starts binding ports, opening TLS
// files and writing its state, found beforehand by `fingate validate` (file:line:col, exit 2).
// Nothing here binds, creates or writes anything.
#include <fingate/config.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace fingate {

namespace {

std::string lowerCase(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string lastPart(const std::string& key) {
  size_t dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ---- listeners ----------------------------------------------------------------------------

struct Listener {
  std::string what;     // "endpoints.fins.listen" or "admin.listen"
  std::string address;  // as written
  std::string host;     // normalised: lower case, no brackets, localhost = 127.0.0.1, "*" = wildcard
  unsigned port = 0;
  Mark mark;
};

bool wildcardHost(const std::string& h) {
  return h.empty() || h == "*" || h == "0.0.0.0" || h == "::" || h == "0:0:0:0:0:0:0:0";
}

// host:port (IPv6 as [..]:port; "*" as a port means any, i.e. 0). False when it does not read
// as one: the plugin reports that itself, with its own message.
bool parseHostPort(std::string_view v, std::string& host, unsigned& port) {
  size_t colon = v.rfind(':');
  if (colon == std::string_view::npos) return false;
  std::string h(v.substr(0, colon));
  std::string_view p = v.substr(colon + 1);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (p == "*") {
    port = 0;
  } else {
    if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string_view::npos) return false;
    port = static_cast<unsigned>(std::stoul(std::string(p)));
    if (port > 65535) return false;
  }
  host = lowerCase(h);
  while (!host.empty() && host.back() == '.') host.pop_back();
  if (host == "localhost") host = "127.0.0.1";
  return true;
}

std::vector<Listener> listeners(const Config& cfg) {
  std::vector<Listener> out;
  if (!cfg.admin.listen.empty()) {
    Listener l{"admin.listen", cfg.admin.listen, "", 0, cfg.admin.mark};
    if (parseHostPort(cfg.admin.listen, l.host, l.port)) out.push_back(l);
  }
  for (const EndpointConfig& e : cfg.endpoints) {
    for (const KeyValue& o : e.options) {
      std::string_view v = o.value;
      if (o.key == "listen") {
        // tcp, http (and any plugin that listens on host:port)
      } else if (o.key == "bind" && e.plugin == "zmq") {
        if (v.rfind("tcp://", 0) != 0) continue;  // ipc://, inproc://: no port
        v.remove_prefix(6);
      } else {
        continue;
      }
      Listener l{"endpoints." + e.name + "." + o.key, o.value, "", 0, o.mark};
      if (parseHostPort(v, l.host, l.port)) out.push_back(l);
    }
  }
  return out;
}

bool before(Mark a, Mark b) { return a.line < b.line || (a.line == b.line && a.column < b.column); }

void checkListeners(const Config& cfg) {
  std::vector<Listener> ls = listeners(cfg);
  for (size_t i = 0; i < ls.size(); ++i) {
    for (size_t j = i + 1; j < ls.size(); ++j) {
      const Listener* a = &ls[i];
      const Listener* b = &ls[j];
      if (a->port == 0 || a->port != b->port) continue;
      if (a->host != b->host && !wildcardHost(a->host) && !wildcardHost(b->host)) continue;
      if (before(b->mark, a->mark)) std::swap(a, b);  // report at the one written last
      throw ConfigError(cfg.file, b->mark,
                        b->what + ": " + b->address + " is also where " + a->what + " listens (" + a->address +
                            (a->mark.line ? ", line " + std::to_string(a->mark.line) : std::string()) +
                            "): two listeners cannot share an address and port (a wildcard host such as 0.0.0.0 "
                            "takes the port on every address)");
    }
  }
}

// ---- TLS files ----------------------------------------------------------------------------

bool isTlsFileKey(const std::string& key) {
  if (key.rfind("tls.", 0) != 0) return false;
  std::string last = lastPart(key);
  return endsWith(last, "_file") || last == "ca" || last == "cert" || last == "key";
}

bool falseValue(const std::string& v) {
  for (const char* f : {"false", "False", "FALSE", "no", "off", "0"})
    if (v == f) return true;
  return false;
}

void checkTlsFiles(const Config& cfg) {
  for (const EndpointConfig& e : cfg.endpoints) {
    bool tls_off = false;
    for (const KeyValue& o : e.options)
      if (o.key == "tls.enabled" && falseValue(o.value)) tls_off = true;
    if (tls_off) continue;  // the files are not used
    for (const KeyValue& o : e.options) {
      if (!isTlsFileKey(o.key) || o.value.empty()) continue;
      const std::string what = "endpoints." + e.name + "." + o.key;
      struct stat st{};
      if (::stat(o.value.c_str(), &st) != 0)
        throw ConfigError(cfg.file, o.mark, what + ": cannot read '" + o.value + "': " + std::strerror(errno));
      if (!S_ISREG(st.st_mode))
        throw ConfigError(cfg.file, o.mark, what + ": '" + o.value + "' is not a file");
      int fd = ::open(o.value.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw ConfigError(cfg.file, o.mark, what + ": cannot read '" + o.value + "': " + std::strerror(errno));
      ::close(fd);
    }
  }
}

// ---- state_dir ----------------------------------------------------------------------------

void checkStateDir(const Config& cfg) {
  if (cfg.state_dir.empty()) return;
  const std::string& d = cfg.state_dir;
  auto fail = [&](const std::string& msg) { throw ConfigError(cfg.file, cfg.state_dir_mark, "state_dir: " + msg); };
  struct stat st{};
  if (::stat(d.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) fail("'" + d + "' exists and is not a directory");
    if (::access(d.c_str(), W_OK | X_OK) != 0)
      fail("cannot write in '" + d + "': " + std::strerror(errno) + " (the gateway keeps bindings.json there)");
    return;
  }
  if (errno != ENOENT && errno != ENOTDIR) fail("cannot use '" + d + "': " + std::strerror(errno));
  // It will be created: the nearest existing ancestor must be a directory we can write in.
  std::filesystem::path p = std::filesystem::absolute(std::filesystem::path(d)).lexically_normal();
  while (p.has_relative_path() && p.filename().empty()) p = p.parent_path();  // trailing '/'
  for (std::filesystem::path up = p.parent_path();; up = up.parent_path()) {
    struct stat ps{};
    if (::stat(up.c_str(), &ps) == 0) {
      if (!S_ISDIR(ps.st_mode)) fail("cannot create '" + d + "': '" + up.string() + "' is not a directory");
      if (::access(up.c_str(), W_OK | X_OK) != 0)
        fail("cannot create '" + d + "': '" + up.string() + "' is not writable (" + std::strerror(errno) + ")");
      return;
    }
    if (errno != ENOENT && errno != ENOTDIR)
      fail("cannot create '" + d + "': '" + up.string() + "': " + std::strerror(errno));
    if (up == up.parent_path()) return;
  }
}

// ---- credentials in URLs ------------------------------------------------------------------

bool schemeChar(char c, bool first) {
  bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return first ? alpha : alpha || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

// scheme://[userinfo@]host...: where the user-info is, as [begin, at); false when there is none.
bool findUserinfo(const std::string& v, size_t& begin, size_t& at) {
  size_t sep = v.find("://");
  if (sep == std::string::npos || sep == 0) return false;
  for (size_t i = 0; i < sep; ++i)
    if (!schemeChar(v[i], i == 0)) return false;
  begin = sep + 3;
  size_t end = v.find_first_of("/?#", begin);
  if (end == std::string::npos) end = v.size();
  size_t a = v.rfind('@', end == 0 ? 0 : end - 1);
  if (a == std::string::npos || a < begin) return false;
  at = a;
  return true;
}

void checkUrlCredentials(const Config& cfg) {
  for (const EndpointConfig& e : cfg.endpoints) {
    for (const KeyValue& o : e.options) {
      size_t begin = 0, at = 0;
      if (!findUserinfo(o.value, begin, at)) continue;
      std::string userinfo = o.value.substr(begin, at - begin);
      size_t colon = userinfo.find(':');
      std::string shown = o.value.substr(0, begin) + (colon == std::string::npos ? "***" : userinfo.substr(0, colon) + ":***") +
                          o.value.substr(at);
      throw ConfigError(cfg.file, o.mark,
                        "endpoints." + e.name + "." + o.key + ": credentials in the URL's user-info (" + shown +
                            "): give them in the username and password keys instead (password: ${ENV_NAME} "
                            "keeps the secret out of the file), and the URL as scheme://host:port");
    }
  }
}

}  // namespace

void checkConfigForRun(const Config& cfg) {
  checkUrlCredentials(cfg);
  checkListeners(cfg);
  checkTlsFiles(cfg);
  checkStateDir(cfg);
}

}  // namespace fingate
