// Shared test support: real sockets, real child processes, no mocks of real components.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <fingate/plugin_loader.hpp>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace fingate::test {

using namespace std::chrono_literals;

// A loopback TCP port that was free a moment ago (bind port 0, read it, close).
// Prefer letting the component under test bind port 0 itself and report the port.
int freePort();

// Reads a whole file; empty string if it cannot.
std::string readFile(const std::string& path);
void writeFile(const std::string& path, const std::string& text);
// A fresh empty directory under the test build dir.
std::string tempDir(const std::string& name);
// A TCP connection to 127.0.0.1:port (blocking socket), or -1.
int connectLoopback(int port);

// Polls cond every 10 ms until it is true or timeout passes. Returns the last value.
bool waitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 10s);

// A child process (fork/exec), stdout+stderr to a log file, killed by pid in the destructor.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& log_path,
          const std::map<std::string, std::string>& env = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  int pid() const { return pid_; }
  bool running();
  // Sends sig and waits (bounded) for the exit; returns the exit status (128+sig if signalled), -1 on timeout.
  int stop(int sig = 15, std::chrono::milliseconds timeout = 10s);
  // Waits for exit without signalling; -1 on timeout.
  int wait(std::chrono::milliseconds timeout = 10s);
  std::string log() const { return readFile(log_path_); }
  // Waits until the log contains `needle`; returns the line that contains it.
  std::optional<std::string> waitForLog(const std::string& needle, std::chrono::milliseconds timeout = 10s);
  const std::string& logPath() const { return log_path_; }

 private:
  int pid_ = -1;
  int status_ = -1;
  bool exited_ = false;
  std::string log_path_;
};

// A plain HTTP/1.1 GET to 127.0.0.1:port (Connection: close). status 0 = no answer.
struct HttpResponse {
  int status = 0;    // 0 = no answer (refused / closed)
  std::string head;  // status line and headers
  std::string body;
};
HttpResponse httpGet(int port, const std::string& path, std::chrono::milliseconds timeout = 5s);
// Any method; extra_headers are whole "Name: value\r\n" lines (Host: 127.0.0.1 is sent first).
HttpResponse httpRequest(int port, const std::string& method, const std::string& path,
                         const std::string& extra_headers = "", std::chrono::milliseconds timeout = 5s);
// One request with exactly these header lines (none added but Connection: close), HTTP/1.1 or 1.0.
HttpResponse httpExchange(int port, const std::string& method, const std::string& path,
                          const std::vector<std::string>& headers, bool http10 = false,
                          std::chrono::milliseconds timeout = 5s);

// Parses "... listening on 127.0.0.1:PORT ..." out of a log line; 0 if absent.
int portFromLine(const std::string& line);

// A TCP client speaking fingate's frame format:
//   u32 length-of-rest | u8 kind | u16 topic-length | topic | payload  (big-endian)
class FrameClient {
 public:
  enum Kind : uint8_t { Publish = 1, Subscribe = 2, Unsubscribe = 3, Ping = 4, Pong = 5, Error = 6 };
  struct Frame {
    uint8_t kind = 0;
    std::string topic;
    std::string payload;
  };
  FrameClient() = default;
  explicit FrameClient(int port, const std::string& host = "127.0.0.1");
  ~FrameClient();
  FrameClient(const FrameClient&) = delete;
  FrameClient& operator=(const FrameClient&) = delete;
  bool connect(int port, const std::string& host = "127.0.0.1");
  bool connected() const { return fd_ >= 0; }
  void close();
  static std::string encode(uint8_t kind, const std::string& topic, const std::string& payload);
  bool sendRaw(const std::string& bytes);
  bool send(uint8_t kind, const std::string& topic, const std::string& payload = "");
  bool publish(const std::string& topic, const std::string& payload) { return send(Publish, topic, payload); }
  bool subscribe(const std::string& filter) { return send(Subscribe, filter); }
  // Sends a ping with a unique payload and waits for its pong; frames received before the
  // pong are kept for recv(). True when the pong came.
  bool barrier(std::chrono::milliseconds timeout = 5s);
  // Next frame, or nullopt after timeout / on close.
  std::optional<Frame> recv(std::chrono::milliseconds timeout = 5s);
  // True when the peer closed the connection within timeout (buffered frames are kept).
  bool waitClosed(std::chrono::milliseconds timeout = 5s);

 private:
  bool readSome(std::chrono::milliseconds timeout);
  std::optional<Frame> popFrame();
  int fd_ = -1;
  std::string buf_;
  std::deque<Frame> pending_;
  bool peer_closed_ = false;
  uint64_t ping_seq_ = 0;
};

// A PluginHost that records everything, for plugin-level tests.
class RecordingHost : public PluginHost {
 public:
  struct Msg {
    uint64_t sub_id;
    std::string topic;
    std::string payload;
    uint64_t session;
    std::vector<std::pair<std::string, std::string>> headers;
    uint64_t token = 0;  // ABI 1.1 outcome token (0 = untracked)
  };
  void log(fg_log_level level, std::string_view msg) override;
  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) override;
  void onEvent(const fg_event& ev) override;
  void onDelivery(uint64_t delivery_id, fg_delivery status) override;
  void onState(fg_state state, std::string_view detail) override;
  void onSession(uint64_t session, fg_session_event event) override;
  fg_status authorizeSubscribe(uint64_t session, std::string_view filter, std::string& reason) override;

  // Waits for the next message (FIFO); nullopt after timeout.
  std::optional<Msg> next(std::chrono::milliseconds timeout = 5s);
  bool waitState(fg_state state, std::chrono::milliseconds timeout = 10s);
  std::string stateDetail(fg_state state);
  std::vector<std::pair<uint64_t, fg_session_event>> sessions();
  std::map<uint64_t, fg_delivery> deliveries();
  std::vector<std::string> logs();
  // ABI 1.1 typed events, in arrival order (detail copied).
  struct Event {
    fg_event_kind kind;
    uint64_t sub_id;
    uint64_t session;
    fg_status status;
    uint32_t flags;
    std::string detail;
  };
  std::vector<Event> events();
  // Waits until an event satisfying pred has arrived.
  bool waitEvent(const std::function<bool(const Event&)>& pred, std::chrono::milliseconds timeout = 10s);

  // Test knobs: make on_message answer RETRY `retry_budget` times; refuse these filters.
  std::atomic<int> retry_budget{0};
  std::function<fg_status(uint64_t, std::string_view, std::string&)> authorize;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Msg> msgs_;
  std::map<fg_state, std::string> states_;
  std::vector<std::pair<uint64_t, fg_session_event>> sessions_;
  std::map<uint64_t, fg_delivery> deliveries_;
  std::vector<std::string> logs_;
  std::vector<Event> events_;
};

// Loads build/plugins/libfingate-<name>.so.
std::shared_ptr<PluginLibrary> loadBuiltPlugin(const std::string& name);

// The captured Fin protocol vectors (tests/data/vectors, copied from SOARCA/fin captures).
struct Vector {
  std::string file;
  std::string topic;
  std::string type;
  std::string bytes;  // the file's bytes without a trailing newline
};
std::vector<Vector> loadVectors();
std::string vectorBytes(const std::string& file);

}  // namespace fingate::test
