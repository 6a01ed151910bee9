#!/usr/bin/env python3
"""The load of scripts/scale: signed Meta comment webhooks (the shape `hookq send
--sample comment` sends), each to one of several Instagram accounts, paced at RATE per
second over CONCURRENCY connections to one API host. An event that is not acknowledged
(a 503 while the database fails over, a connection error) is sent again, byte for byte,
every RETRY_DELAY seconds for up to RETRY_FOR seconds, as Meta retries a webhook.

Unlike `hookq send` (which only counts), it records every request, so the script knows
exactly which events were acknowledged and with which log ids:
  OUT gets one line per request: "<comment id> <http status or 0> <start> <end> <ids,>"
  send.py --url URL --prefix P --count N --rate R --concurrency C --accounts A1,A2,...
          --out OUT [--retry-for S] [--retry-delay S]   (META_APP_SECRET from the env)"""
import argparse
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time
from urllib.parse import urlsplit

p = argparse.ArgumentParser()
p.add_argument("--url", required=True)
p.add_argument("--prefix", required=True)
p.add_argument("--count", type=int, required=True)
p.add_argument("--rate", type=float, default=0)
p.add_argument("--concurrency", type=int, default=16)
p.add_argument("--accounts", required=True)
p.add_argument("--out", required=True)
p.add_argument("--retry-for", type=float, default=90)
p.add_argument("--retry-delay", type=float, default=0.5)
a = p.parse_args()

secret = os.environ["META_APP_SECRET"].encode()
accounts = a.accounts.split(",")
u = urlsplit(a.url)
out = open(a.out, "a", buffering=1)
out_lock = threading.Lock()
next_lock = threading.Lock()
next_i = 0
start = time.time()


def body(i):
    cid = f"{a.prefix}_{i}"
    v = {"object": "instagram", "entry": [{"id": accounts[i % len(accounts)], "time": int(time.time()),
         "changes": [{"field": "comments", "value": {
             "from": {"id": f"u{a.prefix}{i}", "username": "scale"}, "media": {"id": "scale_post"},
             "id": cid, "text": f"Scale comment {i}"}}]}]}
    b = json.dumps(v, separators=(",", ":")).encode()
    sig = "sha256=" + hmac.new(secret, b, hashlib.sha256).hexdigest()
    return cid, b, sig


def run():
    global next_i
    conn = None
    while True:
        with next_lock:
            i = next_i
            next_i += 1
        if i >= a.count:
            break
        if a.rate > 0:
            due = start + i / a.rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
        cid, b, sig = body(i)
        first = time.time()
        while True:
            t0 = time.time()
            status, ids = 0, []
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
                conn.request("POST", "/webhooks/instagram", body=b, headers={
                    "Content-Type": "application/json", "X-Hub-Signature-256": sig})
                r = conn.getresponse()
                data = r.read()
                status = r.status
                if status == 200:
                    ids = json.loads(data).get("ids", [])
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception:
                if conn is not None:
                    conn.close()
                conn = None
            t1 = time.time()
            with out_lock:
                out.write(f"{cid} {status} {t0:.3f} {t1:.3f} {','.join(map(str, ids)) or '-'}\n")
            if status == 200 or t1 - first > a.retry_for:
                break
            time.sleep(a.retry_delay)


threads = [threading.Thread(target=run) for _ in range(a.concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"sender {a.prefix}: {a.count} events in {time.time() - start:.1f}s", file=sys.stderr)
