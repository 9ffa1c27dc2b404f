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

Jobs go to the login host's default cluster only: ``sbatch_options`` may not
choose another (``--clusters``), and a submit whose ``sbatch --parsable`` answer
names a cluster (``<id>;<cluster>``) is refused, since every later ``squeue``,
``scontrol`` and ``scancel`` asks the default cluster, where that id is another job.

Node ports. pyxis and apptainer containers share the node's network, so two
services on one node cannot both listen on 8080. When the inner command takes
``--port 8080`` (tao-dataservices, cosmos-predict2.5) the batch script picks the
first port from 8080 to 8199 that nothing listens on and that no other job of
the user holds (an ``flock`` on a per-port lock file, held for the job's life),
and the inner command reads it as ``$1``. cosmos-rl has no port option and always
listens on 8080: its script takes the same lock on 8080, and a second one on the
node ends at once with a log line that says why, rather than two servers
colliding. The docker runtime needs neither: each container has its own network
and Docker publishes a free port.

The lock files are the user's own: they live in ``/run/lock/tao-inference-<uid>``
(else ``/tmp/tao-inference-<uid>``), a folder the job makes with mode 0700 and
uses only when it is a real folder owned by the user. Another user who makes
that folder first (or any file in ``/tmp``) blocks nothing: the script goes on to
the next folder, and at last to ``port-locks-<host>`` beside the job log. Locks
keep one user's jobs apart; a job of another user is kept off a port by its
listening socket only, so two users' servers starting on one node at the same
moment may still collide (the second one fails to start and says so).

Where the service listens (``TAO_NODE_PORT=``, and ``TAO_NODE_ADDR=`` for a
docker publish address) goes in ``~/.tao-inference/<job_id>.node``, a file of its
own: written by the script under ``umask 077`` (0600), whole at once (a rename),
before a pyxis or apptainer container starts. The login host reads that file
only, and checks what it holds; never the job log, where the container's own
output goes too and could print a marker of its own.

Once the job is RUNNING, ``ssh -N -L 127.0.0.1:<host_port>:<node>:<node_port>``
through the login host makes it ``http://localhost:<host_port>``; the tunnel's
pid and start time go in the registry and it is stopped by exactly that pid.

Only the user's own jobs (``squeue --me``) whose comment carries a UUID
``tao.inference:job_id=`` are ever listed, reported or cancelled. A job counts as
ended only in one of the :data:`FINAL` states (or once Slurm no longer knows it);
any other state, whatever its name, is active. A cancel counts only once Slurm
shows the job ended: otherwise :class:`TaoInferenceError` names the Slurm job id
and the ``scancel`` to run.
"""

import base64
import ipaddress
import re
import shlex
import time

from ansible_collections.tao.inference.plugins.module_utils import catalog
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
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
RUNTIMES = ("pyxis", "apptainer", "docker")  # how a job runs its container (slurm_container_runtime)
GONE = "UNKNOWN"  # what job_state answers when Slurm has no such job (any more)
# The states in which a job has ended (squeue %T and scontrol JobState= spell them alike). Every
# other state is active, whatever its name: STOPPED, REQUEUE_HOLD, SPECIAL_EXIT, STAGE_OUT,
# SIGNALING, a state a later Slurm adds... such a job may still hold a node and is cancelled.
FINAL = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY", GONE)
NODE_PORTS = (catalog.CONTAINER_PORT, 8199)  # ports a host-network service may take on a node
SUBMIT_TIMEOUT = 60  # seconds for the ssh call that runs sbatch
SUBMIT_RECHECK = 2  # seconds before looking again for a job whose submit was cut off
CANCEL_WAIT = 15  # seconds Slurm may take to show a cancelled job in a final state
NODE_FILE_LIMIT = 1024  # bytes of a node file read: the script writes two short lines

# Every pattern is used with fullmatch: nothing may trail (not even a newline).
_SBATCH_OUTPUT = re.compile(r"[0-9]+")  # sbatch --parsable: the job id, on the default cluster
_SBATCH_ELSEWHERE = re.compile(r"([0-9]+);([A-Za-z0-9_.-]+)")  # <id>;<cluster>: submitted to another cluster
_SLURM_ID = re.compile(r"[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")
_COMMENT = re.compile(r"tao\.inference:job_id=([0-9a-f-]{36}),name=([A-Za-z0-9_.-]{0,63})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_DIRECTIVE = re.compile(r"#SBATCH --[a-z][a-z0-9-]*(=[\x21-\x7e]+)?")
_INVALID_JOB = "Invalid job id"
_WILDCARDS = ("0.0.0.0", "::")


# Full matches only (re.fullmatch): a trailing newline would end an #SBATCH line early.
_SBATCH_OPTION = re.compile(r"--[a-z][a-z0-9-]*(=[\x21-\x7e]+)?")
_SLURM_WORD = re.compile(r"[A-Za-z0-9_.:@+,-]+")
# sbatch options the collection sets itself, or that would break what it relies on: the comment
# that finds the job again, the private folder of its log and node file, the environment that
# carries secrets, one task in the folder it chose, the default cluster that every later squeue,
# scontrol and scancel asks (--clusters/--cluster; the short -M, like every short option, fails
# _SBATCH_OPTION). sbatch takes unambiguous prefixes (--comm=, --clu=), refused here too.
_RESERVED_SBATCH = ("--comment", "--output", "--error", "--input", "--open-mode", "--export", "--export-file",
                    "--get-user-env", "--wrap", "--array", "--chdir", "--ntasks", "--parsable", "--uid", "--gid",
                    "--clusters", "--cluster")


def is_active(state):
    """True unless ``state`` is one in which a job has ended (see :data:`FINAL`)."""
    return state not in FINAL


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
        "# The locks live in a folder of this user's own, which no other user can fill first.",
        "locks=",
        "for base in /run/lock /tmp; do",
        "  { [ -d \"$base\" ] && [ -w \"$base\" ]; } || continue",
        "  folder=\"$base/tao-inference-$(id -u)\"",
        "  mkdir -m 700 \"$folder\" 2>/dev/null",
        "  if [ ! -L \"$folder\" ] && [ -d \"$folder\" ] && [ -O \"$folder\" ] && chmod 700 \"$folder\"; then",
        "    locks=$folder",
        "    break",
        "  fi",
        "done",
        "if [ -z \"$locks\" ]; then  # another user made both folders first: keep the locks beside the job log",
        "  locks=\"$PWD/port-locks-$(hostname)\"",
        "  mkdir -p -m 700 \"$locks\" || exit 1",
        "fi",
        "listening() {",
        "  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=\"$(printf ':%04X' \"$1\")\" \\",
        "    '$4 == \"0A\" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }'",
        "}",
        "claim() {",
        "  lock=\"$locks/port-$1.lock\"",
        "  [ -L \"$lock\" ] && return 1",
        "  [ -e \"$lock\" ] || : >>\"$lock\" 2>/dev/null",
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


def _mark_lines():
    """Bash: ``mark LINE...`` writes where the service listens to the job's node file, readable by the
    user only and whole at once (a rename), or ends the job. Never to the job log: the container's
    output goes there too, and a line it prints must not be taken for the script's."""
    return [
        "mark() {",
        "  if ! (umask 077 && printf '%s\\n' \"$@\" >\"$name.node.tmp\" && mv -f \"$name.node.tmp\" \"$name.node\")",
        "  then",
        "    echo \"tao.inference: cannot write $PWD/$name.node, which tells the login host where the service "
        "listens\" >&2",
        "    exit 1",
        "  fi",
        "}",
    ]


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
    ] + _exports(env) + _mark_lines()
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
        lines += ["mark %s\"$port\"" % PORT_MARKER, launch, "wait $!"]
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
        mark = "mark " + ("%s%s " % (ADDR_MARKER, q(bind)) if bind not in _WILDCARDS else "")
        lines += [mark + "%s\"$port\"" % PORT_MARKER, "wait \"$run\""]
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


