"""A network namespace on a veth to this machine: ``gateway`` on this side, ``address`` inside, a /24 between
them and nothing else (no default route: the host reaches only this machine's end and its own loopback)."""

import os

from .common import must, run


def exists(name):
    """Whether the namespace is there."""
    return os.path.exists("/run/netns/" + name)


def path(name):
    """The namespace file to give ``nsenter --net=``."""
    return "/run/netns/" + name


def link_ok(name, host_if, gateway, address, ns_if):
    """Whether the namespace and both veth ends with their addresses are there as :func:`create` makes them."""
    if not exists(name):
        return False
    here = run("ip", "-o", "-4", "addr", "show", "dev", host_if)
    there = run("ip", "-n", name, "-o", "-4", "addr", "show", "dev", ns_if)
    return " %s/24 " % gateway in here.stdout and " %s/24 " % address in there.stdout


def _is_up(*command):
    flags = run(*command).stdout.split("<", 1)[-1].split(">", 1)[0].split(",")
    return "UP" in flags


def links_up(name, host_if, ns_if):
    """Whether both veth ends and the namespace's ``lo`` are up (someone may have set one down)."""
    return (_is_up("ip", "-o", "link", "show", "dev", host_if) and _is_up("ip", "-n", name, "-o", "link", "show", "dev", ns_if)
            and _is_up("ip", "-n", name, "-o", "link", "show", "dev", "lo"))


def set_up(name, host_if, ns_if):
    """Set both veth ends and the namespace's ``lo`` up."""
    must("ip", "link", "set", host_if, "up")
    must("ip", "-n", name, "link", "set", ns_if, "up")
    must("ip", "-n", name, "link", "set", "lo", "up")


def create(name, host_if, gateway, address, ns_if, veth_peer=None):
    """Make the namespace and the veth (``veth_peer``, when given, is the peer's temporary name before it is
    renamed ``ns_if`` inside the namespace: two namespaces may both call their end ``eth0``)."""
    peer = veth_peer or ns_if
    must("ip", "netns", "add", name)
    must("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer)
    must("ip", "link", "set", peer, "netns", name)
    if peer != ns_if:
        must("ip", "-n", name, "link", "set", peer, "name", ns_if)
    must("ip", "addr", "add", gateway + "/24", "dev", host_if)
    must("ip", "-n", name, "addr", "add", address + "/24", "dev", ns_if)
    set_up(name, host_if, ns_if)


def pids(name):
    """The pids of the processes in the namespace."""
    if not exists(name):
        return []
    return [int(word) for word in run("ip", "netns", "pids", name).stdout.split() if word.isdigit()]


def delete(name, host_if):
    """Remove the veth (both ends go) and the namespace; what is already gone is fine."""
    if run("ip", "link", "show", "dev", host_if).returncode == 0:
        run("ip", "link", "del", host_if)
    if exists(name):
        run("ip", "netns", "del", name)
