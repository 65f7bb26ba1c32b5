// A real mosquitto broker for tests: its own config file in a temp dir, a free loopback port,
// stopped by pid. Every test that needs a broker starts its own.
#pragma once

#include "test_support.hpp"

#include <memory>
#include <string>

namespace fingate::test {

struct MosquittoOptions {
  int port = 0;                   // 0: pick a free loopback port (retried when it was taken)
  bool allow_anonymous = true;
  std::string password_file;      // a mosquitto_passwd file (see Mosquitto::writePasswordFile)
  std::string acl_file;           // optional acl_file
  // TLS listener when certfile is set (the listener then speaks TLS only).
  std::string cafile, certfile, keyfile;
  bool require_certificate = false;
  std::string extra;              // more config lines, appended as is
};

class Mosquitto {
 public:
  static constexpr const char* kBinary = "/usr/sbin/mosquitto";

  // Starts the broker and waits until it listens. Throws std::runtime_error (with the broker's
  // log) when it cannot start after a few ports.
  explicit Mosquitto(MosquittoOptions opts = {});
  ~Mosquitto();
  Mosquitto(const Mosquitto&) = delete;
  Mosquitto& operator=(const Mosquitto&) = delete;

  int port() const { return port_; }
  // tcp://127.0.0.1:PORT, or ssl://... for a TLS listener.
  std::string url() const;
  const std::string& dir() const { return dir_; }
  bool running();
  int pid() const;

  // SIGTERM, then SIGKILL if it does not exit in time.
  void stop();
  // SIGKILL: the broker vanishes without a DISCONNECT (sessions and subscriptions are lost).
  void kill9();
  // Starts again on the same port (after stop/kill9). Throws when it cannot listen.
  void restart();

  // The broker's log (all generations).
  std::string log() const;

  // Writes a mosquitto password file with one user (runs mosquitto_passwd -b).
  static void writePasswordFile(const std::string& path, const std::string& user, const std::string& password);
  // True when mosquitto (and mosquitto_passwd) are installed.
  static bool available();

 private:
  bool launch(int port);
  std::string config(int port) const;

  MosquittoOptions opts_;
  std::string dir_;
  int port_ = 0;
  int generation_ = 0;
  std::unique_ptr<Process> proc_;
};

}  // namespace fingate::test
