# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""toy: a platform written only for the tests, to prove the platform seam.

It runs the container with the ``docker`` command line (not the Engine API the
local-docker driver speaks), on this machine, and owns one option of its own,
``toy_tag``, which becomes a label. It is registered exactly as a real platform
is (a loader and its entry in ``platforms.DRIVERS``) in a copy of the
collection that the tests build; nothing outside this file knows it.
"""

import json
import os
import re
import subprocess

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import (
    LABEL_PREFIX, Driver, PlatformStatus, mask,
)
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free

_TAG = re.compile(r"[a-z][a-z0-9-]{0,30}")


class ToyDriver(Driver):
    name = "toy"
    OPTIONS = dict(toy_tag=dict(type="str", default="toy"))
    EXECUTION_BACKEND = "local-docker"
    ENTRY_FIELDS = {"container_name": "text"}
    uses_host_port = True

    @classmethod
    def spec_options(cls, params, environ):
        if not _TAG.fullmatch(params["toy_tag"]):
            raise TaoInferenceError("toy_tag %r is not a lower-case word" % (params["toy_tag"],))
        return {"tag": params["toy_tag"]}

    @classmethod
    def from_options(cls, connection, params):
        return cls()

    @staticmethod
    def _docker(*args, env=None, check=True):
        proc = subprocess.run(["docker"] + list(args), capture_output=True, text=True, timeout=120, env=env,
                              check=False)
        if check and proc.returncode != 0:
            raise TaoInferenceError("docker %s failed: %s" % (args[0], proc.stderr.strip()))
        return proc

    def preflight(self, spec, report=True):
        version = self._docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        return {"engine": "Docker %s (docker CLI)" % version}

    def port_scope(self, spec):
        return "local"

    def port_is_free(self, spec, port):
        return port_is_free(port)

    def start(self, launch):
        argv = ["run", "-d", "--init", "--name", launch.job_id,
                "-p", "127.0.0.1:%d:%d" % (launch.host_port, catalog.CONTAINER_PORT),
                "--label", "%stoy_tag=%s" % (LABEL_PREFIX, launch.spec.platform_options["tag"])]
        for key, value in sorted(launch.labels.items()):
            argv += ["--label", "%s=%s" % (key, value)]
        for key, value in sorted(launch.env.items()):
            argv += ["-e", "%s=%s" % (key, value)]
        for key in sorted(launch.secret_env):
            argv += ["-e", key]  # the value comes from this child's environment, never its argv
        argv += [launch.spec.image, "/bin/sh", "-c", launch.command]
        proc = self._docker(*argv, env=dict(os.environ, **launch.secret_env), check=False)
        if proc.returncode != 0:
            raise TaoInferenceError("docker run failed: %s" % mask(proc.stderr.strip(), launch.secret_env))
        return {"host_url": "http://127.0.0.1:%d" % launch.host_port, "host_port": launch.host_port,
                "container_name": launch.job_id}

    def _inspect(self, name):
        proc = self._docker("inspect", "--type", "container", name, check=False)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout)[0]

    @staticmethod
    def _ours(document, job_id):
        labels = (document.get("Config") or {}).get("Labels") or {}
        return labels.get(LABEL_PREFIX + "job_id") == job_id and labels.get(LABEL_PREFIX + "managed-by") == "tao.inference"

    def status(self, entry):
        document = self._inspect(entry["job_id"])
        if document is None or not self._ours(document, entry["job_id"]):
            return PlatformStatus(PlatformStatus.MISSING, "no container %s" % entry["job_id"])
        state = document["State"]
        labels = document["Config"]["Labels"]
        if state["Status"] == "running":
            return PlatformStatus(PlatformStatus.RUNNING, "container running", labels=labels)
        return PlatformStatus(PlatformStatus.EXITED, "container %s" % state["Status"], state.get("ExitCode"), labels)

    def logs(self, entry, lines=40, secrets=None):
        proc = self._docker("logs", "--tail", str(lines), entry["job_id"], check=False)
        return mask(proc.stdout + proc.stderr, secrets)

    def stop(self, entry):
        document = self._inspect(entry["job_id"])
        if document is None or not self._ours(document, entry["job_id"]):
            return False
        self._docker("rm", "-f", document["Id"])
        return True

    def find(self, name=None):
        label = LABEL_PREFIX + ("name=%s" % name if name else "job_id")
        names = self._docker("ps", "-a", "--filter", "label=" + label, "--format", "{{.Names}}").stdout.split()
        found = []
        for container in names:
            document = self._inspect(container)
            if document is not None:
                found.append(PlatformStatus(PlatformStatus.RUNNING, "container", labels=document["Config"]["Labels"]))
        return found
