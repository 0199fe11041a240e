#!/usr/bin/env python3
"""Turns the cells of bench/run.sh into the edge tables of BENCHMARKS.md.

Only the part between the `edge: begin` and `edge: end` markers is rewritten; the rest
of the file (other sections, the hand-written analysis) is kept.
Usage: report.py RESULTS_FILE REPORT (settings in the environment, see run.sh)
"""
import os
import re
import statistics
import sys

results_file, report = sys.argv[1], sys.argv[2]
env = os.environ.get
cells = {}
for line in open(results_file):
    name, *values = line.split()
    cells.setdefault(name, []).append([float(v) for v in values])


def med(name, field):
    """Median over the rounds of field 0 req/s, 1 p50, 2 p99, 3 non-2xx, 4 CPU us/req."""
    rows = cells.get(name)
    return statistics.median(r[field] for r in rows) if rows else None


def cell(name):
    if name not in cells:
        return "-"
    bad = med(name, 3)
    bad = f", {bad:,.0f} non-2xx" if bad else ""
    return (f"{med(name, 0):,.0f} req/s, p99 {med(name, 2):.2f} ms, "
            f"**{med(name, 4):.0f} us CPU**{bad}")


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "n/a"


met = lambda ok: "met" if ok else "**not met**"
out = []
p = out.append
p("<!-- edge: begin (written by bench/run.sh; edit the analysis below, not this part) -->")
p("## Edge: throughput, CPU per request, like for like\n")
p(f"Produced by `bench/run.sh` in one run: wrk, {env('CONNECTIONS')} connections, "
  f"{env('SECONDS_PER_RUN')} s per cell, median of {env('ROUNDS')} interleaved rounds, "
  f"Envoy {env('envoy_version')} with `--concurrency 2`, on **{env('cpu_model')}, "
  f"{env('cores')} cores** shared by wrk, every Envoy, the upstream and the control plane "
  f"(load average {env('load_start')} at the start, {env('load_end')} at the end); "
  f"{env('REVOKED')} entries in the edge revocation set. Each cell: req/s, p99 latency, "
  "and **Envoy CPU time per request** (utime+stime of the Envoy process over the cell, "
  "from `/proc/<pid>/stat`, divided by the requests served): the steadier figure on "
  "shared cores.\n")
p("| scenario | no filter | no-op wasm filter | edge filter | jwt_authn, cache on | "
  "jwt_authn, cache off | like for like | edge / like (req/s) | like / edge (CPU) |")
p("|---|---|---|---|---|---|---|---|---|")
rows = [
    ("EdDSA, one token (cached)", "nofilter/eddsa-one", "noop/eddsa-one", "edge/eddsa-one",
     "jwt-cache/eddsa-one", "jwt-nocache/eddsa-one", "jwt-cache/eddsa-one", "E1"),
    (f"EdDSA, {env('TOKENS')} tokens in turn (cached)", "nofilter/eddsa-one", None,
     "edge/eddsa", "jwt-cache/eddsa", "jwt-nocache/eddsa", "jwt-cache/eddsa", "E1"),
    (f"EdDSA, {env('TOKENS')} tokens, every request verified (edge cache 1 entry)",
     "nofilter/eddsa-one", None, "edge-cold/eddsa", None, "jwt-nocache/eddsa",
     "jwt-nocache/eddsa", "E2"),
    (f"ML-DSA-65, {env('TOKENS')} tokens in turn (cached)", "nofilter/mldsa", None,
     "edge/mldsa", None, None, None, ""),
    (f"ML-DSA-65, {env('TOKENS')} tokens, every request verified", "nofilter/mldsa", None,
     "edge-cold/mldsa", None, None, None, ""),
]
targets = []
for label, nf, noop, edge, jc, jn, like, target in rows:
    like_name = {"jwt-cache/eddsa-one": "jwt_authn cache on", "jwt-cache/eddsa":
                 "jwt_authn cache on", "jwt-nocache/eddsa": "jwt_authn cache off"}.get(like, "-")
    r_rps = ratio(med(edge, 0), med(like, 0)) if like else "-"
    r_cpu = ratio(med(like, 4), med(edge, 4)) if like else "-"
    p(f"| {label} | {cell(nf)} | {cell(noop) if noop else '-'} | {cell(edge)} | "
      f"{cell(jc) if jc else '-'} | {cell(jn) if jn else '-'} | {like_name} | {r_rps} | {r_cpu} |")
    if target and like and med(edge, 0) and med(like, 0):
        v = med(edge, 0) / med(like, 0)
        targets.append(f"{target} ({label}): edge / {like_name} = {v:.2f} req/s "
                       f"(target >= 1.0, {met(v >= 1.0)}); CPU per request "
                       f"{med(edge, 4):.0f} vs {med(like, 4):.0f} us")
p("\nLike for like: the edge filter *with* its verified-token cache against `jwt_authn` "
  "*with* its JWT cache (`jwt_cache_config: {jwt_cache_size: 1000}`), and the edge filter "
  "verifying every request against `jwt_authn` without its cache. `jwt_authn` cannot verify "
  "ML-DSA-65 and has no revocation; the edge filter checks the revocation set on every "
  "request in every row. The no-op wasm filter (`bench/noop-filter`: reads one header, "
  "returns Continue) is the floor of any proxy-wasm filter in this Envoy.\n")
