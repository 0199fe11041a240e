#!/usr/bin/env python3
"""Stands in for the control plane's edge feed in the E5 rows of bench/run.sh.

Serves the files `edge-bench e5-feed DIR N` wrote: `/.well-known/jwks.json`, and on
`/v1/edge/revocations` the 1M-entry snapshot seq 1 first, then empty heartbeat deltas
(each long poll is held 1 s). `GET /churn` makes the next polls return a fresh 1M
snapshot (seq 2, 3, ... 6, 1, ...) every `--every` seconds, as a control plane sending a new
snapshot would; `GET /steady` stops that; `GET /served` counts the snapshots served. Usage: e5-feed.py DIR PORT [--every 1.5]
"""
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

DIR, PORT = sys.argv[1], int(sys.argv[2])
EVERY = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--every" else 1.5
LOCK = threading.Lock()
STATE = {"seq": 0, "churn": False, "last": 0.0, "served": 0}
FILES = {}


def body(name):
    if name not in FILES:
        with open(f"{DIR}/{name}", "rb") as f:
            FILES[name] = f.read()
    return FILES[name]


class Feed(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def answer(self, status, data=b"", kind="application/jose"):
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/.well-known/jwks.json":
            return self.answer(200, body("jwks.json"), "application/json")
        if url.path == "/served":
            return self.answer(200, f"{STATE['served']}\n".encode(), "text/plain")
        if url.path in ("/churn", "/steady"):
            with LOCK:
                STATE["churn"] = url.path == "/churn"
            return self.answer(200, f"{STATE}\n".encode(), "text/plain")
        if url.path != "/v1/edge/revocations":
            return self.answer(404)
        since = int(parse_qs(url.query).get("since", ["0"])[0] or 0)
        deadline = time.time() + 1.0
        while True:
            with LOCK:
                idx, now = STATE["seq"], time.time()
                if idx == 0 or (STATE["churn"] and now - STATE["last"] >= EVERY):
                    # Snapshots 1..6 in a circle: all carry the same generated_at, so
                    # the filter takes each one as a fresh full set.
                    STATE["seq"] = idx = idx % 6 + 1
                    STATE["last"] = now
                    STATE["served"] += 1
                    name = f"snap-{idx}.jws"
                    break
                if since != idx:
                    STATE["served"] += 1
                    name = f"snap-{idx}.jws"
                    break
            if time.time() >= deadline:
                name = f"hb-{idx}.jws"
                break
            time.sleep(0.05)
        self.answer(200, body(name))


ThreadingHTTPServer(("127.0.0.1", PORT), Feed).serve_forever()
