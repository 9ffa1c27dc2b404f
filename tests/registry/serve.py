"""A loopback Docker registry (HTTP API v2, read-only) serving one made-up image, slowly.

For the pull tests: no container registry can be reached from the test machines, so this
serves an image made here (``--layers`` layers of random bytes, so nothing compresses them
away; or ``--saved`` the image of a ``docker save`` tar) at ``127.0.0.1:<port>/<any name>:<any tag>``, over plain HTTP (dockerd trusts
127.0.0.0/8 as an insecure registry by default). Each blob is sent at ``--rate`` bytes a
second, so that a pull takes long enough to be watched. ``GET /stats`` answers how often each
blob was fetched. It prints ``PORT <port>`` once it listens and runs until it is killed.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import threading
import time

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(index, size):
    """(gzip blob, diff_id) of a layer holding one file of ``size`` random bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("data/layer%d.bin" % index)
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), _digest(tar_bytes)


def make_image(sizes):
    """``(manifest bytes, {digest: blob})`` of an image with one layer per size."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    built = [_layer(index, size) for index, size in enumerate(sizes)]
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/true"]},
              "rootfs": {"type": "layers", "diff_ids": [diff_id for _blob, diff_id in built]},
              "history": [{"created_by": "tests/registry/serve.py"}] * len(sizes)}
    return _manifest(config, [blob for blob, _diff_id in built])


def from_saved(path):
    """``(manifest bytes, {digest: blob})`` of the image in a ``docker save`` tar (its first image). Each
    layer is gzipped with a random header time, so its digest is new to the engine and it is sent whole;
    the config gets a random label, so the image is new too."""
    with tarfile.open(path) as saved:
        described = json.load(saved.extractfile("manifest.json"))[0]
        config = json.load(saved.extractfile(described["Config"]))
        # A config of its own (a label), so the engine takes it for an image it does not have.
        config.setdefault("config", {}).setdefault("Labels", {})
        config["config"]["Labels"] = dict(config["config"]["Labels"] or {}, **{"tao.test.copy": os.urandom(4).hex()})
        blobs = [gzip.compress(saved.extractfile(layer).read(), compresslevel=1, mtime=int.from_bytes(
            os.urandom(3), "big")) for layer in described["Layers"]]
    return _manifest(config, blobs)


def _manifest(config, layer_blobs):
    blobs, layers = {}, []
    for blob in layer_blobs:
        blobs[_digest(blob)] = blob
        layers.append({"mediaType": LAYER_TYPE, "size": len(blob), "digest": _digest(blob)})
    config = json.dumps(config).encode()
    blobs[_digest(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                           "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": _digest(config)},
                           "layers": layers}).encode()
    return manifest, blobs


class Registry(object):
    def __init__(self, sizes, rate, saved=None):
        self.manifest, self.blobs = from_saved(saved) if saved else make_image(sizes)
        self.rate = rate
        self.fetches = {}
        self.lock = threading.Lock()


def handler_for(registry):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status, body=b"", headers=None, slow=False):
            self.send_response(status)
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if not slow:
                self.wfile.write(body)
                return
            chunk = 16 << 10
            for offset in range(0, len(body), chunk):
                self.wfile.write(body[offset:offset + chunk])
                self.wfile.flush()
                time.sleep(chunk / float(registry.rate))

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/stats":
                with registry.lock:
                    body = json.dumps({"fetches": registry.fetches}).encode()
                return self._send(200, body, {"Content-Type": "application/json"})
            if path in ("/v2", "/v2/"):
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            parts = path.split("/")
            if len(parts) >= 5 and parts[1] == "v2" and parts[-2] == "manifests":
                return self._send(200, registry.manifest, {"Content-Type": MANIFEST_TYPE,
                                                           "Docker-Content-Digest": _digest(registry.manifest)})
            if len(parts) >= 5 and parts[1] == "v2" and parts[-2] == "blobs" and parts[-1] in registry.blobs:
                digest = parts[-1]
                if self.command == "GET":
                    with registry.lock:
                        registry.fetches[digest] = registry.fetches.get(digest, 0) + 1
                return self._send(200, registry.blobs[digest], {"Content-Type": "application/octet-stream",
                                                                "Docker-Content-Digest": digest}, slow=True)
            return self._send(404, json.dumps({"errors": [{"code": "NAME_UNKNOWN", "message": path}]}).encode(),
                              {"Content-Type": "application/json"})

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1500000,1000000,500000", help="layer sizes in bytes, comma-separated")
    parser.add_argument("--rate", type=int, default=400000, help="bytes a second for each blob")
    parser.add_argument("--saved", help="serve the image of this `docker save` tar instead")
    args = parser.parse_args(argv)
    registry = Registry([int(size) for size in args.layers.split(",")], args.rate, args.saved)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(registry))
    server.daemon_threads = True
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    sys.exit(main())
