"""``TAO_BREV_HOSTS=netns``: each instance is a test host of its own, a network namespace with a veth to this
machine (instance address ``<net>.<n>.2``, this side ``<net>.<n>.1``), its own dockerd and its own sshd.

The slow parts (dockerd, image loads, dockerd's shutdown, removal) run in a detached helper started by the
CLI call that changed the instance's status (``python -m brev_standin.netns up|down|destroy ID``); the
clock-driven transitions wait for it (``hosts/<id>/ready``, ``failed``, ``down``)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from .catalog import Settings

_TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _TESTS not in sys.path:
    sys.path.append(_TESTS)  # the test hosts' code shared with the fleet hosts: tests/hosts
# pylint: disable=wrong-import-position,import-error
from hosts import common, engine  # noqa: E402
from hosts import netns as shared  # noqa: E402


def names(settings, instance):
    """The namespace, veth ends, dockerd socket/pid/exec-root and data root of an instance."""
    tag = hashlib.sha1(settings.dir.encode("utf-8")).hexdigest()[:4]
    number = instance["address"].split(".")[2]
    short = instance["id"][:6]
    return {
        "netns": "brev-%s-%s" % (tag, instance["id"]),
        "host_if": "bh%s-%s" % (number, tag),
        "ns_if": "bn%s-%s" % (number, tag),
        "gateway": "%s.%s.1" % (settings.netns_net, number),
        "sock": "/run/brev-%s-%s.sock" % (tag, short),
        "pidfile": "/run/brev-%s-%s.pid" % (tag, short),
        "exec_root": "/run/brev-%s-%s" % (tag, short),
        "data_root": os.path.join(settings.path("hosts", instance["id"]), "docker"),
    }


def allocate_address(settings, taken):
    """``<net>.<n>.2`` for the lowest n (10-250) that no instance and no interface of this machine uses."""
    used = common.host_addresses()
    for number in range(10, 251):
        address = "%s.%d.2" % (settings.netns_net, number)
        if address not in taken and "%s.%d.1" % (settings.netns_net, number) not in used:
            return address
    raise RuntimeError("no free test network left in %s.0.0/16" % settings.netns_net)


def netns_exists(settings, instance):
    """Whether the instance's namespace is there."""
    return shared.exists(names(settings, instance)["netns"])


def dockerd_pid(settings, instance):
    """The instance's dockerd when it runs."""
    parts = names(settings, instance)
    return common.pid_from(parts["pidfile"], parts["sock"])


def _marker(settings, instance, name):
    return os.path.join(settings.path("hosts", instance["id"]), name)


def state_of(settings, instance):
    """``ready``, ``failed: <message>``, ``down`` or ``busy``: what the last helper left."""
    for name in ("failed", "ready", "down"):
        path = _marker(settings, instance, name)
        if os.path.exists(path):
            if name == "failed":
                with open(path, encoding="utf-8") as handle:
                    return "failed: " + handle.read().strip()
            return name
    return "busy"


def spawn(settings, instance, action):
    """Start the helper for ``action`` (up, down, destroy) in the background, with this call's environment."""
    hostdir = settings.path("hosts", instance["id"])
    os.makedirs(hostdir, mode=0o700, exist_ok=True)
    for name in ("ready", "failed", "down"):
        try:
            os.unlink(os.path.join(hostdir, name))
        except FileNotFoundError:
            pass
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from brev_standin.netns import main; main(sys.argv[1:])"
    with open(os.path.join(hostdir, "helper.log"), "a", encoding="utf-8") as log:
        subprocess.Popen([sys.executable, "-I", "-c", code, package_parent, action, json.dumps(instance)],  # pylint: disable=consider-using-with
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=dict(os.environ))


def up(settings, instance):
    """Namespace, veth, dockerd (and the images on its first boot)."""
    parts = names(settings, instance)
    if not netns_exists(settings, instance):
        shared.create(parts["netns"], parts["host_if"], parts["gateway"], instance["address"], parts["ns_if"])
    sock = "unix://" + parts["sock"]
    if dockerd_pid(settings, instance) is None:
        os.makedirs(parts["data_root"], exist_ok=True)
        engine.start(["nsenter", "--net=" + shared.path(parts["netns"])],
                     ["--data-root", parts["data_root"], "--exec-root", parts["exec_root"], "--pidfile", parts["pidfile"],
                      "-H", sock, "--bip", "172.31.0.1/24"],
                     os.path.join(settings.path("hosts", instance["id"]), "dockerd.log"), lambda: engine.answers(sock))
    loaded = os.path.join(settings.path("hosts", instance["id"]), "images-loaded")
    if not os.path.exists(loaded):
        engine.copy_images(settings.images, sock)
        with open(loaded, "w", encoding="utf-8") as handle:
            handle.write("\n".join(sorted(settings.images)) + "\n")


def stop_dockerd(settings, instance, wait=30.0):
    """Stop the instance's dockerd (its containers stop with it: live-restore is off)."""
    pid = dockerd_pid(settings, instance)
    if pid is not None:
        engine.stop(pid, names(settings, instance)["sock"], wait=wait)


def destroy(settings, instance):
    """Everything of the host: dockerd, namespace, veth, data."""
    stop_dockerd(settings, instance)
    parts = names(settings, instance)
    shared.delete(parts["netns"], parts["host_if"])
    shutil.rmtree(parts["data_root"], ignore_errors=True)
    shutil.rmtree(parts["exec_root"], ignore_errors=True)
    for path in (parts["sock"], parts["pidfile"]):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main(argv):
    """``up|down|destroy <instance JSON>`` (the helper), or ``destroy-all`` (scripts/ensure-brev.sh --down)."""
    settings = Settings()
    action = argv[0]
    if action == "destroy-all":
        try:
            with open(settings.path("state.json"), encoding="utf-8") as handle:
                instances = json.load(handle).get("instances", [])
        except (OSError, ValueError):
            instances = []
        for instance in instances:
            if instance.get("hosts") == "netns":
                destroy(settings, instance)
        return
    instance = json.loads(argv[1])
    hostdir = settings.path("hosts", instance["id"])
    try:
        if action == "up":
            up(settings, instance)
            done = "ready"
        elif action == "down":
            stop_dockerd(settings, instance)
            done = "down"
        else:
            destroy(settings, instance)
            done = "down"
    except (RuntimeError, OSError) as exc:
        os.makedirs(hostdir, exist_ok=True)
        with open(os.path.join(hostdir, "failed"), "w", encoding="utf-8") as handle:
            handle.write(str(exc) + "\n")
        return
    if os.path.isdir(hostdir):
        with open(os.path.join(hostdir, done), "w", encoding="utf-8") as handle:
            handle.write("%s\n" % time.time())
