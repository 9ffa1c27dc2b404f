"""The platform's state (organisation, instances) in ``state.json``, changed under an exclusive
``flock`` of ``state.lock``; clock-driven transitions are applied at the start of every locked section."""

import contextlib
import datetime
import fcntl
import json
import os
import secrets
import string
import time

from . import hosts, netns

TRANSITIONAL = ("STARTING", "DEPLOYING", "STOPPING", "DELETING")


def iso(stamp):
    """An ISO-8601 UTC time."""
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(length=9):
    """An id like Brev's: lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for position in range(length))


def empty_state():
    """A platform nobody has used yet."""
    return {
        "version": 1,
        "user": {"id": "user-" + new_id(), "username": "tao-test"},
        "org": {"id": "org-" + new_id(), "name": "tao-test-hq"},
        "instances": [],
    }


class Store:
    """Locked access to the state file."""

    def __init__(self, settings):
        self.settings = settings

    @contextlib.contextmanager
    def locked(self):
        """Yield the state (transitions applied); write it back when the block ends without error."""
        os.makedirs(self.settings.dir, exist_ok=True)
        with open(self.settings.path("state.lock"), "a+", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                path = self.settings.path("state.json")
                try:
                    with open(path, encoding="utf-8") as handle:
                        state = json.load(handle)
                except FileNotFoundError:
                    state = empty_state()
                advance(self.settings, state)
                yield state
                hosts.write_file(path, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o600)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def advance(settings, state, now=None):
    """Apply the transitions whose time has come and keep each sshd in line with its instance's status."""
    now = time.time() if now is None else now
    kept = []
    for instance in state["instances"]:
        status = instance["status"]
        own_host = instance.get("hosts") == "netns"
        helper = netns.state_of(settings, instance) if own_host else "ready"
        if status in ("STARTING", "DEPLOYING") and now >= instance["until"]:
            if instance["instance_type"] in settings.fail_types:
                instance.update(status="FAILURE", since=instance["until"], until=0, status_message="instance failed to start")
            elif helper.startswith("failed"):
                instance.update(status="FAILURE", since=now, until=0, status_message="the test host did not start: " + helper[8:])
            elif helper == "ready":
                instance.update(status="RUNNING", since=max(instance["until"], instance["since"]), until=0,
                                build_status="COMPLETED", status_message="")
        elif status == "STOPPING" and now >= instance["until"] and helper != "busy":
            instance.update(status="STOPPED", since=instance["until"], until=0)
        elif status == "DELETING" and now >= instance["until"] and helper != "busy":
            hosts.remove_host(settings, instance)
            continue
        if instance["status"] == "RUNNING" and own_host:
            if not netns.netns_exists(settings, instance) or netns.dockerd_pid(settings, instance) is None:
                if helper != "busy":  # the host went away (this machine restarted): it boots again
                    netns.spawn(settings, instance, "up")
                continue
            hosts.start_sshd(settings, instance)
        elif instance["status"] == "RUNNING":
            if not hosts.sshd_pid(settings, instance) and not hosts.bindable(instance["address"], settings.ssh_port):
                # Someone else took the address while the instance was down: it comes back on a new one.
                taken = {item["address"] for item in state["instances"]}
                instance["address"] = hosts.allocate_address(settings, taken)
            hosts.start_sshd(settings, instance)
        else:
            hosts.stop_sshd(settings, instance)
        kept.append(instance)
    state["instances"] = kept


def find(state, name_or_id):
    """The instances whose name or id is ``name_or_id`` (the API's by-name-or-id lookup)."""
    return [item for item in state["instances"] if name_or_id in (item["name"], item["id"])]


def set_status(settings, instance, status, seconds, now=None):
    """Move ``instance`` to ``status`` for ``seconds`` (transitional statuses) or for good."""
    now = time.time() if now is None else now
    instance["status"] = status
    instance["since"] = now
    instance["until"] = now + seconds if status in TRANSITIONAL else 0
    if status != "RUNNING":
        hosts.stop_sshd(settings, instance)
    if instance.get("hosts") == "netns":
        action = {"STARTING": "up", "DEPLOYING": "up", "STOPPING": "down", "DELETING": "destroy"}.get(status)
        if action:
            netns.spawn(settings, instance, action)
