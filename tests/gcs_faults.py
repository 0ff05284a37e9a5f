"""A fault switch for the fake GCS (issue 14): a plain-HTTP proxy in front of fake-gcs-server that
answers chosen requests with an error status or stalls them, and passes the rest through.

    client ──> fault proxy ──> fake-gcs-server
TensorStore (TENSORSTORE_GCS_HTTP_URL) and google-cloud-storage (STORAGE_EMULATOR_HOST) talk to
it directly; TensorFlow's gs:// client reaches it through fake_gcs's TLS proxy, which forwards
here instead of to the store. `fake_gcs.FakeGcs(faults=True)` puts it in place; its `.faults` is
a `Faults` client for the test.

Rules are set by the test through the proxy's control endpoint (`/_faults`, JSON): each names a
method ("*" for any), a regular expression searched in the request's percent-decoded path and
query (object names appear as `name=...` in uploads and as `/o/<name>` in reads), what to do
("status": answer with `status`, 503 by default; "stall": hold the request `stall_s` seconds and
close the connection without an answer), and how many matching requests to hit (`times`, -1: all
of them). A request that no rule with faults left matches is forwarded. The proxy counts requests
seen, requests forwarded and faults served per rule, and keeps a log of (method, name, outcome),
so a test can show that a client really came back after a fault.

Run as `python gcs_faults.py PORT_FILE UPSTREAM_PORT` (its own process, like the TLS proxy).
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import urllib.parse
import urllib.request

CONTROL = "/_faults"


class Faults:
    """The test's handle on a running fault proxy."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, method: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + CONTROL, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def set(self, *rules: dict) -> None:
        """Replaces the rules (and zeroes the counters and the log). A rule:
        {"method": "POST", "match": "checkpoints/6/", "kind": "status", "status": 503,
         "times": 3}; "kind": "stall" takes "stall_s"."""
        self._call("PUT", {"rules": list(rules)})

    def clear(self) -> None:
        self.set()

    def stats(self) -> dict:
        """{"seen": n, "forwarded": n, "rules": [{..., "matched": n, "served": n}], "log": [...]}"""
        return self._call("GET")


# --------------------------------------------------------------------------- the proxy process

def _name(path: str) -> str:
    """What a request is about, for the log: the object name when there is one."""
    parsed = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(parsed.query)
    if "name" in query:
        return query["name"][0]
    parts = urllib.parse.unquote(parsed.path).split("/o/", 1)
    return parts[1] if len(parts) == 2 else urllib.parse.unquote(parsed.path)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[dict] = []
        self.seen = 0
        self.forwarded = 0
        self.log: list[list] = []

    def reset(self, rules: list[dict]) -> None:
        compiled = []
        for r in rules:
            r = {"method": "*", "kind": "status", "status": 503, "times": -1, "stall_s": 30.0,
                 **r, "matched": 0, "served": 0}
            re.compile(r["match"])
            compiled.append(r)
        with self.lock:
            self.rules, self.seen, self.forwarded, self.log = compiled, 0, 0, []

    def decide(self, method: str, path: str) -> dict | None:
        target = urllib.parse.unquote(path)
        with self.lock:
            self.seen += 1
            for r in self.rules:
                if r["method"] not in ("*", method) or not re.search(r["match"], target):
                    continue
                r["matched"] += 1
                if r["times"] < 0 or r["served"] < r["times"]:
                    r["served"] += 1
                    self._note(method, path, r["kind"] if r["kind"] == "stall" else r["status"])
                    return dict(r)
            self.forwarded += 1
            return None

    def _note(self, method: str, path: str, outcome) -> None:
        if len(self.log) < 20000:
            self.log.append([round(time.time(), 3), method, _name(path)[:300], outcome])

    def note(self, method: str, path: str, outcome) -> None:
        with self.lock:
            self._note(method, path, outcome)

    def snapshot(self) -> dict:
        with self.lock:
            return {"seen": self.seen, "forwarded": self.forwarded,
                    "rules": [dict(r) for r in self.rules], "log": list(self.log)}


def _serve(port_file: str, upstream_port: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fake_gcs

    state = _State()

    class Handler(fake_gcs._ForwardHandler):
        rewrite_location = False  # clients come back through here, on plain HTTP

        def _control(self) -> None:
            if self.command == "PUT":
                body = json.loads(self._read_body() or b"{}")
                try:
                    state.reset(body.get("rules", []))
                except (re.error, KeyError, TypeError) as e:
                    return self._answer(400, {"error": str(e)})
            self._answer(200, state.snapshot())

        def _answer(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _forward(self) -> None:
            if self.path.split("?", 1)[0] == CONTROL:
                return self._control()
            rule = state.decide(self.command, self.path)
            if rule is None:
                status = super()._forward()
                state.note(self.command, self.path, status)
                return
            self._read_body()  # the client sent it; a real server would have read it too
            if rule["kind"] == "stall":
                time.sleep(float(rule["stall_s"]))
                self.close_connection = True
                return
            status = int(rule["status"])
            self._answer(status, {"error": {"code": status, "message": "injected by gcs_faults",
                                            "errors": [{"reason": "backendError"}]}})

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

    Handler.upstream_port = upstream_port
    server = fake_gcs._ThreadingServer(("127.0.0.1", 0), Handler)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__" and len(sys.argv) == 3:
    _serve(sys.argv[1], int(sys.argv[2]))
