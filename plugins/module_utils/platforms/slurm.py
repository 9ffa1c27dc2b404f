# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""slurm: the service runs as a Slurm batch job, reached through an SSH tunnel.

Everything happens through the cluster's login host over SSH: ``sbatch``
reads the batch script from stdin, and secret values travel on stdin too,
become the submitting shell's environment and reach the job through Slurm's
exported environment, never the script text or a command line. The job runs
the container with the chosen runtime:

* ``pyxis``     ``srun --container-image=... --container-env=NAMES`` (enroot)
* ``apptainer`` ``apptainer exec docker://...`` (``APPTAINERENV_*`` from the job env)
* ``docker``    ``docker run`` on the node; the script traps TERM and removes the
                container, since ``scancel`` alone leaves it running

Once the job is RUNNING, ``ssh -N -L 127.0.0.1:<host_port>:<node>:<node_port>``
through the login host makes it ``http://localhost:<host_port>``; the tunnel's
pid and start time go in the registry and it is stopped by exactly that pid.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import re
import shlex
import time

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import Driver, PlatformStatus, mask
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free
from ansible_collections.tao.inference.plugins.module_utils.ssh import (
    Raw, SSHTarget, close_tunnel, find_tunnels, forward_spec, open_tunnel, tunnel_alive,
)

WORKDIR = ".tao-inference"  # on the login host, relative to the home folder
PORT_MARKER = "TAO_NODE_PORT="
COMMENT_PREFIX = "tao.inference:job_id="
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")


def pyxis_image(image):
    """``nvcr.io/nvidia/x:tag`` -> ``nvcr.io#nvidia/x:tag`` (enroot's registry separator)."""
    if "#" in image or "/" not in image:
        return image
    first, rest = image.split("/", 1)
    if "." in first or ":" in first or first == "localhost":
        return "%s#%s" % (first, rest)
    return image


def _directives(spec, options, job_id):
    lines = ["#SBATCH --job-name=tao-%s" % job_id[:8],
             "#SBATCH --output=%s.log" % job_id,
             "#SBATCH --ntasks=1",
             # Finds the job again without the registry (name, if any, is validated: no spaces).
             "#SBATCH --comment=%s%s,name=%s" % (COMMENT_PREFIX, job_id, spec.name or "")]
    if options.get("partition"):
        lines.append("#SBATCH --partition=%s" % options["partition"])
    if options.get("account"):
        lines.append("#SBATCH --account=%s" % options["account"])
    if options.get("time_limit"):
        lines.append("#SBATCH --time=%s" % options["time_limit"])
    if spec.num_gpus > 0:
        lines.append("#SBATCH --gres=gpu:%d" % spec.num_gpus)
    for extra in options.get("sbatch_options") or ():
        lines.append("#SBATCH %s" % extra)
    return lines


def _command_lines(words):
    """One command over several lines: options paired with their values."""
    parts, index = [], 0
    while index < len(words):
        word = words[index]
        if word in ("-e", "-v", "-p", "--name", "--bind", "--env", "--shm-size", "--gpus") and index + 1 < len(words):
            word += " " + words[index + 1]
            index += 1
        parts.append(word)
        index += 1
    head = 2 if parts[0] in ("docker", "apptainer") else 1  # keep "docker run" / "apptainer exec" together
    return " \\\n  ".join([" ".join(parts[:head])] + parts[head:])


def _exports(env):
    return ["export %s=%s" % (key, shlex.quote(value)) for key, value in sorted(env.items())]


