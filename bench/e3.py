#!/usr/bin/env python3
"""E3 of bench/run.sh: for each token, the time from sending `POST /revoke` (its jti) to
the control plane until the edge first answers 401 for it, polling the edge back to back
over a kept-alive connection. Prints "p50_ms p99_ms max_ms ack_p50_ms n" (ack: the
revoke call's own answer).
Usage: e3.py CONTROL_PLANE_URL ADMIN_SECRET EDGE_URL TOKENS_FILE COUNT
E3_POLL_MS: pause between two probes of the edge [0.5]. Probing back to back kept one
of the machine's two cores busy (Python and the Envoy worker answering it), so the path
being measured shared the other one.
E3_TRACE=FILE: one line per revocation, "start_unix_ms ack_ms seen_ms", to line the
figures up with the control planes' log lines.
"""
import base64
import http.client
import json
import os
import sys
import time
from urllib.parse import urlparse

cp_url, secret, edge_url, tokens_file, count = sys.argv[1:6]
TRACE = open(os.environ["E3_TRACE"], "w") if os.environ.get("E3_TRACE") else None
POLL = float(os.environ.get("E3_POLL_MS", "0.5")) / 1e3
cp, edge = urlparse(cp_url), urlparse(edge_url)
tokens = [t for t in open(tokens_file).read().split() if t][: int(count)]
cp_conn = http.client.HTTPConnection(cp.hostname, cp.port, timeout=10)
edge_conn = http.client.HTTPConnection(edge.hostname, edge.port, timeout=10)


def edge_status(token):
    edge_conn.request("GET", "/", headers={"authorization": f"Bearer {token}"})
    r = edge_conn.getresponse()
    r.read()
    return r.status


def jti(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


delays, acks = [], []
for token in tokens:
    if edge_status(token) != 200:
        sys.exit(f"token not accepted before its revocation: {edge_status(token)}")
    body = json.dumps({"type": "revoke_jti", "value": jti(token)})
    start = time.perf_counter()
    cp_conn.request("POST", "/revoke", body=body, headers={
        "authorization": f"Bearer {secret}", "content-type": "application/json"})
    r = cp_conn.getresponse()
    r.read()
    acked = time.perf_counter()
    if r.status // 100 != 2:
        sys.exit(f"revoke answered {r.status}")
    while edge_status(token) != 401:
        if time.perf_counter() - start > 10:
            sys.exit("no 401 within 10 s")
        time.sleep(POLL)
    delays.append((time.perf_counter() - start) * 1e3)
    if TRACE:
        TRACE.write(f"{time.time() * 1e3 - delays[-1]:.3f} {(acked - start) * 1e3:.3f} {delays[-1]:.3f}\n")
    acks.append((acked - start) * 1e3)
print(f"{pct(delays, 50):.1f} {pct(delays, 99):.1f} {max(delays):.1f} {pct(acks, 50):.1f} {len(delays)}")
