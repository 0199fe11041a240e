#!/usr/bin/env python3
"""bench/control-plane.sh: the latency of a refresh and of a refresh reuse, one request
at a time over a kept-alive connection, while wrk revokes concurrently (started by the
script). Each round creates an unbound session (not timed), refreshes it once (timed:
`refresh`) and presents the rotated token again (timed: `refresh-reuse`, which signs and
commits the session's `sid` revocation before it answers 400 invalid_grant).
Prints two lines in the format of bench/cp.lua's RESULT:
"<label> 1 <rounds/s> <p50 ms> <p99 ms> <unexpected answers> 0".
Usage: refresh.py CONTROL_PLANE_URL ADMIN_SECRET SECONDS
"""
import http.client
import json
import sys
import time
from urllib.parse import urlparse

cp_url, secret, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
cp = urlparse(cp_url)
conn = http.client.HTTPConnection(cp.hostname, cp.port, timeout=30)


def post(path, body, admin=False):
    headers = {"content-type": "application/json"}
    if admin:
        headers["authorization"] = f"Bearer {secret}"
    start = time.perf_counter()
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data), (time.perf_counter() - start) * 1000


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


refresh, reuse, unexpected = [], [], {"refresh": 0, "refresh-reuse": 0}
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    status, body, _ = post("/token/refresh/create", {"subject": "bench-refresh"}, admin=True)
    if status != 200:
        unexpected["refresh"] += 1
        continue
    first = body["refresh_token"]
    status, body, ms = post("/token/refresh", {"refresh_token": first})
    refresh.append(ms)
    if status != 200:
        unexpected["refresh"] += 1
        continue
    status, body, ms = post("/token/refresh", {"refresh_token": first})
    reuse.append(ms)
    if status != 400 or "reuse" not in body.get("error_description", ""):
        unexpected["refresh-reuse"] += 1

for label, values in (("refresh", refresh), ("refresh-reuse", reuse)):
    if not values:
        print(f"{label} 1 0 0 0 {unexpected[label]} 0")
        continue
    rate = len(values) / seconds
    print(f"{label} 1 {rate:.0f} {pct(values, 50):.2f} {pct(values, 99):.2f} {unexpected[label]} 0")
