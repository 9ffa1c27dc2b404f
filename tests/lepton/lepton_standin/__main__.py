"""``python -m lepton_standin --state-dir DIR``: serve the stand-in Lepton API on http://127.0.0.1:PORT.

DIR holds ``token`` (the workspace token) and ``viewer-token`` (a token that may only read), written by
scripts/ensure-lepton.sh; tokens are never taken from the command line. On SIGTERM or SIGINT every
container and listener the stand-in made is removed. ``--check`` exits 0 when a stand-in with DIR's
token answers on PORT for the workspace."""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import urllib.error
import urllib.request

from .api import ApiServer
from .docker import Docker
from .workspace import Config, Workspace

LOG = logging.getLogger("lepton_standin")


def _env_number(name: str, default: str, kind: type = int) -> object:
    value = os.environ.get(name) or default
    try:
        return kind(value)
    except ValueError:
        raise SystemExit("%s must be a number, not %r" % (name, value)) from None


def parse_args(argv: object = None) -> argparse.Namespace:
    """The command line (defaults from the TAO_LEPTON_* environment)."""
    parser = argparse.ArgumentParser(prog="python -m lepton_standin", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--state-dir", required=True, help="folder with token and viewer-token")
    parser.add_argument("--port", type=int, default=_env_number("TAO_LEPTON_PORT", "7700"))
    parser.add_argument("--workspace-id", default=os.environ.get("TAO_LEPTON_WORKSPACE") or "taotestws")
    parser.add_argument("--node-group", default=os.environ.get("TAO_LEPTON_NODE_GROUP") or "tao-test-ng",
                        help="the dedicated node group's name")
    parser.add_argument("--nodes", type=int, default=_env_number("TAO_LEPTON_NODES", "1"))
    parser.add_argument("--gpus", type=int, default=_env_number("TAO_LEPTON_GPUS", "2"),
                        help="GPUs each node of the node group has (accounted, never attached)")
    parser.add_argument("--quota-gpus", type=int, default=_env_number("TAO_LEPTON_QUOTA_GPUS", "8"),
                        help="the workspace's accelerator quota")
    parser.add_argument("--backoff-cap", type=float, default=_env_number("TAO_LEPTON_BACKOFF_CAP", "10", float))
    parser.add_argument("--pid-file", help="write the server's pid here")
    parser.add_argument("--check", action="store_true", help="exit 0 if a stand-in answers on --port")
    return parser.parse_args(argv)  # type: ignore[arg-type]


def _read(state: str, name: str) -> str:
    with open(os.path.join(state, name), encoding="ascii") as handle:
        return handle.read().strip()


def check(args: argparse.Namespace) -> int:
    """0 if ``GET /workspace`` answers with DIR's token."""
    try:
        token = _read(os.path.abspath(args.state_dir), "token")
        request = urllib.request.Request("http://127.0.0.1:%d/api/v2/workspaces/%s/workspace" % (args.port, args.workspace_id),
                                         headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request, timeout=3) as response:
            return 0 if response.status == 200 and json.loads(response.read()).get("workspace_name") else 1
    except (OSError, urllib.error.URLError, ValueError):
        return 1


def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT, then remove everything the stand-in made."""
    state = os.path.abspath(args.state_dir)
    config = Config(state_dir=state, port=args.port, workspace_id=args.workspace_id, token=_read(state, "token"),
                    viewer_token=_read(state, "viewer-token"), gpus=args.gpus, nodes=args.nodes,
                    quota_gpus=args.quota_gpus, node_group=args.node_group, backoff_cap=args.backoff_cap)
    docker = Docker()
    workspace = Workspace(config)
    server = ApiServer(workspace, docker)
    server.runtime.remove_leftovers()
    if args.pid_file:
        with open(args.pid_file, "w", encoding="ascii") as handle:
            handle.write("%d\n" % os.getpid())

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("serving %s", json.dumps({"url": "http://%s:%d/api/v2/workspaces/%s" % (config.address, config.port,
                                                                                     config.workspace_id),
                                       "node_group": config.node_group, "nodes": config.nodes, "gpus": config.gpus,
                                       "quota_gpus": args.quota_gpus, "docker": docker.version, "state_dir": state}))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        LOG.info("stopping: removing the containers and listeners of the stand-in")
        server.server_close()
        server.close_all()
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
