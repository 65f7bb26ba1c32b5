#include "mqtt_test_client.hpp"

#include <mqtt/async_client.h>

namespace fingate::test {

struct MqttTestClient::Impl {
  std::unique_ptr<mqtt::async_client> cli;
};

MqttTestClient::MqttTestClient(const std::string& url, const std::string& client_id, int version, int qos,
                               const std::string& user, const std::string& password)
    : impl_(std::make_unique<Impl>()), version_(version), qos_(qos) {
  int v = version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
  impl_->cli = std::make_unique<mqtt::async_client>(url, client_id, mqtt::create_options(v));
  auto b = mqtt::connect_options_builder().mqtt_version(v).keep_alive_interval(std::chrono::seconds(30));
  if (version == 5) b.clean_start(true);
  else b.clean_session(true);
  if (!user.empty()) b.user_name(user).password(password);
  impl_->cli->start_consuming();
  impl_->cli->connect(b.finalize())->wait_for(std::chrono::seconds(10));
  if (!impl_->cli->is_connected()) throw std::runtime_error("test client " + client_id + " could not connect to " + url);
}

MqttTestClient::~MqttTestClient() {
  try {
    if (impl_->cli->is_connected()) impl_->cli->disconnect()->wait_for(std::chrono::seconds(2));
  } catch (...) {
  }
}

void MqttTestClient::subscribe(const std::string& topic, bool no_local) {
  if (version_ == 5)
    impl_->cli->subscribe(topic, 1, mqtt::subscribe_options(no_local))->wait_for(std::chrono::seconds(5));
  else
    impl_->cli->subscribe(topic, 1)->wait_for(std::chrono::seconds(5));
}

void MqttTestClient::publish(const std::string& topic, const std::string& payload) {
  auto msg = mqtt::make_message(topic, payload, qos_, false);
  impl_->cli->publish(msg)->wait_for(std::chrono::seconds(5));
}

std::optional<MqttTestClient::Msg> MqttTestClient::recv(std::chrono::milliseconds timeout) {
  mqtt::const_message_ptr m;
  if (!impl_->cli->try_consume_message_for(&m, timeout) || !m) return std::nullopt;
  return Msg{m->get_topic(), m->to_string()};
}

std::optional<MqttTestClient::Msg> MqttTestClient::recvOn(const std::string& topic, std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    auto m = recv(left);
    if (!m) return std::nullopt;
    if (m->topic == topic) return m;
  }
}

}  // namespace fingate::test
