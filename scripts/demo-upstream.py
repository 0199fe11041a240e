#!/usr/bin/env python3
"""The demo upstream: answers every request with JSON naming the claim headers the edge
filter forwarded (x-auth-*), so a walk-through can see who Envoy let through.

Usage: demo-upstream.py PORT [HOST]   (HOST defaults to 127.0.0.1; 0.0.0.0 in a container)
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    server_version = "demo-upstream"

    def _answer(self):
        claims = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-auth-")}
        body = json.dumps({"upstream": "demo", "path": self.path, "claims": claims}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    ThreadingHTTPServer((host, port), Echo).serve_forever()
