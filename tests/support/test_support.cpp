#include "test_support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace fingate::test {

int connectLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

int freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return 0;
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string tempDir(const std::string& name) {
  static std::atomic<int> seq{0};
  std::string dir = std::string(FINGATE_TEST_BUILD_DIR) + "/tmp/" + name + "-" + std::to_string(::getpid()) + "-" +
                    std::to_string(seq++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

bool waitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

Process::Process(const std::vector<std::string>& argv, const std::string& log_path,
                 const std::map<std::string, std::string>& env)
    : log_path_(log_path) {
  // Everything the child needs is built before fork(): between fork and exec only
  // async-signal-safe calls (other threads of this process may hold malloc's locks).
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string kv(*e);
    if (!env.count(kv.substr(0, kv.find('=')))) env_strings.push_back(std::move(kv));
  }
  for (auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    // Dies with the test process even when that one is killed or aborts (a sanitizer's
    // halt_on_error skips every destructor): no orphaned brokers or gateways.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::setpgid(0, 0);
    ::execve(args[0], args.data(), envp.data());
    static const char msg[] = "execve failed: ";
    (void)!::write(2, msg, sizeof msg - 1);
    (void)!::write(2, args[0], std::strlen(args[0]));
    (void)!::write(2, "\n", 1);
    ::_exit(127);
  }
}

Process::~Process() {
  if (pid_ > 0 && !exited_) {
    ::kill(pid_, SIGKILL);
    int st;
    ::waitpid(pid_, &st, 0);
  }
}

bool Process::running() {
  if (exited_ || pid_ <= 0) return false;
  int st;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    exited_ = true;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

int Process::wait(std::chrono::milliseconds timeout) {
  if (!waitFor([&] { return !running(); }, timeout)) return -1;
  return status_;
}

int Process::stop(int sig, std::chrono::milliseconds timeout) {
  if (running()) ::kill(pid_, sig);
  return wait(timeout);
}

std::optional<std::string> Process::waitForLog(const std::string& needle, std::chrono::milliseconds timeout) {
  std::optional<std::string> found;
  waitFor(
      [&] {
        std::istringstream in(log());
        std::string line;
        while (std::getline(in, line))
          if (line.find(needle) != std::string::npos) {
            found = line;
            return true;
          }
        return false;
      },
      timeout);
  return found;
}

int portFromLine(const std::string& line) {
  static const std::regex re(R"(listening on [^ ]*:(\d+))");
  std::smatch m;
  if (std::regex_search(line, m, re)) return std::stoi(m[1]);
  return 0;
}

HttpResponse httpGet(int port, const std::string& path, std::chrono::milliseconds timeout) {
  return httpRequest(port, "GET", path, "", timeout);
}

HttpResponse httpRequest(int port, const std::string& method, const std::string& path, const std::string& extra_headers,
                         std::chrono::milliseconds timeout) {
  std::vector<std::string> headers{"Host: 127.0.0.1"};
  for (size_t pos = 0; pos < extra_headers.size();) {
    size_t eol = extra_headers.find("\r\n", pos);
    if (eol == std::string::npos) eol = extra_headers.size();
    if (eol > pos) headers.push_back(extra_headers.substr(pos, eol - pos));
    pos = eol + 2;
  }
  if (method != "GET") headers.push_back("Content-Length: 0");
  return httpExchange(port, method, path, headers, false, timeout);
}

HttpResponse httpExchange(int port, const std::string& method, const std::string& path,
                          const std::vector<std::string>& headers, bool http10, std::chrono::milliseconds timeout) {
  HttpResponse r;
  int fd = connectLoopback(port);
  if (fd < 0) return r;
  std::string req = method + " " + path + (http10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
  for (auto& h : headers) req += h + "\r\n";
  req += "Connection: close\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string resp;
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[8192];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (resp.rfind("HTTP/1.", 0) != 0 || resp.size() < 12) return r;
  r.status = std::stoi(resp.substr(9, 3));
  auto hdr_end = resp.find("\r\n\r\n");
  r.head = resp.substr(0, hdr_end);
  if (hdr_end == std::string::npos) return r;
  std::string body = resp.substr(hdr_end + 4);
  // Chunked bodies (httplib uses Content-Length for these endpoints, but be safe).
  std::string lower = r.head;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("transfer-encoding: chunked") != std::string::npos) {
    std::string out;
    size_t pos = 0;
    while (pos < body.size()) {
      size_t eol = body.find("\r\n", pos);
      if (eol == std::string::npos) break;
      size_t len = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
      if (len == 0) break;
      out += body.substr(eol + 2, len);
      pos = eol + 2 + len + 2;
    }
    body = out;
  }
  r.body = body;
  return r;
}

// ---- FrameClient -----------------------------------------------------------------------

FrameClient::FrameClient(int port, const std::string& host) { connect(port, host); }
FrameClient::~FrameClient() { close(); }

bool FrameClient::connect(int port, const std::string& host) {
  close();
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd_);
    fd_ = -1;
    return false;
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  peer_closed_ = false;
  buf_.clear();
  pending_.clear();
  return true;
}

void FrameClient::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string FrameClient::encode(uint8_t kind, const std::string& topic, const std::string& payload) {
  uint32_t rest = static_cast<uint32_t>(1 + 2 + topic.size() + payload.size());
  std::string out;
  out.reserve(4 + rest);
  out.push_back(static_cast<char>(rest >> 24));
  out.push_back(static_cast<char>(rest >> 16));
  out.push_back(static_cast<char>(rest >> 8));
  out.push_back(static_cast<char>(rest));
  out.push_back(static_cast<char>(kind));
  out.push_back(static_cast<char>(topic.size() >> 8));
  out.push_back(static_cast<char>(topic.size()));
  out += topic;
  out += payload;
  return out;
}

bool FrameClient::sendRaw(const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

bool FrameClient::send(uint8_t kind, const std::string& topic, const std::string& payload) {
  return fd_ >= 0 && sendRaw(encode(kind, topic, payload));
}

bool FrameClient::readSome(std::chrono::milliseconds timeout) {
  if (fd_ < 0 || peer_closed_) return false;
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
  char tmp[65536];
  ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
  if (n <= 0) {
    peer_closed_ = true;
    return false;
  }
  buf_.append(tmp, static_cast<size_t>(n));
  return true;
}

std::optional<FrameClient::Frame> FrameClient::popFrame() {
  if (buf_.size() < 4) return std::nullopt;
  auto u = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(buf_[i])); };
  uint32_t rest = u(0) << 24 | u(1) << 16 | u(2) << 8 | u(3);
  if (buf_.size() < 4 + rest || rest < 3) return std::nullopt;
  Frame f;
  f.kind = static_cast<uint8_t>(buf_[4]);
  uint16_t tl = static_cast<uint16_t>(u(5) << 8 | u(6));
  if (3u + tl > rest) return std::nullopt;
  f.topic = buf_.substr(7, tl);
  f.payload = buf_.substr(7 + tl, rest - 3 - tl);
  buf_.erase(0, 4 + rest);
  return f;
}

