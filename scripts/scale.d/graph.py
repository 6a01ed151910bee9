#!/usr/bin/env python3
"""The fake Meta Graph API for scripts/scale: answers every POST with 200 and a message
id, and appends one line per request it received to LOG ("<unix time> <path>"), flushed
at once, so the script counts the replies per comment (POST /{comment_id}/replies).
  graph.py ADDR PORT LOG"""
import itertools
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import time

addr, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
log = open(log_path, "a", buffering=1)
lock = threading.Lock()
ids = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with lock:
            log.write(f"{time.time():.3f} {self.path}\n")
            mid = next(ids)
        body = json.dumps({"id": f"graph_reply_{mid}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


Server((addr, port), Handler).serve_forever()
