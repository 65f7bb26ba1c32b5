#include "tls_probe.hpp"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace fingate::mqtt_tls {
namespace {

std::string opensslError(const char* what) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (!e) return what;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return std::string(what) + ": " + buf;
}

// A connected TCP socket with send/receive timeouts, or -1 and why.
int connectTcp(const std::string& host, int port, int timeout_ms, std::string& why) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    why = "cannot resolve '" + host + "': " + gai_strerror(rc);
    return -1;
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) return fd;
    why = std::string("TCP connect failed: ") + std::strerror(errno);
    ::close(fd);
  }
  return -1;
}

}  // namespace

std::string handshakeError(const ProbeOptions& o) {
  std::string host = o.host;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  ERR_clear_error();
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx) return opensslError("cannot create a TLS context");
  if (o.verify) {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if (!o.ca_file.empty()) {
      if (SSL_CTX_load_verify_locations(ctx.get(), o.ca_file.c_str(), nullptr) != 1)
        return opensslError(("tls.ca_file '" + o.ca_file + "' cannot be loaded").c_str());
    } else {
      SSL_CTX_set_default_verify_paths(ctx.get());
    }
  }
  if (!o.cert_file.empty() && SSL_CTX_use_certificate_chain_file(ctx.get(), o.cert_file.c_str()) != 1)
    return opensslError(("tls.cert_file '" + o.cert_file + "' cannot be loaded").c_str());
  if (!o.key_file.empty()) {
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), o.key_file.c_str(), SSL_FILETYPE_PEM) != 1)
      return opensslError(("tls.key_file '" + o.key_file + "' cannot be loaded").c_str());
    if (!o.cert_file.empty() && SSL_CTX_check_private_key(ctx.get()) != 1)
      return opensslError("tls.key_file does not match tls.cert_file");
  }
  std::string why;
  int fd = connectTcp(host, o.port, o.timeout_ms, why);
  if (fd < 0) return why;
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  if (!ssl) {
    ::close(fd);
    return opensslError("cannot create a TLS session");
  }
  SSL_set_fd(ssl.get(), fd);
  SSL_set_tlsext_host_name(ssl.get(), host.c_str());
  if (o.verify) SSL_set1_host(ssl.get(), host.c_str());
  std::string result;
  if (SSL_connect(ssl.get()) != 1) {
    long vr = SSL_get_verify_result(ssl.get());
    if (o.verify && vr != X509_V_OK)
      result = std::string("certificate verify failed (") + X509_verify_cert_error_string(vr) + ")";
    else
      result = opensslError("TLS handshake failed");
  } else {
    SSL_shutdown(ssl.get());
  }
  ::close(fd);
  ERR_clear_error();
  return result;
}

}  // namespace fingate::mqtt_tls