def _last_line(out):
    lines = [line.strip() for line in (out or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_sbatch_output(out):
    """The job id ``sbatch --parsable`` printed: its last non-empty stdout line, all of it a bare
    ``<id>``. None for anything else: a banner, a warning, nothing, and ``<id>;<cluster>`` (a job on
    another cluster, which no later squeue, scontrol or scancel of this driver would reach)."""
    line = _last_line(out)
    return line if _SBATCH_OUTPUT.fullmatch(line) else None


def parse_node_file(text, where="the node file"):
    """``{"port": int[, "addr": str]}`` from what the batch script wrote to a job's node file: one
    ``TAO_NODE_PORT=<1-65535>`` line and at most one ``TAO_NODE_ADDR=<IP or host>`` line, each ended
    by a newline, nothing else. Raises TaoInferenceError for any other text."""
    text = text or ""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key += sep
        if key == PORT_MARKER and "port" not in found and _PORT.fullmatch(value) and 1 <= int(value) <= 65535:
            found["port"] = int(value)
        elif key == ADDR_MARKER and "addr" not in found and _is_host(value):
            found["addr"] = value
        else:
            found = {}
            break
    if "port" not in found or not text.endswith("\n"):
        raise TaoInferenceError("%s holds %r, which is not what the batch script writes there (a %s<port> line "
                                "and at most a %s<address> line)" % (where, text[:200], PORT_MARKER, ADDR_MARKER))
    return found


def _is_host(value):
    try:
        check_host(value, "address")
    except TaoInferenceError:
        return False
    return True


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
        """What shapes the job (partition, account, limits, runtime, the docker runtime's publish
        address); the SSH connection is not part of it."""
        if not params.get("slurm_login_host"):
            raise TaoInferenceError("platform slurm needs slurm_login_host: the login host that runs sbatch, reached "
                                    "with ssh in batch mode (plus slurm_user, ssh_key_path, ssh_port or ssh_config)")
        options = {
            "login_host": params["slurm_login_host"],
            "partition": params.get("partition") or environ.get("SLURM_PARTITION") or None,
            "account": params.get("account") or environ.get("SLURM_ACCOUNT") or None,
            "time_limit": params.get("time_limit") or None,
            "runtime": params.get("slurm_container_runtime") or "pyxis",
            "sbatch_options": list(params.get("sbatch_options") or []),
        }
        if options["runtime"] not in RUNTIMES:
            raise TaoInferenceError("slurm_container_runtime %r is not one of %s"
                                    % (options["runtime"], ", ".join(RUNTIMES)))
        for key in ("partition", "account", "time_limit"):
            if options[key] and not (isinstance(options[key], str) and _SLURM_WORD.fullmatch(options[key])):
                raise TaoInferenceError("%s %r holds characters Slurm does not take in a name" % (key, options[key]))
        for option in options["sbatch_options"]:
            if not (isinstance(option, str) and _SBATCH_OPTION.fullmatch(option)):
                raise TaoInferenceError("sbatch_options entry %r must look like --name or --name=value (no spaces)"
                                        % (option,))
            name = option.split("=", 1)[0]
            if len(name) > 3 and any(reserved.startswith(name) for reserved in _RESERVED_SBATCH):
                raise TaoInferenceError("sbatch_options entry %r is not allowed: the collection sets %s itself (the job's "
                                        "comment, private log, environment, single task and default cluster are what "
                                        "it finds, reads and stops the service by)" % (option, ", ".join(_RESERVED_SBATCH)))
        bind = params.get("slurm_bind_address") or "0.0.0.0"
        try:
            bind = str(ipaddress.ip_address(bind)) if isinstance(bind, str) and "%" not in bind else None
        except ValueError:
            bind = None
        if bind is None:
            raise TaoInferenceError("slurm_bind_address %r is not an IP address (e.g. 0.0.0.0 for every interface of "
                                    "the node, or the node address the login host reaches)"
                                    % (params.get("slurm_bind_address"),))
        if bind != "0.0.0.0":
            if options["runtime"] != "docker":
                raise TaoInferenceError("slurm_bind_address applies to slurm_container_runtime docker only: pyxis and "
                                        "apptainer containers share the node's network and the server chooses its "
                                        "own address; remove slurm_bind_address or use the docker runtime")
            options["bind_address"] = bind  # absent at the default, so existing services keep their fingerprint
        return options

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
        """``(state, node, reason)`` of any job, from squeue (every state: ``-t all``), or from scontrol;
        :data:`GONE` only when Slurm says it has no such job. Raises when Slurm does not answer."""
        job_id = str(job_id)
        if not _SLURM_ID.fullmatch(job_id):
            return GONE, "", ""
        rc, out, err = self._run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T|%N|%r"], check=False)
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
            return GONE, "", ""
        raise TaoInferenceError("scontrol on %s cannot tell the state of Slurm job %s: %s"
                                % (self.target.destination, job_id, (err or out).strip() or "exit %d" % rc))

    def _listing(self):
        """The user's jobs that this collection submitted, in every state Slurm still shows: dicts of
        slurm_id, state, node, reason, job_id, name. Raises when squeue does not answer."""
        rc, out, err = self._run(["squeue", "--me", "-t", "all", "-h", "-o", "%i|%T|%N|%r|%k"], check=False)
        if rc != 0:
            raise TaoInferenceError("`squeue --me` failed on %s: %s"
                                    % (self.target.destination, (err or out).strip() or "exit %d" % rc))
        jobs = []
        for line in out.splitlines():
            parts = line.split("|", 4)
            if len(parts) != 5 or not _SLURM_ID.fullmatch(parts[0]):
                continue
            mine = parse_comment(parts[4])
            if mine is None:
                continue
            jobs.append({"slurm_id": parts[0], "state": parts[1], "node": parts[2], "reason": parts[3],
                         "job_id": mine[0], "name": mine[1]})
        return jobs

    def _own_jobs(self):
        """The user's active jobs that this collection submitted (see :meth:`_listing`)."""
        return [job for job in self._listing() if is_active(job["state"])]

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
        """Where the service listens, from the job's private node file (never from its log, which the
        container writes too): ``{}`` until the script wrote it. Raises when the file holds anything
        else than the script writes there."""
        if not is_uuid(job_id):
            return {}
        path = "%s/%s.node" % (WORKDIR, job_id)
        rc, out, _err = self._run(["head", "-c", str(NODE_FILE_LIMIT), path], check=False)
        if rc != 0:
            return {}  # not written yet
        return parse_node_file(out, "%s on %s" % (path, self.target.destination))

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

        Whatever fails or interrupts the start (a signal, Ctrl-C) after sbatch took the job cancels it
        (confirmed). If that cancel fails too, the TaoInferenceError names the Slurm job id. If the
        submit's outcome is unknown (ssh timed out or dropped, the run was interrupted while sbatch ran,
        or sbatch printed no job id), the job is looked for by its comment and cancelled; the error
        names the job_id, so that ``state: absent`` with that job_id finds it should it appear. An
        interruption is raised again as it came once that is done."""
        spec, options = launch.spec, launch.spec.platform_options
        secrets = launch.secret_env
        script = batch_script(spec, options, launch.job_id, launch.command, launch.env, secrets)
        stdin = (secret_lines(secrets) + script).encode("utf-8")
        slurm_id = tunnel = forward = None
        try:
            slurm_id = self._submit(launch, stdin)
            fields = {"platform_job_id": slurm_id, "login_host": self.target.destination,
                      "slurm_runtime": options["runtime"], "host_port": launch.host_port}
            launch.on_submitted(fields)
            node, node_port = self._wait_running(slurm_id, launch)
            addr = tunnel_host(options, self._node_addr(node))
            forward = forward_spec(launch.host_port, addr, node_port)
            tunnel = open_tunnel(self.target, launch.host_port, addr, node_port)  # it stops its ssh if cut short
        except BaseException as exc:
            if tunnel:  # interrupted right after the tunnel came up: it must not outlive the start
                close_tunnel(tunnel[0], tunnel[1], forward)
            if slurm_id is None:
                if not isinstance(exc, TaoInferenceError):
                    # A signal cut the submit short: sbatch may have taken the job all the same.
                    self._submit_unknown(launch, "the start was interrupted (%s) while sbatch ran on %s"
                                         % (_interruption(exc), self.target.destination))
                raise  # a TaoInferenceError of the submit: it already looked for the job
            self._cancel_started(slurm_id, exc, secrets)
            raise
        pid, started = tunnel
        fields.update(slurm_node=node, slurm_node_addr=addr, node_port=node_port, tunnel_pid=pid,
                      tunnel_start_time=started, host_url="http://localhost:%d" % launch.host_port)
        return fields

    def _submit(self, launch, stdin):
        """Run sbatch; the Slurm job id, or TaoInferenceError once a job whose id is unknown was
        looked for (and cancelled) by its comment."""
        secrets = launch.secret_env
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
        if slurm_id is not None:
            return slurm_id
        elsewhere = _SBATCH_ELSEWHERE.fullmatch(_last_line(out))
        if elsewhere:
            raise self._other_cluster(launch, elsewhere.group(1), elsewhere.group(2))
        raise self._submit_unknown(launch, "sbatch on %s printed no job id: its last line must be the job id alone, "
                                   "and it printed %s (stderr: %s)"
                                   % (self.target.destination, _shown(out, secrets), _shown(err, secrets)))

    def _other_cluster(self, launch, slurm_id, cluster):
        """sbatch answered ``<id>;<cluster>``: the job went to another cluster (an ``SBATCH_CLUSTERS`` or
        ``SLURM_CLUSTERS`` setting on the login host), where no later squeue, scontrol or scancel of
        this driver looks. Its id is never recorded (on the default cluster it names another job);
        that cluster is asked to cancel it, restricted to the job name this start gave it. Returns
        the error to raise."""
        name = "tao-%s" % launch.job_id[:8]
        rc, out, err = self._run(["scancel", "--clusters=%s" % cluster, "--name=%s" % name, slurm_id], check=False)
        sent = "scancel --clusters=%s --name=%s %s %s" % (
            cluster, name, slurm_id, "was sent" if rc == 0 else "failed (exit %d: %s)" % (
                rc, mask((err or out).strip(), launch.secret_env) or "no message"))
        return TaoInferenceError(
            "sbatch on %s submitted the job to cluster %s (job %s), not to the login host's default cluster, which "
            "is the only one this collection follows jobs on (is SBATCH_CLUSTERS or SLURM_CLUSTERS set there?); "
            "%s. Check that it ended: squeue --clusters=%s -j %s"
            % (self.target.destination, cluster, slurm_id, sent, cluster, slurm_id),
            job_id=launch.job_id, slurm_cluster=cluster)

    def _cancel_started(self, slurm_id, exc, secrets):
        """Cancel the job of a start that failed or was interrupted; raises TaoInferenceError naming the
        Slurm job id when that cancel fails."""
        try:
            self._cancel(slurm_id)
        except TaoInferenceError as cancel_exc:
            if isinstance(exc, TaoInferenceError):
                first, details = exc.msg, dict(exc.details)
            else:
                first, details = "the start was interrupted (%s)" % _interruption(exc), {}
            details["platform_job_id"] = slurm_id
            raise TaoInferenceError(mask("%s. Then cancelling Slurm job %s failed: %s"
                                         % (first, slurm_id, cancel_exc.msg), secrets), **details) from None

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
                                         % (why, exc.msg, later), launch.secret_env), job_id=job_id) from None
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
                                    job_id=job_id, platform_job_id=ids[0]) from None
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
            elif not is_active(state):
                log = mask(self._log(launch.job_id, 15), launch.secret_env).strip()
                raise TaoInferenceError("Slurm job %s ended as %s (%s) before the service started.%s"
                                        % (slurm_id, state, reason or "no reason",
                                           (" Job log:\n" + log) if log else ""))
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        why = ("Slurm holds it: %s" % reason) if state == "PENDING" else "last state %s" % state
        waited = "%g" % round(launch.timeout, 1)  # the start's remaining time: a float
        raise TaoInferenceError("Slurm job %s did not start within %ss (%s); it was cancelled. Check the partition, "
                                "account and resources, or raise wait_timeout" % (slurm_id, waited, why),
                                slurm_state=state, slurm_reason=reason)

    def _cancel(self, slurm_id, wait=None):
        """``scancel``, then wait until Slurm shows the job in a final state. Raises TaoInferenceError
        (with the Slurm job id and the scancel to run) when it cannot confirm that."""
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
                if not is_active(state):
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
        """The state of the service's own job. A recorded id that Slurm shows as another user's job, or
        as a job whose comment does not carry the service's job_id, is reported missing (not ours),
        as stop() would not touch it."""
        slurm_id = entry.get("platform_job_id")
        if not slurm_id:
            return PlatformStatus(PlatformStatus.MISSING, "no Slurm job id")
        slurm_id = str(slurm_id)
        mine = [job for job in self._listing() if job["slurm_id"] == slurm_id and job["job_id"] == entry.get("job_id")]
        if mine:
            state, node, reason = mine[0]["state"], mine[0]["node"], mine[0]["reason"]
        else:
            state, node, reason = self.job_state(slurm_id)
        alive = tunnel_alive(entry.get("tunnel_pid"), entry.get("tunnel_start_time"), self._spec_of(entry))
        extra = {"slurm_state": state, "tunnel_alive": alive}
        broken = "tunnel_down" if mine and state == "RUNNING" and not alive else None
        if state == GONE:
            status = PlatformStatus(PlatformStatus.MISSING, "job %s unknown to Slurm" % slurm_id)
        elif not mine:
            extra["slurm_state"] = None
            status = PlatformStatus(PlatformStatus.MISSING, "Slurm job %s is not this service's: %s; it is left "
                                    "alone" % (slurm_id, self._not_ours(slurm_id, entry.get("job_id"))))
        elif state == "RUNNING":
            status = PlatformStatus(PlatformStatus.RUNNING, "job %s RUNNING on %s; tunnel %s" % (
                slurm_id, node, "up" if alive else "down"))
        elif is_active(state):
            status = PlatformStatus(PlatformStatus.PENDING, "job %s %s (%s)" % (slurm_id, state, reason))
            if reason and reason != "None":
                extra["reason"] = reason  # why Slurm keeps it waiting (squeue %r): Resources, Priority...
        else:
            status = PlatformStatus(PlatformStatus.EXITED, "job %s %s (%s)" % (slurm_id, state, reason or "-"))
        status.extra.update(extra)
        status.broken = broken
        return status

    @staticmethod
    def _not_ours(slurm_id, job_id):
        return ("Slurm shows job %s as another user's job, or as one whose comment does not carry %s%s (the job "
                "may run on another cluster, or the id may now name another job)" % (slurm_id, COMMENT_PREFIX, job_id))

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
        recorded). A recorded id that Slurm shows as ended or no longer knows is no failure: if nothing
        of ours runs, the answer is False, nothing stopped. Raises TaoInferenceError, and cancels
        nothing, when the recorded id is active but not such a job (another user's, another job's): the
        service's own job may then run where this driver cannot see it, and the caller must keep the
        entry. Raises too when Slurm cannot be asked or a cancel is not confirmed."""
        job_id = entry.get("job_id")
        ours = self._jobs_of(job_id)
        recorded = entry.get("platform_job_id")
        if recorded and str(recorded) not in [job["slurm_id"] for job in ours]:
            state = self.job_state(recorded)[0]
            if is_active(state):
                raise TaoInferenceError(
                    "Slurm job %s, recorded for service %s, is %s but is not that service's job: %s. Nothing was "
                    "cancelled. Check it on %s (squeue -j %s), cancel the service's own job by hand if it still "
                    "runs, then drop the entry (tao_inference_info reports it missing; tao_inference_prune drops "
                    "it)" % (recorded, job_id, state, self._not_ours(recorded, job_id), self.target.destination,
                             recorded), platform_job_id=str(recorded), job_id=job_id)
        orphan_tunnels = []
        if entry.get("orphan") and ours:
            # The registry lost the tunnel's pid: find it by where it forwards to.
            try:
                markers = self._markers(job_id)
            except TaoInferenceError:
                markers = {}  # not what the script wrote: no tunnel is looked for by it
            for job in ours:
                if job["node"] and markers.get("port"):
                    host = _publish_address(markers["addr"]) if markers.get("addr") else self._node_addr(job["node"])
                    orphan_tunnels += find_tunnels(host, markers["port"])
        for job in ours:
            self._cancel(job["slurm_id"])
        for pid, started, spec in orphan_tunnels:
            close_tunnel(pid, started, spec)
        return self.release(entry) or bool(ours)


def _interruption(exc):
    """The name of the signal (or Ctrl-C) that interrupted a start."""
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    return getattr(exc, "name", None) or type(exc).__name__
