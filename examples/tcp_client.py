#!/usr/bin/env python3
"""Reference client for fingate's TCP transport (Python standard library only).

Frames, big-endian: u32 length-of-rest | u8 kind | u16 topic-length | topic | payload
Kinds: 1 publish, 2 subscribe, 3 unsubscribe, 4 ping, 5 pong, 6 error.

  tcp_client.py orchestrator [--port 7400]  plays SOARCA: acks a register, sends one command
  tcp_client.py fin [--port 7410]           plays a fin: registers, answers a command with a result
"""
import argparse, json, socket, struct, sys, uuid
from datetime import datetime, timezone

PUBLISH, SUBSCRIBE, UNSUBSCRIBE, PING, PONG, ERROR = 1, 2, 3, 4, 5, 6


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = []  # frames that arrived while waiting for a pong, in order

    def send(self, kind, topic, payload=b""):
        t = topic.encode()
        p = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        self.sock.sendall(struct.pack(">IBH", 3 + len(t) + len(p), kind, len(t)) + t + p)

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("gateway closed the connection")
            buf += chunk
        return buf

    def recv(self):
        if self.pending:
            return self.pending.pop(0)
        return self._recv_frame()

    def _recv_frame(self):
        rest, kind, tlen = struct.unpack(">IBH", self._read(7))
        body = self._read(rest - 3)
        topic, payload = body[:tlen].decode(), body[tlen:]
        if kind == ERROR:
            raise RuntimeError(f"gateway error: {payload.decode()}")
        return kind, topic, payload

    def barrier(self):
        """Ping and wait for the pong: everything sent before it has been processed. Frames that
        arrive meanwhile (a register the gateway replays to a new subscriber, say) are kept."""
        token = uuid.uuid4().hex.encode()
        self.send(PING, "", token)
        while True:
            frame = self._recv_frame()
            if frame[0] == PONG and frame[2] == token:
                return
            self.pending.append(frame)

    def messages(self):
        while True:
            kind, topic, payload = self.recv()
            if kind == PUBLISH:
                msg = json.loads(payload)
                print(f"<- {topic}: {msg.get('type')} {msg.get('message_id', '')}", flush=True)
                yield topic, msg


def now():
    return datetime.now(timezone.utc).isoformat()


def orchestrator(c):
    c.send(SUBSCRIBE, "soarca")
    c.barrier()
    print("orchestrator: waiting for a register on 'soarca'", flush=True)
    cap = None
    for topic, msg in c.messages():
        t = msg.get("type")
        if topic == "soarca" and t == "register":
            fin_id, cap = msg["fin_id"], msg["capabilities"][0]["capability_id"]
            c.send(SUBSCRIBE, fin_id)
            c.send(SUBSCRIBE, cap)
            c.barrier()
            c.send(PUBLISH, fin_id, {"type": "ack", "message_id": msg["message_id"]})
            command = {"type": "command", "message_id": str(uuid.uuid1()),
                       "command": {"command": "pong", "authentication": {"type": "", "kms": False},
                                   "context": {"completed_on": "0001-01-01T00:00:00Z",
                                               "generated_on": "0001-01-01T00:00:00Z", "timeout": 1, "delay": 0,
                                               "step_id": "action--demo", "playbook_id": "playbook--demo",
                                               "execution_id": str(uuid.uuid4())},
                                   "variables": {}},
                       "meta": {"timestamp": now(), "sender_id": "soarca-fin-capability"}}
            print(f"-> {cap}: command {command['message_id']}", flush=True)
            c.send(PUBLISH, cap, command)
        elif topic == cap and t == "result":
            c.send(PUBLISH, cap, {"type": "ack", "message_id": msg["message_id"]})
            print("orchestrator: result", json.dumps(msg["result"]["variables"]), flush=True)
            return


def fin(c, once):
    fin_id = "soarca-fin--demo-" + uuid.uuid4().hex[:8]
    cap = "mod-demo--" + uuid.uuid4().hex[:8]
    register = {"type": "register", "message_id": str(uuid.uuid1()), "fin_id": fin_id, "protocol_version": "0.0.1",
                "security": {"version": "0.0.1", "channel_security": "plaintext"},
                "capabilities": [{"capability_id": cap, "type": "action", "name": "Demo capability",
                                  "version": "0.0.1", "step": {}, "agent": {"demo": {"type": "soarca-fin", "name": cap}}}],
                "meta": {"timestamp": now(), "sender_id": fin_id}}
    c.send(SUBSCRIBE, "soarca")
    c.barrier()
    print(f"-> soarca: register {fin_id} / {cap}", flush=True)
    c.send(PUBLISH, "soarca", register)  # the gateway binds fin_id and cap to this connection
    for topic, msg in c.messages():
        t = msg.get("type")
        if topic == fin_id and t == "nack":
            sys.exit("fin: register refused")
        if topic == cap and t == "command":
            c.send(PUBLISH, cap, {"type": "ack", "message_id": msg["message_id"]})
            result = {"type": "result", "message_id": str(uuid.uuid1()),
                      "result": {"state": "success", "context": msg["command"]["context"],
                                 "variables": {"result": {"type": "string", "name": "pong_output",
                                                          "description": "demo", "value": "pong",
                                                          "constant": False, "external": False}}},
                      "meta": {"timestamp": now(), "sender_id": cap}}
            print(f"-> {cap}: result {result['message_id']}", flush=True)
            c.send(PUBLISH, cap, result)
        elif topic == cap and t == "ack":
            print("fin: result acknowledged" + ("" if once else "; staying registered (Ctrl-C to quit)"), flush=True)
            if once:
                return


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=["orchestrator", "fin"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int)
    ap.add_argument("--once", action="store_true", help="fin: exit after one command (default: stay connected)")
    a = ap.parse_args()
    port = a.port or (7400 if a.role == "orchestrator" else 7410)
    c = Conn(a.host, port)
    try:
        orchestrator(c) if a.role == "orchestrator" else fin(c, a.once)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
