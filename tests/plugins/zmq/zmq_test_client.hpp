// A ZeroMQ DEALER client speaking fingate's ZeroMQ conventions (docs/transports.md "ZeroMQ"):
// [verb, topic, payload] out, [MSG|PONG|ERR, topic, payload] in. Real cppzmq sockets; every wait
// is bounded. Used by the plugin tests and the ZeroMQ end-to-end tests.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

namespace fingate::test {

inline zmq::context_t& zmqTestContext() {
  static zmq::context_t ctx(1);
  return ctx;
}

struct ZmqClientOptions {
  std::string curve_server_key;                    // Z85: use CURVE with this server public key
  std::string curve_public_key, curve_secret_key;  // Z85 client keys
  int rcvhwm = 1000;
  int rcvbuf = -1;         // kernel receive buffer (-1: default)
  std::string routing_id;  // empty: libzmq picks one
  bool bind = false;       // bind instead of connect (the gateway connects)
};

class ZmqClient {
 public:
  struct Msg {
    std::string verb, topic, payload;
    size_t frames = 0;
  };
  explicit ZmqClient(const std::string& endpoint, const ZmqClientOptions& o = {})
      : sock_(zmqTestContext(), zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::rcvhwm, o.rcvhwm);
    sock_.set(zmq::sockopt::sndtimeo, 5000);
    if (o.rcvbuf > 0) sock_.set(zmq::sockopt::rcvbuf, o.rcvbuf);
    if (!o.routing_id.empty()) sock_.set(zmq::sockopt::routing_id, o.routing_id);
    if (!o.curve_server_key.empty()) {
      sock_.set(zmq::sockopt::curve_serverkey, o.curve_server_key);
      sock_.set(zmq::sockopt::curve_publickey, o.curve_public_key);
      sock_.set(zmq::sockopt::curve_secretkey, o.curve_secret_key);
    }
    if (o.bind) {
      sock_.bind(endpoint);
      endpoint_ = sock_.get(zmq::sockopt::last_endpoint);
    } else {
      sock_.connect(endpoint);
      endpoint_ = endpoint;
    }
  }
  const std::string& endpoint() const { return endpoint_; }

  // Any frames (hostile tests): false when the send did not go within 5 s.
  bool sendFrames(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      zmq::message_t m(frames[i].data(), frames[i].size());
      auto r = sock_.send(m, i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      if (!r) return false;
    }
    return true;
  }
  bool send(const std::string& verb, const std::string& topic, const std::string& payload = "") {
    return sendFrames({verb, topic, payload});
  }
  bool publish(const std::string& topic, const std::string& payload) { return send("PUB", topic, payload); }
  bool subscribe(const std::string& filter) { return send("SUB", filter); }

  // Next message (kept ones first), or nullopt after timeout.
  std::optional<Msg> recv(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    if (!pending_.empty()) {
      Msg m = std::move(pending_.front());
      pending_.pop_front();
      return m;
    }
    return recvWire(timeout);
  }
  // Sends a PING with a unique payload and waits for its PONG; what arrives before is kept.
  bool barrier(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const std::string tag = "barrier-" + std::to_string(++seq_);
    if (!send("PING", "", tag)) return false;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      auto m = recvWire(std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()));
      if (!m) return false;
      if (m->verb == "PONG" && m->payload == tag) return true;
      pending_.push_back(std::move(*m));
    }
    return false;
  }
  zmq::socket_t& socket() { return sock_; }

 private:
  std::optional<Msg> recvWire(std::chrono::milliseconds timeout) {
    zmq::pollitem_t item{sock_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, timeout) <= 0) return std::nullopt;
    Msg out;
    std::vector<std::string> parts;
    while (true) {
      zmq::message_t m;
      if (!sock_.recv(m, zmq::recv_flags::none)) return std::nullopt;
      parts.push_back(m.to_string());
      if (!m.more()) break;
    }
    out.frames = parts.size();
    if (parts.size() > 0) out.verb = parts[0];
    if (parts.size() > 1) out.topic = parts[1];
    if (parts.size() > 2) out.payload = parts[2];
    return out;
  }

  zmq::socket_t sock_;
  std::string endpoint_;
  std::deque<Msg> pending_;
  uint64_t seq_ = 0;
};

// A CURVE key pair (Z85).
struct CurveKeys {
  std::string pub, sec;
};
inline CurveKeys curveKeypair() {
  char pub[41] = {0}, sec[41] = {0};
  zmq_curve_keypair(pub, sec);
  return {pub, sec};
}

}  // namespace fingate::test
