#include "mosquitto.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>
#include <thread>

namespace fingate::test {

namespace {

bool canConnect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

bool Mosquitto::available() { return ::access(kBinary, X_OK) == 0 && ::access("/usr/bin/mosquitto_passwd", X_OK) == 0; }

void Mosquitto::writePasswordFile(const std::string& path, const std::string& user, const std::string& password) {
  writeFile(path, "");
  Process p({"/usr/bin/mosquitto_passwd", "-b", path, user, password}, path + ".log");
  if (p.wait(10s) != 0) throw std::runtime_error("mosquitto_passwd failed: " + p.log());
}

Mosquitto::Mosquitto(MosquittoOptions opts) : opts_(std::move(opts)) {
  dir_ = tempDir("mosquitto");
  constexpr int kAttempts = 5;
  for (int i = 0; i < kAttempts; ++i) {
    int port = opts_.port ? opts_.port : freePort();
    if (launch(port)) {
      port_ = port;
      return;
    }
    if (opts_.port) {
      // A fixed port: maybe still held for a moment; try the same one again.
      std::this_thread::sleep_for(200ms);
    }
  }
  throw std::runtime_error("mosquitto did not start; log:\n" + log());
}

Mosquitto::~Mosquitto() { stop(); }

std::string Mosquitto::config(int port) const {
  std::string c;
  c += "# written by fingate's test support\n";
  c += "user root\n";
  c += "persistence false\n";
  c += "log_dest stderr\n";
  c += "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
  c += "connection_messages true\n";
  c += std::string("allow_anonymous ") + (opts_.allow_anonymous ? "true" : "false") + "\n";
  if (!opts_.password_file.empty()) c += "password_file " + opts_.password_file + "\n";
  if (!opts_.acl_file.empty()) c += "acl_file " + opts_.acl_file + "\n";
  c += "listener " + std::to_string(port) + " 127.0.0.1\n";
  if (!opts_.certfile.empty()) {
    if (!opts_.cafile.empty()) c += "cafile " + opts_.cafile + "\n";
    c += "certfile " + opts_.certfile + "\n";
    c += "keyfile " + opts_.keyfile + "\n";
    c += std::string("require_certificate ") + (opts_.require_certificate ? "true" : "false") + "\n";
  }
  c += opts_.extra;
  if (!c.empty() && c.back() != '\n') c += "\n";
  return c;
}

bool Mosquitto::launch(int port) {
  ++generation_;
  std::string conf = dir_ + "/mosquitto.conf";
  writeFile(conf, config(port));
  std::string logp = dir_ + "/mosquitto-" + std::to_string(generation_) + ".log";
  proc_ = std::make_unique<Process>(std::vector<std::string>{kBinary, "-c", conf}, logp);
  // Ready = our pid is alive, it says it runs, and the port accepts connections.
  bool ok = waitFor(
      [&] {
        if (!proc_->running()) return true;  // exited: decide below
        return proc_->log().find(" running") != std::string::npos && canConnect(port);
      },
      10s);
  if (ok && proc_->running() && canConnect(port)) return true;
  proc_->stop(SIGKILL, 5s);
  return false;
}

std::string Mosquitto::url() const {
  return std::string(opts_.certfile.empty() ? "tcp" : "ssl") + "://127.0.0.1:" + std::to_string(port_);
}

bool Mosquitto::running() { return proc_ && proc_->running(); }

int Mosquitto::pid() const { return proc_ ? proc_->pid() : -1; }

void Mosquitto::stop() {
  if (!proc_) return;
  if (proc_->stop(SIGTERM, 5s) == -1) proc_->stop(SIGKILL, 5s);
}

void Mosquitto::kill9() {
  if (proc_) proc_->stop(SIGKILL, 5s);
}

void Mosquitto::restart() {
  stop();
  for (int i = 0; i < 20; ++i) {
    if (launch(port_)) return;
    std::this_thread::sleep_for(200ms);
  }
  throw std::runtime_error("mosquitto did not restart on port " + std::to_string(port_) + "; log:\n" + log());
}

std::string Mosquitto::log() const {
  std::string all;
  for (int g = 1; g <= generation_; ++g) all += readFile(dir_ + "/mosquitto-" + std::to_string(g) + ".log");
  return all;
}

}  // namespace fingate::test
