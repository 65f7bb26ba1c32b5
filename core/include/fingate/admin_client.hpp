// A client of the gateway's own admin API, for the command-line tools (`fingate migrate`).
// cpp-httplib stays in admin.cpp: this is the one door to it from outside.
#pragma once

#include <string>

namespace fingate {

struct AdminResponse {
  int status = 0;     // HTTP status; 0 when no answer came (error says why)
  std::string body;
  std::string error;  // "connection refused", "timed out", ...
};

// One request to http://host:port<path> with `Authorization: Bearer token` when token is not
// empty. body is sent as application/json (POST). Never throws.
AdminResponse adminRequest(const std::string& host, int port, const std::string& method, const std::string& path,
                           const std::string& token, const std::string& body = "", int timeout_ms = 10000);

}  // namespace fingate
