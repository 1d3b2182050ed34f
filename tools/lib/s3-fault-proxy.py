#!/usr/bin/env python3
"""An HTTP proxy for the S3 tests and benchmarks: forwards every request to an S3
server, with faults and delays of the caller's choosing.

Usage: s3-fault-proxy.py PORT UPSTREAM_URL FAIL_EVERY [before|after] [options]
  FAIL_EVERY N     answer every Nth request 503 SlowDown (0: never)
  after            forward the failed request first, so only its answer is lost
                   (a PUT that took effect, whose client never heard so)
  --latency-ms MS  wait MS milliseconds before forwarding each request
  --mix P          besides, fail a share P (0..1) of requests at random, each with
                   one of: 500, 503, 429, a connection reset before the answer, a
                   reset half way through the answer's body, or a body cut short
                   under a full Content-Length
  --seed S         the random choices' seed (default 1)
The proxy prints a count of each fault to its stdout when it ends (SIGTERM)."""
import argparse
import http.client
import random
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("upstream")
parser.add_argument("every", type=int)
parser.add_argument("mode", nargs="?", default="before", choices=["before", "after"])
parser.add_argument("--latency-ms", type=float, default=0)
parser.add_argument("--mix", type=float, default=0)
parser.add_argument("--seed", type=int, default=1)
args = parser.parse_args()

UPSTREAM = urllib.parse.urlsplit(args.upstream)
lock = threading.Lock()
count = 0
rng = random.Random(args.seed)
faults = {}
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
MIX = ["500", "503", "429", "reset", "reset-mid-body", "truncated"]


def report(*_):
    print("requests %d; faults %s" % (count, dict(sorted(faults.items()))), flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, report)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACK would add 40 ms to every answer
    # with a body, a delay no real network adds.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def forward(self, body):
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                     headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r, data

    def error(self, status, code):
        text = ("<?xml version=\"1.0\"?><Error><Code>%s</Code><Message>injected by the test proxy</Message></Error>"
                % code).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def reset(self):
        # SO_LINGER 0: the close sends RST, not FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.connection.close()
        self.close_connection = True

    def handle_any(self):
        global count
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with lock:
            count += 1
            fault = None
            if args.every > 0 and count % args.every == 0:
                fault = "503"
            elif args.mix > 0 and rng.random() < args.mix:
                fault = rng.choice(MIX)
            if fault:
                faults[fault] = faults.get(fault, 0) + 1
        if args.latency_ms > 0:
            time.sleep(args.latency_ms / 1000)
        if fault in ("500", "503", "429") and args.every > 0 and args.mode == "after":
            self.forward(body)
        if fault == "500":
            return self.error(500, "InternalError")
        if fault == "503":
            return self.error(503, "SlowDown")
        if fault == "429":
            return self.error(429, "TooManyRequests")
        if fault == "reset":
            return self.reset()
        r, data = self.forward(body)
        self.send_response(r.status)
        for k, v in r.getheaders():
            # A HEAD keeps the object's length; every other answer gets its body's.
            if k.lower() not in HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault in ("reset-mid-body", "truncated") and len(data) > 1:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if fault == "reset-mid-body":
                return self.reset()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data)


for name in ("GET", "PUT", "POST", "DELETE", "HEAD"):
    setattr(Handler, "do_" + name, Handler.handle_any)

ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
