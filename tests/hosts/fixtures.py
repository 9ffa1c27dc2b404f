"""The pytest side of the fleet test hosts: the session fixture ``fleet_hosts`` (tests/integration/conftest.py
imports it) brings up ``scripts/ensure-fleet.sh 2`` once per test run (a no-op when ``make test`` already
did) and hands the tests its inventory, hosts and an ssh into each."""

import json
import os
import subprocess

import pytest

from . import sshd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(ROOT, "scripts", "ensure-fleet.sh")
SIZE = 2


class Fleet:
    """The fleet as ``scripts/ensure-fleet.sh`` left it in ``folder``."""

    def __init__(self, folder, size):
        self.dir = folder
        self.inventory = os.path.join(folder, "inventory.ini")
        self.ssh_config = os.path.join(folder, "ssh_config")
        self.known_hosts = os.path.join(folder, "known_hosts")
        with open(os.path.join(folder, "hosts.json"), encoding="utf-8") as handle:
            self.hosts = json.load(handle)[:size]
        self.names = [host["name"] for host in self.hosts]

    def host(self, name):
        """The record of host ``name`` (name, address, gateway, port, user, netns, docker_host, dir)."""
        return next(host for host in self.hosts if host["name"] == name)

    def ssh(self, name, command, timeout=60, check=True):
        """Run ``command`` (one shell line) on host ``name`` over its sshd, as its inventory user."""
        proc = subprocess.run(["ssh", "-F", self.ssh_config, "-o", "BatchMode=yes", "-o", "ControlMaster=no", name,
                               command], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)
        if check and proc.returncode:
            raise AssertionError("ssh %s %r: exit %d: %s" % (name, command, proc.returncode, proc.stderr.strip()))
        return proc

    def stop_sshd(self, name):
        """Take host ``name`` off the network as Ansible sees it: its sshd (and every session) stops, by pid;
        connections are refused at once. Its engine and containers keep running. :meth:`restore` undoes it."""
        folder = self.host(name)["dir"]
        sshd.stop(os.path.join(folder, "sshd.pid"), os.path.join(folder, "sshd_config"))

    def restore(self, env=None):
        """Bring every host back as ``scripts/ensure-fleet.sh`` left it (restarts what was stopped)."""
        proc = ensure(len(self.hosts), dict({"TAO_FLEET_DIR": self.dir}, **(env or {})))
        assert proc.returncode == 0, proc.stderr


def ensure(size=SIZE, env=None, timeout=300):
    """Run ``scripts/ensure-fleet.sh size`` (with ``env`` added to the environment)."""
    return subprocess.run([SCRIPT, str(size)], capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="session")
def fleet_hosts():
    """``SIZE`` test hosts that really are separate, up for the whole run (left up afterwards, like the other
    test platforms; ``scripts/ensure-fleet.sh --down`` removes them)."""
    if os.geteuid() != 0:
        pytest.skip("the fleet test hosts need root (namespaces and dockerd)")
    proc = ensure(SIZE)
    if proc.returncode:
        pytest.fail("scripts/ensure-fleet.sh %d failed:\n%s" % (SIZE, proc.stderr[-3000:]))
    folder = os.path.dirname(proc.stdout.strip().splitlines()[-1])
    return Fleet(folder, SIZE)
