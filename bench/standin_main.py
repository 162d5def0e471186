"""Benchmark stand-in for ComfyUI: loads every custom node's .env with python-dotenv, as real nodes
do when ComfyUI imports them (before it serves), then answers HTTP at once on --port and exits on
SIGINT/SIGTERM. The same stand-in runs under gpu-boot and under the hand-written peer."""
import time

STARTED = time.time()

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from dotenv import dotenv_values


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
host = args[args.index("--listen") + 1] if "--listen" in args else "127.0.0.1"
nodes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "custom_nodes")
# Every node of the bench's workspaces declares secrets: a node without its .env is a failed boot.
if os.path.isdir(nodes):
    for name in sorted(os.listdir(nodes)):
        env = os.path.join(nodes, name, ".env")
        if not dotenv_values(env):
            sys.exit(f"{env}: missing or empty")
server = HTTPServer((host, port), Handler)
# When it started and when it began to serve, for the bench's breakdown (launcher vs instance).
times = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "times")
if os.path.isdir(times):
    with open(os.path.join(times, f"{port}.json"), "w") as out:
        json.dump({"started": STARTED, "serving": time.time(), "cpu": time.process_time()}, out)
server.serve_forever()
