#!/usr/bin/env python3
"""An HTTP proxy for the S3 tests: forwards every request to an S3 server and
answers every Nth one with 503 SlowDown instead, so that clients must retry.
With MODE "after", the failed request is forwarded first and only its answer is
lost (a PUT that took effect, whose client never heard so).
Usage: s3-fault-proxy.py PORT UPSTREAM_URL FAIL_EVERY [before|after]"""
import http.client
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, UPSTREAM, EVERY = int(sys.argv[1]), urllib.parse.urlsplit(sys.argv[2]), int(sys.argv[3])
AFTER = len(sys.argv) > 4 and sys.argv[4] == "after"
lock = threading.Lock()
count = 0
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        global count
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with lock:
            count += 1
            fail = EVERY > 0 and count % EVERY == 0
        if fail and AFTER:
            conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None, headers=headers)
            conn.getresponse().read()
            conn.close()
        if fail:
            text = b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>injected by the test proxy</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None, headers=headers)
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            # A HEAD keeps the object's length; every other answer gets its body's.
            if k.lower() not in HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
