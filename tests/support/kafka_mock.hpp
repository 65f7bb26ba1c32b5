// librdkafka's mock Kafka cluster for tests: tests/tools/kafka_mock_cluster in its own process
// (build/bin/kafka_mock_cluster), stopped by pid. Every Kafka test starts its own.
#pragma once

#include <string>
#include <vector>

#include "test_support.hpp"

namespace fingate::test {

struct KafkaMockOptions {
  int brokers = 1;
  int partitions = 1;               // for --topic pre-creates and `create`
  std::vector<std::string> topics;  // pre-created with rd_kafka_mock_topic_create
};

class KafkaMock {
 public:
  // Path of the tool next to the fingate binary.
  static std::string binary();
  static bool available();

  // Starts the cluster and waits for its bootstrap line; throws std::runtime_error (with the
  // tool's output) when it does not come up.
  explicit KafkaMock(KafkaMockOptions opts = {});
  ~KafkaMock();
  KafkaMock(const KafkaMock&) = delete;
  KafkaMock& operator=(const KafkaMock&) = delete;

  const std::string& bootstrap() const { return bootstrap_; }
  int pid() const { return pid_; }
  // Sends one command line ("down 2", "up 2", "leader t 0 3", "create t 4") and waits for its
  // answer line; returns it ("ok ..." or "error ..."), "" when none came.
  std::string command(const std::string& line, std::chrono::milliseconds timeout = 5s);
  // SIGTERM (then SIGKILL), bounded. Idempotent.
  void stop();
  std::string log() const { return readFile(log_path_); }

 private:
  int pid_ = -1;
  int stdin_fd_ = -1;
  std::string log_path_;
  std::string bootstrap_;
  size_t answered_ = 0;  // answer lines seen so far (after the bootstrap line)
};

}  // namespace fingate::test
