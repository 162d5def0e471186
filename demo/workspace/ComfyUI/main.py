"""A stand-in for ComfyUI's main.py, for the demo and the tests.

It does what matters to gpu-boot: takes ComfyUI's flags (--listen, --port,
--cuda-device / --cpu), imports every custom node the way ComfyUI does (each
node's __init__.py calls python-dotenv's load_dotenv on its own .env), and
answers HTTP on its port. GET /gpu-boot/nodes reports, per node, whether its
.env existed at start, its mode, and a SHA-256 of each value: never a value.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dotenv import dotenv_values

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--cuda-device", type=int)
parser.add_argument("--cpu", action="store_true")
args, extra = parser.parse_known_args()

here = os.path.dirname(os.path.abspath(__file__))
nodes_dir = os.path.join(here, "custom_nodes")
report = {
    "pid": os.getpid(),
    "port": args.port,
    "cudaDevice": args.cuda_device,
    "cpu": args.cpu,
    "extraArgs": extra,
    "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "GPU_INDEX", "GPU_MODEL", "GPU_MEMORY_GB")},
    "nodes": {},
}

for name in sorted(os.listdir(nodes_dir)):
    folder = os.path.join(nodes_dir, name)
    if not os.path.isdir(folder):
        continue
    env_path = os.path.join(folder, ".env")
    entry = {"envFile": os.path.exists(env_path)}
    if entry["envFile"]:
        entry["mode"] = oct(os.stat(env_path).st_mode & 0o777)
        values = dotenv_values(env_path)
        entry["keys"] = sorted(values)
        entry["sha256"] = {k: hashlib.sha256((v or "").encode()).hexdigest() for k, v in values.items()}
    init = os.path.join(folder, "__init__.py")
    if os.path.exists(init):
        spec = importlib.util.spec_from_file_location(f"custom_nodes.{name}", init)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    report["nodes"][name] = entry
    print(f"[stand-in] node {name}: {len(entry.get('keys', []))} key(s) from .env", flush=True)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(report if self.path.startswith("/gpu-boot/") else {"system": "comfyui-stand-in", "port": args.port}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def stop(signum, _frame):
    print(f"[stand-in] signal {signum}: exiting", flush=True)
    sys.exit(0)


signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
server = ThreadingHTTPServer((args.listen, args.port), Handler)
device = "cpu" if args.cpu else f"cuda:{args.cuda_device}"
print(f"[stand-in] listening on {args.listen}:{args.port} ({device})", flush=True)
server.serve_forever()
