"""Benchmark stand-in for ComfyUI: loads every custom node's .env with python-dotenv, as real nodes
do when ComfyUI imports them (before it serves), prints what ComfyUI prints on stderr as it starts
(../shared/fixtures/comfyui/startup.log: its device lines, one "Import times" line per node, then
"To see the GUI go to:" once it listens), then answers HTTP on --port and exits on SIGINT/SIGTERM.
The same stand-in runs under gpu-boot and under the hand-written peer, whose launchers relay that
output alike."""
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


def say(line):
    # ComfyUI logs through logging.StreamHandler on stderr: one write of the record and its newline,
    # then a flush (print() would make two writes, the text and then "\n").
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


for line in ("Total VRAM 24105 MB, total RAM 24105 MB", "pytorch version: 2.3.1", "Set vram state to: NORMAL_VRAM",
             "Device: cuda:0 NVIDIA A100-SXM4-40GB : cudaMallocAsync", "VAE dtype: torch.bfloat16", "Using pytorch cross attention"):
    say(line)
imported = []
# Every node of the bench's workspaces declares secrets: a node without its .env is a failed boot.
if os.path.isdir(nodes):
    for name in sorted(os.listdir(nodes)):
        env = os.path.join(nodes, name, ".env")
        if not dotenv_values(env):
            sys.exit(f"{env}: missing or empty")
        imported.append(os.path.join(nodes, name))
say("\nImport times for custom nodes:")
for node in imported:
    say(f"   0.0 seconds: {node}")
server = HTTPServer((host, port), Handler)
say("\nStarting server\n")
say(f"To see the GUI go to: http://{host}:{port}")
# When it started and when it began to serve, for the bench's breakdown (launcher vs instance).
times = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "times")
if os.path.isdir(times):
    with open(os.path.join(times, f"{port}.json"), "w") as out:
        json.dump({"started": STARTED, "serving": time.time(), "cpu": time.process_time()}, out)
server.serve_forever()
