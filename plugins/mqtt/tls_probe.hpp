// Why a TLS connection to the broker fails, in OpenSSL's words.
//
// paho-mqtt-cpp 1.2 (Debian 12) cannot report OpenSSL's errors safely: its ssl_options error
// handler is called with a pointer to a connect_options copy that died when connect()
// returned (eclipse-paho/paho.mqtt.cpp#325, fixed in 1.3). So after a failed TLS connect the
// plugin repeats the handshake here, with the same files and checks, and reports what
// OpenSSL says: "certificate verify failed (unable to get local issuer certificate)", a
// missing key file, a refused TCP connect, ...
#pragma once

#include <string>

namespace fingate::mqtt_tls {

struct ProbeOptions {
  std::string host;  // as in the url; [v6] brackets allowed
  int port = 8883;
  std::string ca_file, cert_file, key_file;
  bool verify = true;  // verify the chain and the host name, as the plugin's connect does
  int timeout_ms = 3000;
};

// "" when the handshake succeeds (the failure was something else), else one line.
std::string handshakeError(const ProbeOptions& o);

}  // namespace fingate::mqtt_tls
