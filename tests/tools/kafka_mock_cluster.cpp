// kafka_mock_cluster: librdkafka's mock Kafka cluster (rdkafka_mock.h) in its own process, so
// that tests, benchmarks and people on a laptop have a Kafka wire-protocol broker on loopback.
//
//   kafka_mock_cluster [--brokers N] [--partitions P] [--topic NAME]...
//
// Prints the bootstrap list (host:port,host:port,...) on ONE line on stdout, then runs until
// SIGTERM/SIGINT. Commands on stdin, one per line, each answered with one line:
//   down <broker_id>                          -> ok down <broker_id>
//   up <broker_id>                            -> ok up <broker_id>
//   leader <topic> <partition> <broker_id>    -> ok leader <topic> <partition> <broker_id>
//   create <topic> [partitions]               -> ok create <topic> <partitions>
// (broker ids are 1..N), or "error <what>". End of stdin does not stop it.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

volatile sig_atomic_t g_stop = 0;
void onSignal(int) { g_stop = 1; }

void usage() {
  std::fprintf(stderr, "usage: kafka_mock_cluster [--brokers N] [--partitions P] [--topic NAME]...\n");
  std::exit(2);
}

void answer(const std::string& line) {
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

void command(rd_kafka_mock_cluster_t* mc, const std::string& line, int partitions) {
  std::istringstream in(line);
  std::string verb;
  in >> verb;
  if (verb.empty()) return;
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
  if (verb == "down" || verb == "up") {
    int id = -1;
    if (!(in >> id)) return answer("error usage: " + verb + " <broker_id>");
    err = verb == "down" ? rd_kafka_mock_broker_set_down(mc, id) : rd_kafka_mock_broker_set_up(mc, id);
    if (err) return answer("error " + verb + " " + std::to_string(id) + ": " + rd_kafka_err2str(err));
    return answer("ok " + verb + " " + std::to_string(id));
  }
  if (verb == "leader") {
    std::string topic;
    int part = -1, id = -1;
    if (!(in >> topic >> part >> id)) return answer("error usage: leader <topic> <partition> <broker_id>");
    err = rd_kafka_mock_partition_set_leader(mc, topic.c_str(), part, id);
    if (err) return answer("error leader: " + std::string(rd_kafka_err2str(err)));
    return answer("ok leader " + topic + " " + std::to_string(part) + " " + std::to_string(id));
  }
  if (verb == "create") {
    std::string topic;
    int p = partitions;
    if (!(in >> topic)) return answer("error usage: create <topic> [partitions]");
    in >> p;
    err = rd_kafka_mock_topic_create(mc, topic.c_str(), p, 1);
    if (err) return answer("error create: " + std::string(rd_kafka_err2str(err)));
    return answer("ok create " + topic + " " + std::to_string(p));
  }
  answer("error unknown command '" + verb + "' (down, up, leader, create)");
}

}  // namespace

int main(int argc, char** argv) {
  int brokers = 1, partitions = 1;
  std::vector<std::string> topics;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage();
    if (a == "--brokers")
      brokers = std::atoi(argv[++i]);
    else if (a == "--partitions")
      partitions = std::atoi(argv[++i]);
    else if (a == "--topic")
      topics.push_back(argv[++i]);
    else
      usage();
  }
  if (brokers < 1 || brokers > 32 || partitions < 1 || partitions > 1000) usage();
  struct sigaction sa {};
  sa.sa_handler = onSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    std::fprintf(stderr, "kafka_mock_cluster: %s\n", err);
    return 1;
  }
  rd_kafka_mock_cluster_t* mc = rd_kafka_mock_cluster_new(rk, brokers);
  if (!mc) {
    std::fprintf(stderr, "kafka_mock_cluster: cannot create the mock cluster\n");
    return 1;
  }
  for (auto& t : topics) {
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, t.c_str(), partitions, brokers < 3 ? brokers : 3);
    if (e) {
      std::fprintf(stderr, "kafka_mock_cluster: topic %s: %s\n", t.c_str(), rd_kafka_err2str(e));
      return 1;
    }
  }
  answer(rd_kafka_mock_cluster_bootstraps(mc));

  std::string buf;
  bool eof = false;
  while (!g_stop) {
    if (eof) {
      ::poll(nullptr, 0, 200);
      continue;
    }
    pollfd p{0, POLLIN, 0};
    int n = ::poll(&p, 1, 200);
    if (n <= 0) continue;
    char chunk[1024];
    ssize_t r = ::read(0, chunk, sizeof chunk);
    if (r <= 0) {
      eof = true;
      continue;
    }
    buf.append(chunk, static_cast<size_t>(r));
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      command(mc, buf.substr(0, nl), partitions);
      buf.erase(0, nl + 1);
    }
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
