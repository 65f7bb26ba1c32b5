#include "kafka_mock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>
#include <stdexcept>
#include <thread>

namespace fingate::test {

namespace {
std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l)) out.push_back(l);
  return out;
}
}  // namespace

std::string KafkaMock::binary() {
  std::string bin = FINGATE_BIN;
  return bin.substr(0, bin.rfind('/')) + "/kafka_mock_cluster";
}

bool KafkaMock::available() { return ::access(binary().c_str(), X_OK) == 0; }

KafkaMock::KafkaMock(KafkaMockOptions opts) {
  std::string dir = tempDir("kafka-mock");
  log_path_ = dir + "/kafka_mock_cluster.log";
  std::vector<std::string> argv = {binary(), "--brokers", std::to_string(opts.brokers), "--partitions",
                                   std::to_string(opts.partitions)};
  for (auto& t : opts.topics) {
    argv.push_back("--topic");
    argv.push_back(t);
  }
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    ::dup2(p[0], 0);
    ::setpgid(0, 0);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(p[0]);
  stdin_fd_ = p[1];
  bool up = waitFor(
      [&] {
        auto ls = lines(log());
        for (auto& l : ls)
          if (l.find("127.0.0.1:") == 0) {
            bootstrap_ = l;
            return true;
          }
        int st = 0;
        return ::waitpid(pid_, &st, WNOHANG) == pid_;  // exited: give up
      },
      10s);
  if (!up || bootstrap_.empty()) {
    std::string out = log();
    stop();
    throw std::runtime_error("kafka_mock_cluster did not start: " + out);
  }
}

KafkaMock::~KafkaMock() { stop(); }

std::string KafkaMock::command(const std::string& line, std::chrono::milliseconds timeout) {
  std::string l = line + "\n";
  if (stdin_fd_ < 0 || ::write(stdin_fd_, l.data(), l.size()) != static_cast<ssize_t>(l.size())) return "";
  std::string got;
  waitFor(
      [&] {
        std::vector<std::string> answers;
        for (auto& x : lines(log()))
          if (x.rfind("ok ", 0) == 0 || x.rfind("error ", 0) == 0) answers.push_back(x);
        if (answers.size() <= answered_) return false;
        got = answers[answered_];
        ++answered_;
        return true;
      },
      timeout);
  return got;
}

void KafkaMock::stop() {
  if (stdin_fd_ >= 0) {
    ::close(stdin_fd_);
    stdin_fd_ = -1;
  }
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  int st = 0;
  bool gone = waitFor([&] { return ::waitpid(pid_, &st, WNOHANG) == pid_; }, 5s);
  if (!gone) {
    ::kill(pid_, SIGKILL);
    waitFor([&] { return ::waitpid(pid_, &st, WNOHANG) == pid_; }, 5s);
  }
  pid_ = -1;
}

}  // namespace fingate::test
