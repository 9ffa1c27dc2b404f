"""``TAO_BREV_HOSTS=netns``: each instance is a test host of its own, a network namespace with a veth to this
machine (instance address ``<net>.<n>.2``, this side ``<net>.<n>.1``), its own dockerd and its own sshd.

The slow parts (dockerd, image loads, dockerd's shutdown, removal) run in a detached helper started by the
CLI call that changed the instance's status (``python -m brev_standin.netns up|down|destroy ID``); the
clock-driven transitions wait for it (``hosts/<id>/ready``, ``failed``, ``down``)."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from .catalog import Settings


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


def host_addresses():
    """IPv4 addresses configured on this machine's interfaces."""
    proc = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False)
    found = set()
    for line in proc.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            found.add(fields[fields.index("inet") + 1].split("/")[0])
    return found


def allocate_address(settings, taken):
    """``<net>.<n>.2`` for the lowest n (10-250) that no instance and no interface of this machine uses."""
    used = host_addresses()
    for number in range(10, 251):
        address = "%s.%d.2" % (settings.netns_net, number)
        if address not in taken and "%s.%d.1" % (settings.netns_net, number) not in used:
            return address
    raise RuntimeError("no free test network left in %s.0.0/16" % settings.netns_net)


def netns_exists(settings, instance):
    """Whether the instance's namespace is there."""
    return os.path.exists("/run/netns/" + names(settings, instance)["netns"])


def _pid(path, word):
    try:
        with open(path, encoding="utf-8") as handle:
            pid = int(handle.read().strip() or 0)
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            line = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return None
    return pid if word in line and state != "Z" else None


def dockerd_pid(settings, instance):
    """The instance's dockerd when it runs."""
    parts = names(settings, instance)
    return _pid(parts["pidfile"], parts["sock"])


def _run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)


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
        steps = [
            ["ip", "netns", "add", parts["netns"]],
            ["ip", "link", "add", parts["host_if"], "type", "veth", "peer", "name", parts["ns_if"]],
            ["ip", "link", "set", parts["ns_if"], "netns", parts["netns"]],
            ["ip", "addr", "add", parts["gateway"] + "/24", "dev", parts["host_if"]],
            ["ip", "link", "set", parts["host_if"], "up"],
            ["ip", "netns", "exec", parts["netns"], "ip", "addr", "add", instance["address"] + "/24", "dev", parts["ns_if"]],
            ["ip", "netns", "exec", parts["netns"], "ip", "link", "set", parts["ns_if"], "up"],
            ["ip", "netns", "exec", parts["netns"], "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            proc = _run(*step)
            if proc.returncode:
                raise RuntimeError("%s: %s" % (" ".join(step), proc.stderr.strip()))
    if dockerd_pid(settings, instance) is None:
        os.makedirs(parts["data_root"], exist_ok=True)
        with open(os.path.join(settings.path("hosts", instance["id"]), "dockerd.log"), "a", encoding="utf-8") as log:
            command = ["nsenter", "--net=/run/netns/" + parts["netns"], "dockerd", "--data-root", parts["data_root"],
                       "--exec-root", parts["exec_root"], "--pidfile", parts["pidfile"], "-H", "unix://" + parts["sock"],
                       "--bip", "172.31.0.1/24"]
            subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)  # pylint: disable=consider-using-with
        deadline = time.monotonic() + 60
        while _run("docker", "-H", "unix://" + parts["sock"], "version").returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the instance's dockerd did not answer within 60 s")
            time.sleep(0.2)
    loaded = os.path.join(settings.path("hosts", instance["id"]), "images-loaded")
    if not os.path.exists(loaded):
        for image in sorted(settings.images):
            if _run("docker", "image", "inspect", image).returncode:
                continue
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)  # pylint: disable=consider-using-with
            load = _run_with_input(["docker", "-H", "unix://" + parts["sock"], "load"], save.stdout)
            save.wait()
            if load.returncode or save.returncode:
                raise RuntimeError("loading %s into the instance's engine failed: %s" % (image, load.stderr.strip()))
        with open(loaded, "w", encoding="utf-8") as handle:
            handle.write("\n".join(sorted(settings.images)) + "\n")


def _run_with_input(args, stream):
    proc = subprocess.run(args, stdin=stream, capture_output=True, text=True, check=False)
    stream.close()
    return proc


def stop_dockerd(settings, instance, wait=30.0):
    """Stop the instance's dockerd (its containers stop with it: live-restore is off)."""
    pid = dockerd_pid(settings, instance)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while dockerd_pid(settings, instance) is not None:
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.5)
            break
        time.sleep(0.1)


def destroy(settings, instance):
    """Everything of the host: dockerd, namespace, veth, data."""
    stop_dockerd(settings, instance)
    parts = names(settings, instance)
    _run("ip", "netns", "del", parts["netns"])
    _run("ip", "link", "del", parts["host_if"])
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
