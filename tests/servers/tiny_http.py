"""A minimal member for pool tests (stdlib only): `/healthz` answers 200, every other path answers JSON
describing this process, so tests can see which process served them and what it was launched with."""
import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

hits = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global hits
        if self.path == "/healthz":
            body = b"ok"
        else:
            with lock:
                hits += 1
                n = hits
            body = json.dumps({"pid": os.getpid(), "hits": n, "port_env": os.environ.get("PORT"),
                               "wf_test": os.environ.get("WF_TEST"), "executable": sys.executable}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM, to test SIGKILL escalation")
    args = ap.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
