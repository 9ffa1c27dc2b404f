"""``python -m k8s_standin --state-dir DIR``: serve the stand-in API on https://127.0.0.1:PORT.

DIR holds ``server.crt``, ``server.key``, ``ca.crt`` and ``token`` (written by scripts/ensure-kubernetes.sh).
On SIGTERM or SIGINT every container, docker volume and listener the stand-in made is removed.
``--check`` exits 0 when a stand-in with DIR's CA and token answers on PORT."""

import argparse
import json
import logging
import os
import signal
import ssl
import sys
import threading
import urllib.error
import urllib.request

from .api import ApiServer
from .cluster import ENDPOINTS, Cluster, Config
from .controllers import ControllerManager, EventRecorder
from .docker import Docker
from .kubelet import Kubelet
from .model import RESOURCES, already_exists, new_uid, now
from .network import ServiceNetwork
from .validation import preload

LOG = logging.getLogger("k8s_standin")


def _env_number(name: str, default: str, kind: type = int) -> object:
    value = os.environ.get(name) or default
    try:
        return kind(value)
    except ValueError:
        raise SystemExit("%s must be a number, not %r" % (name, value)) from None


def parse_args(argv: object = None) -> argparse.Namespace:
    """The command line (defaults from the TAO_K8S_* environment)."""
    parser = argparse.ArgumentParser(prog="python -m k8s_standin", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--state-dir", required=True, help="folder with server.crt, server.key, ca.crt, token")
    parser.add_argument("--port", type=int, default=_env_number("TAO_K8S_PORT", "6443"))
    parser.add_argument("--gpus", type=int, default=_env_number("TAO_K8S_GPUS", "1"),
                        help="nvidia.com/gpu the node advertises (TAO_K8S_GPUS, default 1)")
    parser.add_argument("--lb-delay", type=float, default=_env_number("TAO_K8S_LB_DELAY", "1", float),
                        help="seconds before a LoadBalancer gets its address (TAO_K8S_LB_DELAY, default 1)")
    parser.add_argument("--probe-cap", type=float, default=_env_number("TAO_K8S_PROBE_CAP", "1", float),
                        help="cap on probe periods and initial delays in seconds (TAO_K8S_PROBE_CAP, default 1)")
    parser.add_argument("--backoff-cap", type=float, default=_env_number("TAO_K8S_BACKOFF_CAP", "10", float),
                        help="cap on restart and image pull back-off in seconds (TAO_K8S_BACKOFF_CAP, default 10)")
    parser.add_argument("--pid-file", help="write the server's pid here")
    parser.add_argument("--check", action="store_true", help="exit 0 if a stand-in answers on --port")
    return parser.parse_args(argv)  # type: ignore[arg-type]


def check(args: argparse.Namespace) -> int:
    """0 if ``/readyz`` answers ``ok`` with the state dir's CA and token."""
    state = os.path.abspath(args.state_dir)
    try:
        with open(os.path.join(state, "token"), encoding="ascii") as handle:
            token = handle.read().strip()
        context = ssl.create_default_context(cafile=os.path.join(state, "ca.crt"))
        request = urllib.request.Request("https://127.0.0.1:%d/readyz" % args.port,
                                         headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request, timeout=3, context=context) as response:
            return 0 if response.status == 200 and response.read() == b"ok" else 1
    except (OSError, urllib.error.URLError, ssl.SSLError, ValueError):
        return 1


def bootstrap_endpoints(cluster: Cluster) -> None:
    """The ``kubernetes`` Service's Endpoints: the API server itself."""
    body = {"kind": "Endpoints", "apiVersion": "v1",
            "metadata": {"name": "kubernetes", "namespace": "default", "uid": new_uid(), "creationTimestamp": now(),
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": cluster.config.address}],
                         "ports": [{"name": "https", "port": cluster.config.port, "protocol": "TCP"}]}]}
    cluster.store.create(ENDPOINTS, body, lambda: already_exists(ENDPOINTS, "kubernetes"))


def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT, then remove everything the stand-in made."""
    state = os.path.abspath(args.state_dir)
    with open(os.path.join(state, "token"), encoding="ascii") as handle:
        token = handle.read().strip()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(state, "server.crt"), os.path.join(state, "server.key"))
    config = Config(state_dir=state, port=args.port, gpus=args.gpus, lb_delay=args.lb_delay, probe_cap=args.probe_cap,
                    backoff_cap=args.backoff_cap)
    cluster = Cluster(config)
    docker = Docker()
    events = EventRecorder(cluster)
    cluster.kubelet = Kubelet(cluster, events, docker)
    cluster.kubelet.remove_leftovers()
    cluster.controllers = ControllerManager(cluster, events)
    cluster.network = ServiceNetwork(cluster, events)
    preload(RESOURCES)
    cluster.bootstrap()
    bootstrap_endpoints(cluster)
    server = ApiServer((config.address, config.port), cluster, context, token)
    cluster.controllers.start()
    if args.pid_file:
        with open(args.pid_file, "w", encoding="ascii") as handle:
            handle.write("%d\n" % os.getpid())

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("serving %s", json.dumps({"address": "https://%s:%d" % (config.address, config.port), "gpus": config.gpus,
                                       "docker": docker.version, "state_dir": state}))
    try:
        server.serve_forever()
    finally:
        LOG.info("stopping: removing the containers, volumes and listeners of the stand-in")
        server.server_close()
        cluster.controllers.stop()
        cluster.kubelet.shutdown()
        cluster.network.shutdown()
        if args.pid_file and os.path.exists(args.pid_file):
            os.unlink(args.pid_file)
        LOG.info("stopped")
    return 0


def main(argv: object = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.check:
        return check(args)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
