# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""slurm: the service runs as a Slurm batch job, reached through an SSH tunnel.

Everything happens through the cluster's login host over SSH: a POSIX ``sh``
prologue (whatever the login shell is) sets ``umask 077``, makes the private
folder ``~/.tao-inference`` and hands stdin to ``sbatch``. Secret values travel
on stdin too, become the submitting shell's environment and reach the job
through Slurm's exported environment; other container variables are
``export`` lines of the batch script. No value is ever on a command line. The
job runs the container with the chosen runtime:

* ``pyxis``     ``srun --container-image=... --container-env=NAMES`` (enroot)
* ``apptainer`` ``apptainer exec docker://...`` with ``APPTAINERENV_<NAME>`` variables
* ``docker``    ``docker run -p <slurm_bind_address>::8080`` on the node; the script traps
                TERM and removes the container, since ``scancel`` alone leaves it running

Node ports. pyxis and apptainer containers share the node's network, so two
services on one node cannot both listen on 8080. When the inner command takes
``--port 8080`` (tao-dataservices, cosmos-predict2.5) the batch script picks the
first port from 8080 to 8199 that nothing listens on and that no other job holds
(an ``flock`` on a per-port lock file, held for the job's life), and the inner
command reads it as ``$1``. cosmos-rl has no port option and always listens on
8080: its script takes the same lock on 8080, and a second one on the node ends
at once with a log line that says why, rather than two servers colliding. The
docker runtime needs neither: each container has its own network and Docker
publishes a free port. The script prints the port with ``TAO_NODE_PORT=``.

Once the job is RUNNING, ``ssh -N -L 127.0.0.1:<host_port>:<node>:<node_port>``
through the login host makes it ``http://localhost:<host_port>``; the tunnel's
pid and start time go in the registry and it is stopped by exactly that pid.

Only the user's own jobs (``squeue --me``) whose comment carries a UUID
``tao.inference:job_id=`` are ever listed or cancelled, and a cancel counts
only once Slurm confirms the job left the active states: otherwise
:class:`TaoInferenceError` names the Slurm job id and the ``scancel`` to run.
"""

import base64
import ipaddress
import re
import shlex
import time

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.common import SLURM_RUNTIMES as RUNTIMES
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import Driver, PlatformStatus, mask
from ansible_collections.tao.inference.plugins.module_utils.registry import port_is_free
from ansible_collections.tao.inference.plugins.module_utils.ssh import (
    SSH_OPTIONS, Raw, SSHTarget, close_tunnel, find_tunnels, forward_spec, open_tunnel, tunnel_alive,
)
from ansible_collections.tao.inference.plugins.module_utils.trust import ENV_NAME, check_host, check_job_id, is_uuid

WORKDIR = ".tao-inference"  # on the login host, relative to the home folder
PORT_MARKER = "TAO_NODE_PORT="
ADDR_MARKER = "TAO_NODE_ADDR="
COMMENT_PREFIX = "tao.inference:job_id="
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")
NODE_PORTS = (catalog.CONTAINER_PORT, 8199)  # ports a host-network service may take on a node
SUBMIT_TIMEOUT = 60  # seconds for the ssh call that runs sbatch
SUBMIT_RECHECK = 2  # seconds before looking again for a job whose submit was cut off
CANCEL_WAIT = 15  # seconds Slurm may take to show a cancelled job out of the active states

# Every pattern is used with fullmatch: nothing may trail (not even a newline).
_SBATCH_OUTPUT = re.compile(r"([0-9]+)(?:;[A-Za-z0-9_.-]+)?")  # sbatch --parsable: <id>[;<cluster>]
_SLURM_ID = re.compile(r"[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")
_COMMENT = re.compile(r"tao\.inference:job_id=([0-9a-f-]{36}),name=([A-Za-z0-9_.-]{0,63})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_DIRECTIVE = re.compile(r"#SBATCH --[a-z][a-z0-9-]*(=[\x21-\x7e]+)?")
_INVALID_JOB = "Invalid job id"
_WILDCARDS = ("0.0.0.0", "::")


def pyxis_image(image):
    """``nvcr.io/nvidia/x:tag`` -> ``nvcr.io#nvidia/x:tag`` (enroot's registry separator)."""
    if "#" in image or "/" not in image:
        return image
    first, rest = image.split("/", 1)
    if "." in first or ":" in first or first == "localhost":
        return "%s#%s" % (first, rest)
    return image


def _directives(spec, options, job_id):
    name = spec.name or ""
    if name and not _NAME.fullmatch(name):
        raise TaoInferenceError("name %r cannot go in a Slurm comment (letters, digits, '.', '_', '-')" % (name,))
    lines = ["#SBATCH --job-name=tao-%s" % job_id[:8],
             "#SBATCH --output=%s.log" % job_id,
             "#SBATCH --ntasks=1",
             # Finds the job again without the registry.
             "#SBATCH --comment=%s%s,name=%s" % (COMMENT_PREFIX, job_id, name)]
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
    for line in lines:  # spec.py checks each value; a script line is never split or extended here either
        if not _DIRECTIVE.fullmatch(line):
            raise TaoInferenceError("%r is not a single #SBATCH --name[=value] line" % (line,))
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


def _check_env_names(env, secret_names):
    names = sorted(env) + sorted(secret_names)
    for name in names:
        if not (isinstance(name, str) and ENV_NAME.fullmatch(name)):
            raise TaoInferenceError("%r is not an environment variable name" % (name,))
    for key, value in env.items():
        if "\0" in str(value):
            raise TaoInferenceError("env %s holds a NUL character, which no environment can carry" % key)
    return names


def _exports(env):
    return ["export %s=%s" % (key, shlex.quote(value)) for key, value in sorted(env.items())]


def _shell_words(text):
    """``(start, end)`` of each top-level word of a POSIX shell string (quotes kept in the word)."""
    words, start, quote, index = [], None, None, 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                index += 1
        elif char in " \t\n":
            if start is not None:
                words.append((start, index))
                start = None
        else:
            if start is None:
                start = index
            if char in "'\"":
                quote = char
            elif char == "\\":
                index += 1
        index += 1
    if start is not None:
        words.append((start, len(text)))
    return words


def port_from_argument(command):
    """``command`` with its one ``--port 8080`` reading the port from ``$1`` instead, or None when the
    command has no such option (cosmos-rl) and the server's port is fixed."""
    spans = _shell_words(command)
    words = [command[start:end] for start, end in spans]
    hits = [i for i in range(len(words) - 1) if words[i] == "--port" and words[i + 1] == str(catalog.CONTAINER_PORT)]
    if len(hits) != 1:
        return None
    start, end = spans[hits[0] + 1]
    return command[:start] + '"$1"' + command[end:]


def _port_lines(arch, movable):
    """Bash that sets ``$port`` for a container on the node's own network, holding its lock on fd 9."""
    low, high = NODE_PORTS
    lines = [
        "# The container shares the node's network: take a port nothing listens on, and hold its",
        "# lock for the job's life so that a job starting beside this one cannot take it too.",
        "locks=/tmp",
        "if [ -d /run/lock ] && [ -w /run/lock ]; then locks=/run/lock; fi",
        "listening() {",
        "  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=\"$(printf ':%04X' \"$1\")\" \\",
        "    '$4 == \"0A\" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }'",
        "}",
        "claim() {",
        "  lock=\"$locks/tao-inference-port-$1.lock\"",
        "  [ -L \"$lock\" ] && return 1",
        "  [ -e \"$lock\" ] || (umask 022 && : >>\"$lock\") 2>/dev/null",
        "  { [ -f \"$lock\" ] && [ -r \"$lock\" ]; } || return 1",
        "  exec 9<\"$lock\"",
        "  if command -v flock >/dev/null 2>&1 && ! flock -n 9; then exec 9<&-; return 1; fi",
        "  if listening \"$1\"; then exec 9<&-; return 1; fi",
        "}",
    ]
    if movable:
        lines += [
            "port=",
            "p=%d" % low,
            "while [ \"$p\" -le %d ]; do" % high,
            "  if claim \"$p\"; then port=$p; break; fi",
            "  p=$((p + 1))",
            "done",
            "if [ -z \"$port\" ]; then",
            "  echo \"tao.inference: no free port from %d to %d on $(hostname): other services or programs hold "
            "them all; stop one, or run on another node\" >&2" % (low, high),
            "  exit 1",
            "fi",
        ]
    else:
        lines += [
            "port=%d" % catalog.CONTAINER_PORT,
            "if ! claim \"$port\"; then",
            "  echo \"tao.inference: port $port on $(hostname) is taken by another service or program. %s takes "
            "no port option and always listens on $port, so one node runs one of it at a time: stop the other "
            "service, or run this one on another node (e.g. sbatch_options: [--exclude=$(hostname)])\" >&2" % arch,
            "  exit 1",
            "fi",
        ]
    return lines


def _publish_address(address):
    return "[%s]" % address if ":" in address else address


def tunnel_host(options, node_addr):
    """Where the tunnel from the login host connects: the docker runtime's publish address unless it
    is a wildcard, else the node's address."""
    bind = options.get("bind_address") or "0.0.0.0"
    if options.get("runtime") != "docker" or bind in _WILDCARDS:
        return node_addr
    return _publish_address(bind)


def batch_script(spec, options, job_id, command, env, secret_names):
    """The exact batch script text. It holds variable *names* of secrets only."""
    check_job_id(job_id)
    names = _check_env_names(env, secret_names)
    runtime = options["runtime"]
    q = shlex.quote
    lines = ["#!/bin/bash"] + _directives(spec, options, job_id) + [
        "# tao.inference %s (%s)" % (job_id, spec.network_arch),
        "set -u",
        "name=%s" % job_id,
    ] + _exports(env)
    if runtime in ("pyxis", "apptainer"):
        if runtime == "apptainer":
            # APPTAINERENV_<NAME> reaches the container as <NAME> even with --cleanenv: no value on
            # the command line (ps on the node shows it), and no list that a comma could split.
            lines += ["export APPTAINERENV_%s=\"$%s\"" % (n, n) for n in names]
        moved = port_from_argument(command)
        lines += _port_lines(spec.network_arch, moved is not None)
        inner = "/bin/sh -c " + (q(moved) + ' sh "$port"' if moved is not None else q(command)) + " &"
        if runtime == "pyxis":
            argv = ["srun", "--container-image=%s" % pyxis_image(spec.image), "--no-container-mount-home"]
            if names:
                argv.append("--container-env=%s" % ",".join(names))
            if spec.volumes:
                argv.append("--container-mounts=%s" % ",".join(spec.volumes))
            launch = _command_lines([q(a) for a in argv] + [inner])
        else:
            argv = ["apptainer", "exec", "--cleanenv"]
            if spec.num_gpus > 0:
                argv.append("--nv")
            for volume in spec.volumes:
                argv += ["--bind", volume]
            launch = _command_lines([q(a) for a in argv] + [q("docker://" + spec.image), inner])
        lines += ["echo %s$port" % PORT_MARKER, launch, "wait $!"]
    else:
        bind = options.get("bind_address") or "0.0.0.0"
        argv = ["docker", "run", "--rm", "--init", "--name", "$name",
                "-p", "%s::%d" % (_publish_address(bind), catalog.CONTAINER_PORT), "--shm-size", spec.shm_size]
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
        ]
        if bind not in _WILDCARDS:
            lines.append("echo %s%s" % (ADDR_MARKER, bind))
        lines += ["echo %s$port" % PORT_MARKER, "wait \"$run\""]
    return "\n".join(lines) + "\n"