std::optional<FrameClient::Frame> FrameClient::recv(std::chrono::milliseconds timeout) {
  if (!pending_.empty()) {
    Frame f = std::move(pending_.front());
    pending_.pop_front();
    return f;
  }
  auto end = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (auto f = popFrame()) return f;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    if (!readSome(left) && peer_closed_) return popFrame();
  }
}

bool FrameClient::barrier(std::chrono::milliseconds timeout) {
  std::string token = "barrier-" + std::to_string(++ping_seq_);
  if (!send(Ping, "", token)) return false;
  auto end = std::chrono::steady_clock::now() + timeout;
  std::deque<Frame> kept;
  bool ok = false;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    std::optional<Frame> f;
    if (auto p = popFrame())
      f = p;
    else if (readSome(left))
      continue;
    else if (peer_closed_)
      f = popFrame();
    if (!f) {
      if (peer_closed_) break;
      continue;
    }
    if (f->kind == Pong && f->payload == token) {
      ok = true;
      break;
    }
    kept.push_back(std::move(*f));
  }
  for (auto& f : kept) pending_.push_back(std::move(f));
  return ok;
}

bool FrameClient::waitClosed(std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (!peer_closed_) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    readSome(left);
    while (auto f = popFrame()) pending_.push_back(std::move(*f));
  }
  while (auto f = popFrame()) pending_.push_back(std::move(*f));
  return true;
}

// ---- RecordingHost ---------------------------------------------------------------------

void RecordingHost::log(fg_log_level level, std::string_view msg) {
  std::lock_guard lk(mu_);
  logs_.push_back(std::to_string(level) + " " + std::string(msg));
}

fg_status RecordingHost::onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) {
  if (retry_budget.load() > 0) {
    retry_budget--;
    return FG_RETRY;
  }
  Msg m{sub_id,
        std::string(msg.topic.data, msg.topic.len),
        std::string(msg.payload.data, msg.payload.len),
        msg.session,
        {},
        token};
  for (size_t i = 0; i < msg.header_count; ++i)
    m.headers.emplace_back(std::string(msg.headers[i].key.data, msg.headers[i].key.len),
                           std::string(msg.headers[i].value.data, msg.headers[i].value.len));
  {
    std::lock_guard lk(mu_);
    msgs_.push_back(std::move(m));
  }
  cv_.notify_all();
  return FG_OK;
}

