"""Benchmark stand-in for ComfyUI: answers HTTP at once on --port, exits on SIGINT/SIGTERM."""
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


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
HTTPServer((host, port), Handler).serve_forever()
