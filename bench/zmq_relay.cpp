// zmq_relay: the plain-ZeroMQ baseline of bench/zmq_forward.cpp. A ROUTER (where the sender's
// DEALER connects) relayed to a DEALER (where the receiver's DEALER connects): every message's
// routing id is dropped and the other frames are passed on as they are, with no parsing, no
// routing table and no copies (zmq_msg_send moves each frame).
//
// Usage: zmq_relay FRONT BACK    e.g. zmq_relay tcp://127.0.0.1:7501 tcp://127.0.0.1:7502
// Runs until killed. Prints "relay ready" once both sockets are bound.
#include <zmq.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s FRONT BACK\n", argv[0]);
    return 2;
  }
  void* ctx = zmq_ctx_new();
  void* front = zmq_socket(ctx, ZMQ_ROUTER);
  void* back = zmq_socket(ctx, ZMQ_DEALER);
  if (zmq_bind(front, argv[1]) != 0 || zmq_bind(back, argv[2]) != 0) {
    std::fprintf(stderr, "bind failed: %s\n", zmq_strerror(zmq_errno()));
    return 1;
  }
  std::printf("relay ready\n");
  std::fflush(stdout);
  zmq_msg_t m;
  zmq_msg_init(&m);
  while (true) {
    if (zmq_msg_recv(&m, front, 0) < 0) continue;  // the routing id: dropped
    bool more = zmq_msg_more(&m);
    while (more) {
      if (zmq_msg_recv(&m, front, 0) < 0) break;
      more = zmq_msg_more(&m);  // read before the send moves the frame out
      zmq_msg_send(&m, back, more ? ZMQ_SNDMORE : 0);
    }
  }
}