def submit_prologue(secret_names):
    """POSIX ``sh`` that makes the private job folder, reads ``NAME=<base64>`` lines from stdin and
    exports them, then hands the rest of stdin (the batch script) to sbatch.

    ``umask 077`` makes the folder and the job logs private: Slurm creates a job's output file with
    the umask ``sbatch`` ran under. The text holds no quote, backslash or ``!``, so it survives the
    single quotes of :func:`submit_command` in sh, bash, csh/tcsh and fish alike."""
    return ("umask 077 && mkdir -p %s && chmod 700 %s && cd %s && n=%d && while [ \"$n\" -gt 0 ]; do "
            "IFS= read -r line; export \"${line%%%%=*}=$(printf %%s \"${line#*=}\" | base64 -d)\"; n=$((n-1)); "
            "done; exec sbatch --parsable --export=ALL" % (WORKDIR, WORKDIR, WORKDIR, len(secret_names)))


def submit_command(secret_names):
    """The remote command: the prologue under ``sh``, not under the user's login shell."""
    return [Raw("sh -c " + shlex.quote(submit_prologue(secret_names)))]


def secret_lines(secret_env):
    return "".join("%s=%s\n" % (name, base64.b64encode(value.encode("utf-8")).decode("ascii"))
                   for name, value in sorted(secret_env.items()))