def batch_script(spec, options, job_id, command, env, secret_names):
    """The exact batch script text. It holds variable *names* of secrets only."""
    runtime = options["runtime"]
    q = shlex.quote
    lines = ["#!/bin/bash"] + _directives(spec, options, job_id) + [
        "# tao.inference %s (%s)" % (job_id, spec.network_arch),
        "set -u",
        "name=%s" % job_id,
    ] + _exports(env)
    names = sorted(env) + sorted(secret_names)
    if runtime == "pyxis":
        argv = ["srun", "--container-image=%s" % pyxis_image(spec.image), "--no-container-mount-home"]
        if names:
            argv.append("--container-env=%s" % ",".join(names))
        if spec.volumes:
            argv.append("--container-mounts=%s" % ",".join(spec.volumes))
        lines += ["echo %s%d" % (PORT_MARKER, catalog.CONTAINER_PORT),
                  _command_lines([q(a) for a in argv] + ["/bin/sh -c " + q(command) + " &"]),
                  "wait $!"]
    elif runtime == "apptainer":
        lines += ["export APPTAINERENV_%s=\"$%s\"" % (n, n) for n in sorted(secret_names)]
        argv = ["apptainer", "exec", "--cleanenv"]
        if spec.num_gpus > 0:
            argv.append("--nv")
        for volume in spec.volumes:
            argv += ["--bind", volume]
        argv += ["--env", ",".join("%s=%s" % (k, v) for k, v in sorted(env.items()))] if env else []
        lines += ["echo %s%d" % (PORT_MARKER, catalog.CONTAINER_PORT),
                  _command_lines([q(a) for a in argv] + [q("docker://" + spec.image),
                                                         "/bin/sh -c " + q(command) + " &"]),
                  "wait $!"]
    else:
        argv = ["docker", "run", "--rm", "--init", "--name", "$name", "-p", "0.0.0.0::%d" % catalog.CONTAINER_PORT,
                "--shm-size", spec.shm_size]
        for key in names:
            argv += ["-e", key]  # names only: values come from the job's environment
        for volume in spec.volumes:
            argv += ["-v", volume]
        if spec.num_gpus > 0:
            argv += ["--gpus", str(spec.num_gpus)]
        words = ['"$name"' if a == "$name" else q(a) for a in argv]
        lines += [
            # scancel signals every process of the job. Two things remove the container: the
            # attached `docker run` passes TERM on to it and --rm removes it when it exits; and
            # this trap removes it, twice, in case scancel came while it was being created.
            "cleanup() {",
            "  trap '' TERM INT",
            "  docker rm -f \"$name\" >/dev/null 2>&1",
            "  sleep 1",
            "  docker rm -f \"$name\" >/dev/null 2>&1 || true",
            "}",
            "trap cleanup EXIT",
            "trap 'exit 143' TERM INT",
            _command_lines(words + [q(spec.image), "/bin/sh -c " + q(command) + " &"]),
            "run=$!",
            "port=",
            "while [ -z \"$port\" ]; do",
            "  kill -0 \"$run\" 2>/dev/null || exit 1",
            "  port=$(docker port \"$name\" %d/tcp 2>/dev/null | head -n 1 | sed 's/.*://')" % catalog.CONTAINER_PORT,
            "  [ -n \"$port\" ] || sleep 0.2",
            "done",
            "echo %s$port" % PORT_MARKER,
            "wait \"$run\"",
        ]
    return "\n".join(lines) + "\n"


def submit_prologue(secret_names):
    """Remote shell that reads ``NAME=<base64>`` lines from stdin, exports them,
    then hands the rest of stdin (the batch script) to sbatch."""
    return Raw(
        "mkdir -p %s && cd %s && n=%d && while [ \"$n\" -gt 0 ]; do IFS= read -r line; "
        "export \"${line%%%%=*}=$(printf %%s \"${line#*=}\" | base64 -d)\"; n=$((n-1)); done; "
        "exec sbatch --parsable --export=ALL" % (WORKDIR, WORKDIR, len(secret_names)))


def secret_lines(secret_env):
    return "".join("%s=%s\n" % (name, base64.b64encode(value.encode("utf-8")).decode("ascii"))
                   for name, value in sorted(secret_env.items()))


