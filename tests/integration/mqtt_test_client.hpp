// An independent MQTT client for tests (paho-mqtt-cpp directly, not fingate's plugin): plays
// SOARCA (MQTT 3.1.1, QoS 1) or a Python fin (MQTT 5, QoS 0, no-local) against real mosquitto.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace fingate::test {

class MqttTestClient {
 public:
  struct Msg {
    std::string topic, payload;
  };
  // version 3 (3.1.1) or 5. Throws on connect failure.
  MqttTestClient(const std::string& url, const std::string& client_id, int version, int qos,
                 const std::string& user = "", const std::string& password = "");
  ~MqttTestClient();
  void subscribe(const std::string& topic, bool no_local = false);
  void publish(const std::string& topic, const std::string& payload);
  std::optional<Msg> recv(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
  // Next message on `topic` (others are discarded); nullopt on timeout.
  std::optional<Msg> recvOn(const std::string& topic, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int version_;
  int qos_;
};

}  // namespace fingate::test
