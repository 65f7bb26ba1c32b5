#!/usr/bin/env python3
"""A complete fin over fingate's ZeroMQ transport (docs/transports.md, "ZeroMQ"), with pyzmq.

Registers the fin of protocol vector 01-a-register.json, answers every command with an ack and
a result, and PINGs while idle so the gateway keeps its session (3 silent heartbeat periods, 10 s
each by default, end it).

    pip install pyzmq
    python3 examples/zmq_client.py tcp://127.0.0.1:7401 tests/data/vectors/01-a-register.json
With CURVE, set FINGATE_ZMQ_SERVER_KEY (the gateway logs its public key at start) and
FINGATE_ZMQ_PUBLIC_KEY / FINGATE_ZMQ_SECRET_KEY (this client's pair, zmq.curve_keypair()).
"""
import json
import os
import sys
import time
import uuid

import zmq

address = sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:7401"
register = open(sys.argv[2] if len(sys.argv) > 2 else "01-a-register.json", "rb").read().rstrip(b"\n")
fin_id = json.loads(register)["fin_id"]
PING_EVERY = 5.0  # seconds: well under the gateway's heartbeat_ms

sock = zmq.Context.instance().socket(zmq.DEALER)
sock.linger = 0
if os.environ.get("FINGATE_ZMQ_SERVER_KEY"):
    sock.curve_serverkey = os.environ["FINGATE_ZMQ_SERVER_KEY"].encode()
    sock.curve_publickey = os.environ["FINGATE_ZMQ_PUBLIC_KEY"].encode()
    sock.curve_secretkey = os.environ["FINGATE_ZMQ_SECRET_KEY"].encode()
sock.connect(address)


def send(verb, topic, payload=b""):
    sock.send_multipart([verb, topic.encode(), payload])  # always exactly three frames


def message(kind, **fields):
    return json.dumps({"type": kind, "message_id": str(uuid.uuid1()), **fields}).encode()


def ack(message_id):
    return json.dumps({"type": "ack", "message_id": message_id}).encode()


# Subscribe to broadcasts, then a barrier: once the PONG is in, no broadcast can be missed.
send(b"SUB", "soarca")
send(b"PING", "", b"ready")
while sock.recv_multipart() != [b"PONG", b"", b"ready"]:
    pass
send(b"PUB", "soarca", register)  # binds fin_id and every capability_id to this socket

last_sent = time.monotonic()
while True:
    if not sock.poll(1000):  # milliseconds
        if time.monotonic() - last_sent >= PING_EVERY:
            send(b"PING", "", b"keepalive")
            last_sent = time.monotonic()
        continue
    verb, topic, payload = sock.recv_multipart()
    topic = topic.decode()
    if verb == b"ERR":  # {"error": "...", "detail": "..."}; framing errors end the session
        print("gateway error:", json.loads(payload), file=sys.stderr)
        continue
    if verb != b"MSG":
        continue
    msg = json.loads(payload)
    print(topic, msg.get("type"))
    if topic == fin_id and msg.get("type") == "nack":
        sys.exit("registration refused")
    if msg.get("type") == "command":
        send(b"PUB", topic, ack(msg["message_id"]))
        result = {"state": "success", "context": msg["command"]["context"], "variables": {}}
        meta = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sender_id": topic}
        send(b"PUB", topic, message("result", result=result, meta=meta))
        last_sent = time.monotonic()