class SlurmDriver(Driver):
    """Driver for a Slurm cluster reached over SSH."""

    name = "slurm"
    needs_host_port = True

    def __init__(self, login_host, user=None, port=None, key_path=None, ssh_config=None):
        self.target = SSHTarget(login_host, user=user, port=port, key_path=key_path, config=ssh_config)

    # -- helpers ---------------------------------------------------------------
    def _run(self, words, stdin=None, check=True, timeout=60):
        return self.target.run(words, stdin=stdin, check=check, timeout=timeout)

    def job_state(self, job_id):
        """``(state, node, reason)`` from squeue, or from scontrol once the job left the queue."""
        _rc, out, _err = self._run(["squeue", "-h", "-j", str(job_id), "-o", "%T|%N|%r"], check=False)
        line = out.strip().splitlines()[0] if out.strip() else ""
        if line:
            state, node, reason = (line.split("|") + ["", ""])[:3]
            return state, node, reason
        rc, out, _err = self._run(["scontrol", "show", "job", str(job_id)], check=False)
        match = re.search(r"JobState=(\S+)", out)
        if rc != 0 or not match:
            return "UNKNOWN", "", ""
        reason = re.search(r"Reason=(\S+)", out)
        return match.group(1), "", reason.group(1) if reason else ""

    def _node_addr(self, node):
        _rc, out, _err = self._run(["scontrol", "show", "node", node], check=False)
        match = re.search(r"NodeAddr=(\S+)", out)
        return match.group(1) if match else node

    def _log(self, job_id, lines=200):
        _rc, out, _err = self._run(["tail", "-n", str(lines), "%s/%s.log" % (WORKDIR, job_id)], check=False)
        return out

    def _node_port(self, job_id):
        for line in self._log(job_id).splitlines():
            if line.startswith(PORT_MARKER) and line[len(PORT_MARKER):].strip().isdigit():
                return int(line[len(PORT_MARKER):].strip())
        return None

    # -- interface ---------------------------------------------------------------
    def port_scope(self, spec):
        return "local"  # tunnels listen on this machine, beside local-docker services

    def port_is_free(self, spec, port):
        return port_is_free(port)

    def preflight(self, spec, report=True):
        options = spec.platform_options
        self._run(["true"])
        rc, out, err = self._run(["sinfo", "-h", "-o", "%R|%a"], check=False)
        if rc != 0:
            raise TaoInferenceError("sinfo does not answer on %s: %s" % (self.target.destination, (err or out).strip()))
        partitions = dict(line.split("|", 1) for line in out.split() if "|" in line)
        partition = options.get("partition")
        if partition and partition not in partitions:
            raise TaoInferenceError("partition %s does not exist on the cluster; partitions: %s (set partition or "
                                    "SLURM_PARTITION)" % (partition, ", ".join(sorted(partitions))))
        return {"login_host": self.target.destination, "partitions": partitions,
                "partition_state": partitions.get(partition) if partition else None,
                "runtime": options["runtime"]}

    def start(self, launch):
        spec, options = launch.spec, launch.spec.platform_options
        script = batch_script(spec, options, launch.job_id, launch.command, launch.env, launch.secret_env)
        stdin = (secret_lines(launch.secret_env) + script).encode("utf-8")
        rc, out, err = self._run([submit_prologue(launch.secret_env)], stdin=stdin, check=False)
        if rc != 0:
            text = mask((err or out).strip(), launch.secret_env)
            hint = ""
            if "partition" in text.lower():
                hint = " Set partition (or SLURM_PARTITION)."
            elif "account" in text.lower():
                hint = " Set account (or SLURM_ACCOUNT)."
            raise TaoInferenceError("sbatch refused the job: %s.%s" % (text, hint))
        slurm_id = out.strip().split(";")[0]
        fields = {"platform_job_id": slurm_id, "login_host": self.target.destination,
                  "slurm_runtime": options["runtime"], "host_port": launch.host_port}
        launch.on_submitted(fields)
        try:
            node, node_port = self._wait_running(slurm_id, launch)
            addr = self._node_addr(node)
            pid, started = open_tunnel(self.target, launch.host_port, addr, node_port)
        except BaseException:
            self._cancel(slurm_id)
            raise
        fields.update(slurm_node=node, slurm_node_addr=addr, node_port=node_port, tunnel_pid=pid,
                      tunnel_start_time=started, host_url="http://localhost:%d" % launch.host_port)
        return fields

    def _wait_running(self, slurm_id, launch):
        deadline = time.monotonic() + launch.timeout
        delay = 0.2
        state = reason = ""
        while time.monotonic() < deadline:
            state, node, reason = self.job_state(slurm_id)
            if state == "RUNNING" and node:
                port = self._node_port(launch.job_id)
                if port:
                    return node, port
            elif state not in ACTIVE:
                log = mask(self._log(launch.job_id, 15), launch.secret_env).strip()
                raise TaoInferenceError("Slurm job %s ended as %s (%s) before the service started.%s"
                                        % (slurm_id, state, reason or "no reason",
                                           (" Job log:\n" + log) if log else ""))
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        why = ("Slurm holds it: %s" % reason) if state == "PENDING" else "last state %s" % state
        raise TaoInferenceError("Slurm job %s did not start within %ss (%s); it was cancelled. Check the partition, "
                                "account and resources, or raise wait_timeout" % (slurm_id, launch.timeout, why),
                                slurm_state=state, slurm_reason=reason)

    def _cancel(self, slurm_id, wait=15):
        self._run(["scancel", str(slurm_id)], check=False)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            state, _node, _reason = self.job_state(slurm_id)
            if state not in ACTIVE:
                return
            time.sleep(0.2)

    def status(self, entry):
        slurm_id = entry.get("platform_job_id")
        if not slurm_id:
            return PlatformStatus(PlatformStatus.MISSING, "no Slurm job id")
        state, node, reason = self.job_state(slurm_id)
        alive = tunnel_alive(entry.get("tunnel_pid"), entry.get("tunnel_start_time"), self._spec_of(entry))
        extra = {"slurm_state": state, "tunnel_alive": alive}
        if state == "RUNNING":
            status = PlatformStatus(PlatformStatus.RUNNING, "job %s RUNNING on %s; tunnel %s" % (
                slurm_id, node, "up" if alive else "down"))
        elif state in ACTIVE:
            status = PlatformStatus(PlatformStatus.PENDING, "job %s %s (%s)" % (slurm_id, state, reason))
        elif state == "UNKNOWN":
            status = PlatformStatus(PlatformStatus.MISSING, "job %s unknown to Slurm" % slurm_id)
        else:
            status = PlatformStatus(PlatformStatus.EXITED, "job %s %s (%s)" % (slurm_id, state, reason or "-"))
        status.extra.update(extra)
        return status

    @staticmethod
    def _spec_of(entry):
        if not entry.get("host_port") or not entry.get("node_port"):
            return ""
        return forward_spec(int(entry["host_port"]), entry.get("slurm_node_addr") or entry.get("slurm_node"),
                            int(entry["node_port"]))

    def logs(self, entry, lines=40, secrets=None):
        return mask(self._log(entry["job_id"], lines), secrets)

    def release(self, entry):
        """Stop the local tunnel of a service whose job is gone."""
        return close_tunnel(entry.get("tunnel_pid"), entry.get("tunnel_start_time"), self._spec_of(entry))

    def repair(self, entry):
        """Re-open a dead tunnel of a running job; return the changed fields."""
        if tunnel_alive(entry.get("tunnel_pid"), entry.get("tunnel_start_time"), self._spec_of(entry)):
            return {}
        if not port_is_free(int(entry["host_port"])):
            raise TaoInferenceError("the tunnel of %s is down and its port %s is now taken by another program; "
                                    "stop the service and start it again" % (entry["job_id"], entry["host_port"]))
        pid, started = open_tunnel(self.target, int(entry["host_port"]),
                                   entry.get("slurm_node_addr") or entry["slurm_node"], int(entry["node_port"]))
        return {"tunnel_pid": pid, "tunnel_start_time": started}

    def find(self, name=None):
        """Active jobs this collection submitted (optionally only those named ``name``)."""
        _rc, out, _err = self._run(["squeue", "-h", "-o", "%i|%k"], check=False)
        found = []
        for line in out.splitlines():
            slurm_id, _sep, comment = line.partition("|")
            if not comment.startswith(COMMENT_PREFIX):
                continue
            fields = dict(part.split("=", 1) for part in comment[len("tao.inference:"):].split(",") if "=" in part)
            if name is None or fields.get("name") == name:
                found.append(PlatformStatus(PlatformStatus.RUNNING, "job %s" % slurm_id, ident=fields.get("job_id"),
                                            labels={"tao.inference.job_id": fields.get("job_id"),
                                                    "platform_job_id": slurm_id}))
        return found

    def stop(self, entry):
        stopped = False
        slurm_id = entry.get("platform_job_id")
        orphan_tunnels = []
        if slurm_id:
            state, node, _reason = self.job_state(slurm_id)
            if state in ACTIVE:
                if entry.get("orphan") and node:
                    # The registry lost the tunnel's pid: find it by where it forwards to.
                    port = self._node_port(entry["job_id"])
                    orphan_tunnels = find_tunnels(self._node_addr(node), port) if port else []
                self._cancel(slurm_id)
                stopped = True
        for pid, started, spec in orphan_tunnels:
            close_tunnel(pid, started, spec)
        return self.release(entry) or stopped
