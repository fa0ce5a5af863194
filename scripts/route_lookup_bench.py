#!/usr/bin/env python3
"""Route lookup latency against a running `cdrs demo` (release build):
GET /v1/route one key at a time over one keep-alive connection, and
POST /v1/route with 1,000 keys. Usage:
  scripts/route_lookup_bench.py target/release/cdrs target/wasm32-wasip2/plugin
"""
import http.client, json, subprocess, sys, time, re, statistics
p = subprocess.Popen([sys.argv[1], "demo", "--plugin-dir", sys.argv[2], "--records", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
addr = None
for line in p.stdout:
    m = re.search(r"http://([0-9.:]+)/ui", line)
    if m:
        addr = m.group(1); break
host, port = addr.split(":")
c = http.client.HTTPConnection(host, int(port))

def get(k):
    c.request("GET", f"/v1/route?key={k}")
    r = c.getresponse(); body = r.read(); assert r.status == 200, body
    return json.loads(body)
print(get("client-0042"))
lat = []
for i in range(500):
    t = time.perf_counter(); get(f"client-{i:04d}"); lat.append((time.perf_counter() - t) * 1e6)
lat.sort()
print(f"GET one key: p50 {lat[len(lat)//2]:.0f} µs, p99 {lat[int(len(lat)*0.99)]:.0f} µs (n=500, keep-alive, HTTP included)")
body = json.dumps({"records": [{"key": f"client-{i:04d}"} for i in range(1000)]})
per = []
for _ in range(20):
    t = time.perf_counter()
    c.request("POST", "/v1/route", body=body, headers={"content-type": "application/json"})
    r = c.getresponse(); out = r.read(); assert r.status == 200, out
    per.append((time.perf_counter() - t) * 1e6 / 1000)
per.sort()
print(f"POST 1,000 keys: median {per[len(per)//2]:.2f} µs per key (20 requests, HTTP and JSON included)")
p.terminate()
try:
    p.wait(30)
except Exception:
    p.kill()