def parse_sbatch_output(out):
    """The job id ``sbatch --parsable`` printed: its last non-empty stdout line, all of it
    ``<id>`` or ``<id>;<cluster>``. None for anything else (a banner, a warning, nothing)."""
    lines = [line.strip() for line in (out or "").splitlines() if line.strip()]
    match = _SBATCH_OUTPUT.fullmatch(lines[-1]) if lines else None
    return match.group(1) if match else None


def parse_comment(comment):
    """``(job_id, name)`` from a job comment this collection wrote, else None."""
    match = _COMMENT.fullmatch((comment or "").strip())
    if not match or not is_uuid(match.group(1)):
        return None
    return match.group(1), match.group(2)


def _shown(text, secrets, limit=2000):
    text = mask((text or "").strip(), secrets)
    if len(text) > limit:
        text = "..." + text[-limit:]
    return repr(text) if text else "nothing"


class SlurmDriver(Driver):
    """Driver for a Slurm cluster reached over SSH."""

    name = "slurm"
    OPTIONS = dict(
        slurm_login_host=dict(type="str"),
        slurm_user=dict(type="str"),
        ssh_port=dict(type="int"),
        partition=dict(type="str"),
        account=dict(type="str"),
        time_limit=dict(type="str"),
        slurm_container_runtime=dict(type="str", choices=list(RUNTIMES), default="pyxis"),
        sbatch_options=dict(type="list", elements="str", default=[]),
        slurm_bind_address=dict(type="str", default="0.0.0.0"),
        **SSH_OPTIONS
    )
    CONNECTION = {"login_host": "slurm_login_host", "user": "slurm_user", "port": "ssh_port",
                  "key_path": "ssh_key_path", "ssh_config": "ssh_config"}
    FILE_CONNECTION = ("key_path", "ssh_config")
    CONNECTION_KINDS = {"login_host": "host", "user": "user", "port": "port", "key_path": "path", "ssh_config": "path"}
    ENTRY_FIELDS = {"login_host": "destination", "slurm_node": "host", "slurm_node_addr": "host", "node_port": "port",
                    "tunnel_pid": "pid", "tunnel_start_time": "digits", "slurm_runtime": "text"}
    EXECUTION_BACKEND = "slurm"
    uses_host_port = True

    @classmethod
    def spec_options(cls, params, environ):
        """What shapes the job (partition, account, limits, runtime); the SSH connection is not part of it."""
        from ansible_collections.tao.inference.plugins.module_utils.spec import _slurm_options

        return _slurm_options(params, environ)

    @classmethod
    def from_options(cls, connection, params):
        if not connection.get("login_host"):
            raise TaoInferenceError("platform slurm needs slurm_login_host: the login host that runs sbatch, reached "
                                    "with ssh in batch mode (plus slurm_user, ssh_key_path, ssh_port or ssh_config)")
        return cls(connection["login_host"], user=connection.get("user"), port=connection.get("port"),
                   key_path=connection.get("key_path"), ssh_config=connection.get("ssh_config"))

    def __init__(self, login_host, user=None, port=None, key_path=None, ssh_config=None):
        self.target = SSHTarget(login_host, user=user, port=port, key_path=key_path, config=ssh_config)

    # -- helpers ---------------------------------------------------------------
    def _run(self, words, stdin=None, check=True, timeout=60):
        return self.target.run(words, stdin=stdin, check=check, timeout=timeout)

    def job_state(self, job_id):
        """``(state, node, reason)`` from squeue, or from scontrol once the job left the queue;
        ``UNKNOWN`` only when Slurm says it has no such job. Raises when Slurm does not answer."""
        job_id = str(job_id)
        if not _SLURM_ID.fullmatch(job_id):
            return "UNKNOWN", "", ""
        rc, out, err = self._run(["squeue", "-h", "-j", job_id, "-o", "%T|%N|%r"], check=False)
        line = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
        if line:
            state, node, reason = (line.split("|") + ["", ""])[:3]
            return state, node, reason
        if rc != 0 and _INVALID_JOB not in err + out:
            raise TaoInferenceError("squeue on %s cannot tell the state of Slurm job %s: %s"
                                    % (self.target.destination, job_id, (err or out).strip() or "exit %d" % rc))
        rc, out, err = self._run(["scontrol", "show", "job", job_id], check=False)
        match = re.search(r"JobState=(\S+)", out)
        if rc == 0 and match:
            reason = re.search(r"Reason=(\S+)", out)
            return match.group(1), "", reason.group(1) if reason else ""
        if _INVALID_JOB in err + out:
            return "UNKNOWN", "", ""
        raise TaoInferenceError("scontrol on %s cannot tell the state of Slurm job %s: %s"
                                % (self.target.destination, job_id, (err or out).strip() or "exit %d" % rc))

    def _own_jobs(self):
        """The user's active jobs that this collection submitted: dicts of slurm_id, state, node,
        job_id, name. Raises when squeue does not answer."""
        rc, out, err = self._run(["squeue", "--me", "-h", "-o", "%i|%T|%N|%k"], check=False)
        if rc != 0:
            raise TaoInferenceError("`squeue --me` failed on %s: %s"
                                    % (self.target.destination, (err or out).strip() or "exit %d" % rc))
        jobs = []
        for line in out.splitlines():
            parts = line.split("|", 3)
            if len(parts) != 4 or not _SLURM_ID.fullmatch(parts[0]):
                continue
            mine = parse_comment(parts[3])
            if mine is None or parts[1] not in ACTIVE:
                continue
            jobs.append({"slurm_id": parts[0], "state": parts[1], "node": parts[2],
                         "job_id": mine[0], "name": mine[1]})
        return jobs

    def _jobs_of(self, job_id):
        return [job for job in self._own_jobs() if job["job_id"] == job_id] if is_uuid(job_id) else []

    def _node_addr(self, node):
        _rc, out, _err = self._run(["scontrol", "show", "node", node], check=False)
        match = re.search(r"NodeAddr=(\S+)", out)
        return check_host(match.group(1) if match else node, "the address Slurm gives for node %s" % node)

    def _log(self, job_id, lines=200):
        if not is_uuid(job_id):
            return ""
        _rc, out, _err = self._run(["tail", "-n", str(lines), "%s/%s.log" % (WORKDIR, job_id)], check=False)
        return out

    def _markers(self, job_id):
        """What the batch script printed about where the service listens (the first of each marker:
        the script prints them before the server's own output, however long the log grows)."""
        found = {}
        if not is_uuid(job_id):
            return found
        _rc, out, _err = self._run(["grep", "-m", "2", "-E", "^(%s|%s)" % (PORT_MARKER, ADDR_MARKER),
                                    "%s/%s.log" % (WORKDIR, job_id)], check=False)
        for line in out.splitlines():
            line = line.strip()
            if line.startswith(PORT_MARKER) and "port" not in found:
                value = line[len(PORT_MARKER):]
                if _PORT.fullmatch(value) and 1 <= int(value) <= 65535:
                    found["port"] = int(value)
            elif line.startswith(ADDR_MARKER) and "addr" not in found:
                try:
                    found["addr"] = str(ipaddress.ip_address(line[len(ADDR_MARKER):]))
                except ValueError:
                    pass
        return found

    def _node_port(self, job_id):
        return self._markers(job_id).get("port")

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
        """Submit, wait for RUNNING, open the tunnel; return the entry fields.

        Whatever fails after sbatch took the job cancels it (confirmed). If that cancel fails too, the
        TaoInferenceError names the Slurm job id. If the submit's outcome is unknown (ssh timed out or
        dropped, or sbatch printed no job id), the job is looked for by its comment and cancelled; the
        error names the job_id, so that ``state: absent`` with that job_id finds it should it appear."""
        spec, options = launch.spec, launch.spec.platform_options
        secrets = launch.secret_env
        script = batch_script(spec, options, launch.job_id, launch.command, launch.env, secrets)
        stdin = (secret_lines(secrets) + script).encode("utf-8")
        try:
            rc, out, err = self._run(submit_command(secrets), stdin=stdin, check=False, timeout=SUBMIT_TIMEOUT)
        except TaoInferenceError as exc:
            raise self._submit_unknown(launch, "the ssh call that runs sbatch on %s did not complete (%s)"
                                       % (self.target.destination, exc.msg)) from None
        if rc != 0:
            text = mask((err or out).strip(), secrets)
            hint = ""
            if "partition" in text.lower():
                hint = " Set partition (or SLURM_PARTITION)."
            elif "account" in text.lower():
                hint = " Set account (or SLURM_ACCOUNT)."
            raise TaoInferenceError("sbatch refused the job: %s.%s" % (text, hint))
        slurm_id = parse_sbatch_output(out)
        if slurm_id is None:
            raise self._submit_unknown(launch, "sbatch on %s printed no job id: its last line must be <id> or "
                                       "<id>;<cluster>, and it printed %s (stderr: %s)"
                                       % (self.target.destination, _shown(out, secrets), _shown(err, secrets)))
        fields = {"platform_job_id": slurm_id, "login_host": self.target.destination,
                  "slurm_runtime": options["runtime"], "host_port": launch.host_port}
        launch.on_submitted(fields)
        try:
            node, node_port = self._wait_running(slurm_id, launch)
            addr = tunnel_host(options, self._node_addr(node))
            pid, started = open_tunnel(self.target, launch.host_port, addr, node_port)
        except BaseException as exc:
            try:
                self._cancel(slurm_id)
            except TaoInferenceError as cancel_exc:
                if isinstance(exc, TaoInferenceError):
                    first, details = exc.msg, dict(exc.details)
                else:
                    first, details = "the start was interrupted (%s)" % getattr(exc, "name", type(exc).__name__), {}
                details["platform_job_id"] = slurm_id
                raise TaoInferenceError(mask("%s. Then cancelling Slurm job %s failed: %s"
                                             % (first, slurm_id, cancel_exc.msg), secrets), **details)
            raise
        fields.update(slurm_node=node, slurm_node_addr=addr, node_port=node_port, tunnel_pid=pid,
                      tunnel_start_time=started, host_url="http://localhost:%d" % launch.host_port)
        return fields

    def _submit_unknown(self, launch, why):
        """The submit may or may not have reached Slurm: find the job by its comment and cancel it.
        Returns the error to raise (it raises itself when the search or the cancel fails)."""
        job_id = launch.job_id
        later = ("should one appear, stop it with state: absent, job_id: %s, platform: slurm (its Slurm comment "
                 "carries %s%s)" % (job_id, COMMENT_PREFIX, job_id))
        try:
            found = self._jobs_of(job_id)
            if not found:
                time.sleep(SUBMIT_RECHECK)  # an sbatch still at work on the login host may submit a moment later
                found = self._jobs_of(job_id)
        except TaoInferenceError as exc:
            raise TaoInferenceError(mask("%s. Whether Slurm took the job is unknown: looking for it failed (%s); %s"
                                         % (why, exc.msg, later), launch.secret_env), job_id=job_id)
        if not found:
            return TaoInferenceError(mask("%s. None of your Slurm jobs carries job_id %s, so none was submitted; %s"
                                          % (why, job_id, later), launch.secret_env), job_id=job_id)
        ids = [job["slurm_id"] for job in found]
        launch.on_submitted({"platform_job_id": ids[0], "login_host": self.target.destination,
                             "slurm_runtime": launch.spec.platform_options["runtime"],
                             "host_port": launch.host_port})
        try:
            for slurm_id in ids:
                self._cancel(slurm_id)
        except TaoInferenceError as exc:
            raise TaoInferenceError(mask("%s. Slurm had taken it as job %s, and cancelling it failed: %s"
                                         % (why, ", ".join(ids), exc.msg), launch.secret_env),
                                    job_id=job_id, platform_job_id=ids[0])
        return TaoInferenceError(mask("%s. Slurm had taken it as job %s, which was cancelled: nothing is left "
                                      "running" % (why, ", ".join(ids)), launch.secret_env), job_id=job_id)

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

    def _cancel(self, slurm_id, wait=None):
        """``scancel``, then wait until Slurm shows the job out of the active states. Raises
        TaoInferenceError (with the Slurm job id and the scancel to run) when it cannot confirm that."""
        slurm_id = str(slurm_id)
        if not _SLURM_ID.fullmatch(slurm_id):
            raise TaoInferenceError("%r is not a Slurm job id; nothing was cancelled" % (slurm_id,))
        wait = CANCEL_WAIT if wait is None else wait
        by_hand = "check it and cancel it by hand on %s: scancel %s" % (self.target.destination, slurm_id)
        try:
            rc, out, err = self._run(["scancel", slurm_id], check=False)
            deadline = time.monotonic() + wait
            while True:
                state = self.job_state(slurm_id)[0]
                if state not in ACTIVE:
                    return
                if rc != 0:
                    raise TaoInferenceError("scancel %s failed (exit %d: %s) and the job is still %s; %s"
                                            % (slurm_id, rc, (err or out).strip() or "no message", state, by_hand),
                                            platform_job_id=slurm_id)
                if time.monotonic() >= deadline:
                    raise TaoInferenceError("Slurm job %s is still %s %ss after scancel; %s"
                                            % (slurm_id, state, wait, by_hand), platform_job_id=slurm_id)
                time.sleep(0.2)
        except TaoInferenceError as exc:
            if exc.details.get("platform_job_id") == slurm_id:
                raise
            raise TaoInferenceError("cancelling Slurm job %s could not be confirmed: %s; %s"
                                    % (slurm_id, exc.msg, by_hand), platform_job_id=slurm_id)

    def status(self, entry):
        slurm_id = entry.get("platform_job_id")
        if not slurm_id:
            return PlatformStatus(PlatformStatus.MISSING, "no Slurm job id")
        state, node, reason = self.job_state(slurm_id)
        alive = tunnel_alive(entry.get("tunnel_pid"), entry.get("tunnel_start_time"), self._spec_of(entry))
        extra = {"slurm_state": state, "tunnel_alive": alive}
        broken = "tunnel_down" if state == "RUNNING" and not alive else None
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
        status.broken = broken
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
        """The user's own active jobs that this collection submitted (a UUID job_id in the comment),
        optionally only those named ``name``."""
        found = []
        for job in self._own_jobs():
            if name is None or job["name"] == name:
                found.append(PlatformStatus(PlatformStatus.RUNNING, "job %s %s" % (job["slurm_id"], job["state"]),
                                            ident=job["job_id"],
                                            labels={"tao.inference.job_id": job["job_id"],
                                                    "tao.inference.name": job["name"] or None,
                                                    "platform_job_id": job["slurm_id"]}))
        return found

    def stop(self, entry):
        """Cancel the service's Slurm job and close its tunnel; True if something was stopped.

        Only the user's own active jobs (``squeue --me``) whose comment carries
        ``tao.inference:job_id=<entry's job_id>`` are cancelled: the recorded ``platform_job_id``
        when it is such a job, and any other such job (one whose submit was cut off before its id was
        recorded). A recorded id that is not such a job (it ended, or it is another user's or another
        service's) is never cancelled: if nothing of ours runs, the answer is False, nothing stopped.
        Raises TaoInferenceError when Slurm cannot be asked or a cancel is not confirmed, since a
        job of ours may then still run: the caller must keep the entry."""
        job_id = entry.get("job_id")
        ours = self._jobs_of(job_id)
        orphan_tunnels = []
        if entry.get("orphan"):
            # The registry lost the tunnel's pid: find it by where it forwards to.
            markers = self._markers(job_id) if ours else {}
            for job in ours:
                if job["node"] and markers.get("port"):
                    host = _publish_address(markers["addr"]) if markers.get("addr") else self._node_addr(job["node"])
                    orphan_tunnels += find_tunnels(host, markers["port"])
        for job in ours:
            self._cancel(job["slurm_id"])
        for pid, started, spec in orphan_tunnels:
            close_tunnel(pid, started, spec)
        return self.release(entry) or bool(ours)