nf_ml, cold_ml = med("nofilter/mldsa", 4), med("edge-cold/mldsa", 4)
native = env("native_mldsa_ns", "")
m = re.search(r"(\d+) ns", native)
if nf_ml and cold_ml and m:
    native_us = int(m.group(1)) / 1000
    cost = cold_ml - nf_ml
    targets.append(f"ML-DSA-65 verifying every request: filter cost {cold_ml:.0f} - "
                   f"{nf_ml:.0f} (no filter) = {cost:.0f} us CPU per request, native verify "
                   f"of the same kind of token {native_us:.0f} us (edge-bench, on-CPU, median of 5): "
                   f"{cost / native_us:.1f}x (target <= 2.5x, {met(cost / native_us <= 2.5)})")

p("## Edge: E3, revoke call -> first 401 (same region)\n")
e3 = env("e3_line", "").split()
if len(e3) == 5:
    p(f"Release control plane, {e3[4]} revocations one after another (`bench/e3.py`): the "
      "time from sending `POST /revoke` for a token's `jti` until the edge filter (cache on, "
      "the token cached) first answers 401 for it, polling the edge back to back.\n")
    p("| p50 | p99 | max | the revoke call's own answer, p50 |")
    p("|---|---|---|---|")
    p(f"| {e3[0]} ms | {e3[1]} ms | {e3[2]} ms | {e3[3]} ms |\n")
    targets.append(f"E3 same region: p99 {e3[1]} ms (p50 {e3[0]} ms; target p99 <= 10 ms, "
                   f"{met(float(e3[1]) <= 10)})")

p(f"## Edge: E5, {int(env('E5_ENTRIES', '0')):,} revocations\n")
e5 = dict(line.split(" ", 1) for line in env("e5_lines", "").splitlines() if " " in line)
counts = dict(line.split() for line in env("counts", "").splitlines() if line.strip())
if e5:
    wire, vm = float(e5["wire_bytes_per_entry"]), float(e5["vm_bytes_per_entry"])
    p("| measure | value | target |")
    p("|---|---|---|")
    p(f"| bytes per entry on the wire (snapshot payload, before base64 and the JWS) | "
      f"{wire:.2f} | <= 8 |")
    p(f"| bytes per entry per VM (keys, expiries, bucket index, not-befores; steady state) | "
      f"{vm:.1f} | <= 12 |")
    p(f"| decode and apply a 1M snapshot natively (the poller) | "
      f"{e5['decode_and_apply_ms_native']} ms | - |")
    if "shared_blob_load_ms_native" in e5:
        p(f"| load the published 1M arrays natively (each worker VM, from shared data, "
          f"after a snapshot) | {e5['shared_blob_load_ms_native']} ms | - |")
    if "one_entry_delta_apply_us_native" in e5:
        p(f"| a one-entry delta on the 1M set natively: the poller applies it / each worker "
          f"loads the recent entries (mean of 200 in a row) | "
          f"{e5['one_entry_delta_apply_us_native']} us / "
          f"{e5['one_entry_delta_load_us_native']} us | - |")
    l1k, l1m = counts.get("lookup-1k"), counts.get("lookup-1m")
    if l1k and l1m:
        p(f"| revocation lookup per request (4 ids, mean over 1,024 tokens), instructions at "
      f"1k / 1M entries | "
          f"{int(l1k):,} / {int(l1m):,} | the same |")
    steady, apply_ = med("e5/steady", 2), med("e5/apply", 2)
    if steady and apply_:
        p(f"| p99 with the 1M set steady / while a fresh 1M snapshot arrives every 1.5 s | "
          f"{steady:.2f} ms / {apply_:.2f} ms ({med('e5/snapshots', 0):.0f} snapshots "
          f"applied per cell) | <= 2x |")
        p(f"\nThe two E5 cells in full: steady {cell('e5/steady')}; while applied "
          f"{cell('e5/apply')}.\n")
        targets.append(f"E5 p99 while a 1M snapshot is applied / steady = "
                       f"{apply_ / steady:.1f}x (target <= 2, {met(apply_ / steady <= 2)})")
    targets.append(f"E5 wire {wire:.2f} B/entry (<= 8, {met(wire <= 8)}), per VM {vm:.1f} "
                   f"B/entry (<= 12, {met(vm <= 12)})")
    if l1k and l1m:
        targets.append(f"E5 lookup at 1M / at 1k = {int(l1m) / int(l1k):.2f}x in instructions "
                       f"({met(int(l1m) <= 1.1 * int(l1k))} if within 10%)")

if counts:
    p("## Edge: instructions per operation (callgrind, `bench/count.sh`)\n")
    p("The decision path (`Authorizer::authorize`: token extraction, cache, signature, "
      "claims, revocation set of 1,000 entries) run natively by `bench/edge-bench`, counted "
      "with `valgrind --tool=callgrind` (setup subtracted): stable on a busy machine, so "
      "changes are judged by these. The wasm build runs the same code in V8.\n")
    p("| operation | instructions |")
    p("|---|---|")
    for k, v in counts.items():
        p(f"| {k} | {int(v):,} |")
    p(f"\nNative verify, on-CPU time (`edge-bench time`): {env('native_mldsa_ns')} (ML-DSA-65), "
      f"{env('native_eddsa_ns')} (Ed25519).\n")

p("## Edge: targets in this run\n")
for t in targets:
    p(f"- {t}")
p("\n<!-- edge: end -->")
text = "\n".join(out) + "\n"
print(text)
if report != "/dev/null":
    old = open(report).read() if os.path.exists(report) else "# Benchmarks\n"
    begin, end = old.find("<!-- edge: begin"), old.find("<!-- edge: end -->")
    if begin >= 0 and end > begin:
        new = old[:begin] + text.rstrip("\n") + old[end + len("<!-- edge: end -->"):]
    else:
        new = "# Benchmarks\n\n" + text
    open(report, "w").write(new)