void RecordingHost::onEvent(const fg_event& ev) {
  {
    std::lock_guard lk(mu_);
    events_.push_back(Event{ev.kind, ev.sub_id, ev.session, ev.status, ev.flags, ev.detail ? ev.detail : ""});
  }
  cv_.notify_all();
}

std::vector<RecordingHost::Event> RecordingHost::events() {
  std::lock_guard lk(mu_);
  return events_;
}

bool RecordingHost::waitEvent(const std::function<bool(const Event&)>& pred, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] {
    for (auto& e : events_)
      if (pred(e)) return true;
    return false;
  });
}

void RecordingHost::onDelivery(uint64_t delivery_id, fg_delivery status) {
  {
    std::lock_guard lk(mu_);
    deliveries_[delivery_id] = status;
  }
  cv_.notify_all();
}

void RecordingHost::onState(fg_state state, std::string_view detail) {
  {
    std::lock_guard lk(mu_);
    states_[state] = std::string(detail);
  }
  cv_.notify_all();
}

void RecordingHost::onSession(uint64_t session, fg_session_event event) {
  {
    std::lock_guard lk(mu_);
    sessions_.emplace_back(session, event);
  }
  cv_.notify_all();
}

fg_status RecordingHost::authorizeSubscribe(uint64_t session, std::string_view filter, std::string& reason) {
  if (authorize) return authorize(session, filter, reason);
  return FG_OK;
}

std::optional<RecordingHost::Msg> RecordingHost::next(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  if (!cv_.wait_for(lk, timeout, [&] { return !msgs_.empty(); })) return std::nullopt;
  Msg m = std::move(msgs_.front());
  msgs_.pop_front();
  return m;
}

bool RecordingHost::waitState(fg_state state, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return states_.count(state) != 0; });
}

std::string RecordingHost::stateDetail(fg_state state) {
  std::lock_guard lk(mu_);
  auto it = states_.find(state);
  return it == states_.end() ? "" : it->second;
}

std::vector<std::pair<uint64_t, fg_session_event>> RecordingHost::sessions() {
  std::lock_guard lk(mu_);
  return sessions_;
}

std::map<uint64_t, fg_delivery> RecordingHost::deliveries() {
  std::lock_guard lk(mu_);
  return deliveries_;
}

std::vector<std::string> RecordingHost::logs() {
  std::lock_guard lk(mu_);
  return logs_;
}

std::shared_ptr<PluginLibrary> loadBuiltPlugin(const std::string& name) {
  return PluginLibrary::load(pluginPath(FINGATE_PLUGINS_DIR, name), name);
}

namespace {
// Fixtures that were asked for and are missing. Kept (not aborted on) so that test discovery
// always works; the environment below then fails every test that runs, saying what is missing.
std::vector<std::string>& missingFixtures() {
  static std::vector<std::string> v;
  return v;
}
std::mutex& missingMu() {
  static std::mutex m;
  return m;
}
class FixtureCheck : public ::testing::Environment {
 public:
  void SetUp() override {
    std::lock_guard lk(missingMu());
    for (auto& f : missingFixtures())
      ADD_FAILURE() << "test fixture missing: " << f
                    << " (the protocol vectors live in tests/data/vectors of the repository)";
  }
};
[[maybe_unused]] const bool kFixtureCheck = (::testing::AddGlobalTestEnvironment(new FixtureCheck), true);
}  // namespace

std::string vectorBytes(const std::string& file) {
  std::string path = std::string(FINGATE_VECTORS_DIR) + "/" + file;
  if (!std::filesystem::exists(path)) {
    std::lock_guard lk(missingMu());
    missingFixtures().push_back(path);
    return "";
  }
  std::string s = readFile(path);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::vector<Vector> loadVectors() {
  std::vector<Vector> out;
  std::string manifest_path = std::string(FINGATE_VECTORS_DIR) + "/MANIFEST.json";
  if (!std::filesystem::exists(manifest_path)) {
    ADD_FAILURE() << "test fixture missing: " << manifest_path;
    return out;
  }
  YAML::Node manifest = YAML::LoadFile(manifest_path);
  for (const auto& n : manifest) {
    Vector v;
    v.file = n["file"].as<std::string>();
    v.topic = n["topic"].as<std::string>();
    v.type = n["type"].as<std::string>();
    v.bytes = vectorBytes(v.file);
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace fingate::test
