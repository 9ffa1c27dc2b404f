"""Proof suite, bad input: every module, fed valid-looking, wrongly typed and hostile values for
every option (thousands of cases, drawn by hypothesis), ends in ``exit_json`` or ``fail_json``;
no exception escapes ``main()``, and nothing a value says is ever run.

The modules run in this process, their arguments set the way Ansible's unit-test helper sets them
(``patch_module_args``), ``exit_json``/``fail_json`` patched to raise and carry the result; option
lists come from the modules' own argument specs, so an option added later is fuzzed too (with
type-based values until it gets its own). Every hostile string names one canary file (``touch
<canary>`` behind ``$(...)``, backticks, ``;``, newlines, ``-oProxyCommand=``, ``ssh://-o...@h``...);
it must never appear.

The world the modules see is fenced: DOCKER_HOST, and every docker_host drawn, is a fake Docker
engine on a unix socket (it answers ping/info/lists, and logs and refuses every change), a socket
that does not exist, or a closed loopback port. ``ssh`` on PATH logs its argv and plays the login
host: the remote command runs in a local ``sh`` with stubs for the Slurm commands in front (a
value that escaped its quotes would run, and touch the canary; sbatch, scancel and the like are
logged and refused); an argv holding a command-running option, or a destination ssh would read
as an option, goes to the real ssh aimed at a closed port, where a ProxyCommand still runs. Each
argv is checked: no destination starts with ``-``. ``state: present`` runs in check mode,
``state: absent`` sees a fresh, empty registry, tao_inference_request sees no service or one whose
port is closed, and outside check mode every wait is cut to a fraction of a second.

tao_inference_pull pulls from that fake engine (directly or through the fake login host), which
answers as the real one does for a registry or repository that does not exist, or sends a hostile,
erroneous or cut-off progress stream at once (no pull lasts); each case has its own state folder
(XDG_STATE_HOME, removed with the case), and may find another run's pull under way (a lock this
process holds) or a tampered state file. Check mode and watching must ask the engine for no pull and
write no state file; state files stay private; a failed or cut pull is never reported done; no
process the case started outlives it. The docker config holds a registry login: it never shows in a
result, a message or a state file.

``TAO_HOSTILE_EXAMPLES=n`` runs n cases per property (quick runs); ``TAO_HOSTILE_MESSAGES=n`` prints
the n commonest fail_json messages of each (to see how deep the cases get).
"""

import base64
import collections
import contextlib
import fcntl
import glob
import importlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from hypothesis import HealthCheck, given, settings, strategies as st

MODULES = ("tao_inference_service", "tao_inference_request", "tao_inference_info", "tao_inference_prune",
           "tao_inference_preflight", "tao_inference_fleet", "tao_inference_pull")
PACKAGE = "ansible_collections.tao.inference.plugins.modules."

# One private folder for the whole file; its name is fixed at import so strategies can name
# paths in it. The fixture makes it (0700) and removes it.
BASE = os.path.join(tempfile.gettempdir(), "tao-hostile-%s" % uuid.uuid4().hex[:12])
CANARY = os.path.join(BASE, "canary", "pwned")
FIXED = os.path.join(BASE, "fixed")
DEAD_SOCKET = os.path.join(BASE, "no-such-dir", "docker.sock")
FAKE_SOCKET = os.path.join(BASE, "engine.sock")  # the fake Docker engine (read-only, empty)
REMOTE_LOG = os.path.join(BASE, "remote.log")  # what the fake login host was asked to change
CASE = "@CASE@"  # replaced by each case's own fresh folder
# A registry login the docker config holds (``docker login registry.example:5000``): no result, message
# or state file may show it.
REGISTRY_SECRET = "hostile-registry-password-%s" % uuid.uuid4().hex[:12]
REGISTRY_AUTH = base64.b64encode(("alice:" + REGISTRY_SECRET).encode("ascii")).decode("ascii")
CASE_LIMIT = 30  # seconds one case may take before it counts as a hang

EXAMPLES = int(os.environ.get("TAO_HOSTILE_EXAMPLES", "0")) or None  # override the per-test counts
# Options whose value is a time the module may spend waiting: outside check mode they are kept short.
WAITS = ("timeout", "wait_timeout", "watch_timeout", "deadline", "wait_sleep", "lock_timeout")


def _closed_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


CLOSED_PORT = _closed_port()

# -- hostile values ---------------------------------------------------------------------------
_TEMPLATES = (
    "-oProxyCommand=touch {c}", "-o ProxyCommand=touch {c}", "-oLocalCommand=touch {c}",
    "-oPermitLocalCommand=yes -oLocalCommand=touch {c}", "$(touch {c})", "`touch {c}`", ";touch {c}",
    "x; touch {c}", "x && touch {c}", "x || touch {c}", "x | touch {c}", "x\ntouch {c}", "x\r\ntouch {c}\n",
    "'$(touch {c})'", "\"$(touch {c})\"", "'; touch {c}; echo '", "\\'; touch {c} #", "${{IFS}}touch${{IFS}}{c}",
    "ssh://-oProxyCommand=touch {c}@h", "ssh://-oProxyCommand=touch%20{c}@h", "ssh://u@-oProxyCommand=touch {c}",
    "ssh://$(touch {c})@localhost", "ssh://`touch {c}`@127.0.0.1", "ssh://localhost -oProxyCommand=touch {c}",
    "ssh://localhost/$(touch {c})", "ssh://-p1@localhost", "ssh://[-oProxyCommand=touch {c}]",
    "tcp://$(touch {c}):2375", "tcp://-oProxyCommand=touch {c}:1", "tcp://127.0.0.1:$(touch {c})",
    "unix://$(touch {c})", "unix:///tmp/x;touch {c}", "http://127.0.0.1:1/$(touch {c})",
    "hf_model://a/$(touch {c})", "hf_model://-oProxyCommand=touch {c}/m", "/models/$(touch {c})",
    "/data:/data;touch {c}", "/a:/b,/c:/d:rw;touch {c}", "--wrap=touch {c}", "--comment=$(touch {c})",
    "--output={c}", "--partition=x --wrap=touch {c}", "x\n#SBATCH --wrap=touch {c}", "--export=ALL,X=$(touch {c})",
    "{c}\x1b[2J", "\x01\x02touch {c}\x7f", "\ttouch {c}", "\u2028touch {c}", "\x85touch {c}",
    "\u202e$(touch {c})", "\u00fcn\u00ef-$(touch {c})", "\u540d\u524d$(touch {c})", "\ufeff-oProxyCommand=touch {c}",
    "%s%s%n$(touch {c})", "{{0}}$(touch {c})", "~/$(touch {c})", "$HOME/$(touch {c})",
    "../../etc/$(touch {c})", "x" * 4096 + "$(touch {c})", "-x" * 2000,
)
HOSTILE_PLAIN = tuple(t.format(c=CANARY) for t in _TEMPLATES)
ODD_STRINGS = ("", " ", "-", "--", "-h", "--help", "-v", "\n", "0", "-1", "1e309", "nan", "inf", "-inf", "true",
               "None", "null", "[]", "{}", "latest", "LATEST", "\x7f", "\x1b", "\x01")

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
small_text = st.text(_chars, max_size=12)
hostile = st.one_of(
    st.sampled_from(HOSTILE_PLAIN),
    st.builds(lambda a, t, b: a + t + b, small_text, st.sampled_from(HOSTILE_PLAIN), small_text),
    st.sampled_from(ODD_STRINGS),
    st.text(_chars, max_size=40),
)
_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, -1.0, 1e308]))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), _floats)
wrong_type = st.one_of(
    _scalars,
    st.lists(st.one_of(hostile, _scalars), max_size=3),
    st.dictionaries(st.one_of(hostile, st.sampled_from(["url", "type", "role", "content", "id", "prompt"])),
                    st.one_of(hostile, _scalars, st.lists(hostile, max_size=2)), max_size=3),
)


# -- valid-looking values -----------------------------------------------------------------------
def _fixed(name):
    return os.path.join(FIXED, name)


PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
       "AAAABJRU5ErkJggg==")
ENGINES = (
    "unix://" + FAKE_SOCKET, "unix://" + FAKE_SOCKET, "ssh://alice@localhost", "ssh://tao-login:2222",
    "unix://" + DEAD_SOCKET, "tcp://127.0.0.1:%d" % CLOSED_PORT, "tcp://localhost:%d" % CLOSED_PORT,
    "https://127.0.0.1:%d" % CLOSED_PORT, "tcp://[::1]:%d" % CLOSED_PORT, "ssh://127.0.0.1:%d" % CLOSED_PORT,
    "ssh://alice@localhost", "ssh://login-1.cluster.example", "ssh://root@[::1]:%d" % CLOSED_PORT,
)
HOSTS = ("localhost", "127.0.0.1", "login-1.cluster.example", "tao-login", "::1", "[::1]", "gpu_node.local")
TIME = st.floats(min_value=0.01, max_value=0.3)
REGISTRY_PATHS = (CASE + "/registry.json", CASE + "/new/sub/registry.json", CASE + "/link.json", CASE,
                  CASE + "/registry.json/", CASE + "/x/../registry.json", "registry.json")

SERVICE_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
MEDIA = st.sampled_from([PNG, _fixed("frame.png"), _fixed("frame-link.png"), _fixed("clip.mp4"), "file://" + _fixed("frame.png"),
                         "https://media.example/a.png", "http://127.0.0.1:%d/v.mp4" % CLOSED_PORT, "frame.png",
                         "/etc/passwd", "/dev/null", "s3://bucket/a.png", {"url": "https://media.example/x", "type": "video"},
                         _fixed("missing.png")])
MESSAGES = st.sampled_from([
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "terse"}, {"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": PNG}}]}],
    [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": _fixed("clip.mp4")}}]}],
    [{"role": "assistant", "content": "hi"}],
    [],
])
_SAMPLING_FIELDS = {
    "max_tokens": st.integers(1, 64), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "guidance": st.integers(0, 7), "num_steps": st.integers(1, 4), "seed": st.integers(0, 9),
    "negative_prompt": st.sampled_from(["blurry", ""])}
SAMPLING = st.one_of(st.just({}), st.just({}), st.fixed_dictionaries({"max_tokens": st.integers(1, 64)}),
                     st.fixed_dictionaries({}, optional=_SAMPLING_FIELDS))
REQUEST_ITEMS = st.lists(st.fixed_dictionaries({"prompt": st.sampled_from(["describe", "what happens?"])}, optional={
    "id": st.one_of(st.integers(0, 5), st.sampled_from(["a", "b", "clip-1"])), "media": MEDIA,
    "system_prompt": st.just("terse"), "sampling": SAMPLING, "messages": MESSAGES}), min_size=1, max_size=3)

VALID = {
    # every module
    "registry_path": st.sampled_from(REGISTRY_PATHS),
    "lock_timeout": st.floats(min_value=0.05, max_value=5),
    "job_id": st.one_of(st.uuids().map(str), st.just("latest")),
    "name": SERVICE_NAME,
    "network_arch": st.sampled_from(["cosmos-rl", "cosmos-predict2.5", "tao-dataservices"]),
    "platform": st.sampled_from(["local-docker", "slurm", "slurm", "kubernetes", "local-docker"]),
    # service, preflight
    "state": st.sampled_from(["present", "absent"]),
    "model_path": st.sampled_from(["hf_model://nvidia/Cosmos-Reason1-7B", "/models/ckpt", "hf_model://a/b",
                                   "hf_model://nvidia/Cosmos-Predict2.5-2B"]),
    "num_gpus": st.integers(0, 8),
    "image": st.sampled_from(["tao-inference-emulator:latest", "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl",
                              "registry.example:5000/team/img@sha256:" + "a" * 64]),
    "pull": st.sampled_from(["missing", "always", "never"]),
    "host_port": st.integers(1, 65535),
    "bind_address": st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "::"]),
    "env": st.dictionaries(ENV_NAME, st.one_of(st.text(_chars, max_size=8), st.integers(), st.booleans()), max_size=3),
    "secret_env": st.lists(st.sampled_from(["HOME", "PATH", "MISSING_VAR_X"]), max_size=2),
    "volumes": st.lists(st.sampled_from(["/data:/data", "/a:/b:ro", "/models:/models:rw"]), max_size=2),
    "server_options": st.sampled_from([{}, {"idle_timeout_minutes": 5}, {"disable_auto_deletion": "yes"}]),
    "shm_size": st.sampled_from(["16g", "512m", "1024", "1.5g"]),
    "docker_host": st.sampled_from(ENGINES),
    "docker_tls": st.booleans(),
    "docker_tls_verify": st.booleans(),
    "docker_cert_path": st.sampled_from([_fixed("certs"), _fixed("no-certs")]),
    "wait": st.booleans(),
    "wait_timeout": TIME,
    "wait_sleep": TIME,
    "slurm_login_host": st.sampled_from(HOSTS),
    "slurm_user": st.sampled_from(["alice", "root", "svc_1", "a.b-c"]),
    "ssh_key_path": st.sampled_from([_fixed("id_key"), _fixed("id_key-link"), _fixed("missing-key"), "/dev/null"]),
    "ssh_port": st.sampled_from([CLOSED_PORT, 22, 2222]),
    "ssh_config": st.sampled_from([_fixed("ssh_config"), _fixed("ssh_config-link"), _fixed("missing-config"),
                                   "/dev/null", _fixed("dangling-link")]),
    "partition": st.sampled_from(["batch", "gpu", "debug"]),
    "account": st.sampled_from(["proj1", "ml-team"]),
    "time_limit": st.sampled_from(["01:00:00", "30", "1-00:00:00"]),
    "slurm_container_runtime": st.sampled_from(["pyxis", "apptainer", "docker"]),
    "sbatch_options": st.lists(st.sampled_from(["--mem=4G", "--qos=normal", "--exclusive", "--gres=gpu:1"]),
                               max_size=2),
    "slurm_bind_address": st.sampled_from(["0.0.0.0", "10.0.0.5", "::"]),
    # request
    "prompt": st.text(_chars, max_size=30),
    "system_prompt": st.text(_chars, max_size=20),
    "media": st.lists(MEDIA, max_size=2),
    "messages": MESSAGES,
    "requests": REQUEST_ITEMS,
    "requests_file": st.sampled_from([_fixed("requests.jsonl"), _fixed("requests.csv"), _fixed("requests-link.jsonl"),
                                      _fixed("bad.jsonl"), _fixed("missing.jsonl"), _fixed("requests.txt"),
                                      _fixed("empty.csv"), FIXED]),
    "concurrency": st.integers(1, 8),
    "deadline": TIME,
    "fail_on_item_error": st.booleans(),
    "return_content_max": st.integers(0, 100),
    "output_path": st.sampled_from([CASE + "/out/answers.jsonl", CASE + "/answers.jsonl", CASE]),
    "output_dir": st.sampled_from([CASE + "/videos", CASE + "/out"]),
    "sampling": SAMPLING,
    "timeout": TIME,
    # service: secret values (AWX credentials); names the environment has, names it lacks, a name in secret_env too
    "secrets": st.dictionaries(st.sampled_from(["HF_TOKEN", "MYCORP_LOGIN", "HOME", "WANDB_API_KEY"]),
                               st.text(_chars, min_size=1, max_size=12), max_size=2),
    # prune
    "all": st.booleans(),
    # info
    "watch_from": st.sampled_from(["loading", "ready", "running", ""]),
    "watch_timeout": TIME,
}
BY_TYPE = {
    "str": small_text, "path": st.just(CASE + "/some-file"), "int": st.integers(0, 10), "float": TIME,
    "bool": st.booleans(), "list": st.lists(small_text, max_size=2), "raw": small_text,
    "dict": st.dictionaries(small_text, small_text, max_size=2),
}


def _valid(option, spec):
    if option in VALID:
        return VALID[option]
    if spec.get("choices"):
        return st.sampled_from(list(spec["choices"]))
    return BY_TYPE.get(spec.get("type", "str"), small_text)


# -- the modules' own argument specs -----------------------------------------------------------
class _Spec(Exception):
    pass


def argument_spec(module):
    """The argument_spec ``module``'s main() hands AnsibleModule."""
    def capture(self, argument_spec=None, **kwargs):
        raise _Spec(argument_spec)

    mod = importlib.import_module(PACKAGE + module)
    with mock_attr(basic.AnsibleModule, "__init__", capture):
        try:
            mod.main()
        except _Spec as found:
            return found.args[0]
    raise AssertionError("%s.main() made no AnsibleModule" % module)


@contextlib.contextmanager
def mock_attr(owner, name, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


SPECS = dict((m, argument_spec(m)) for m in MODULES)


@st.composite
def module_args(draw, module, core=(), fixed=None, groups=()):
    """``(args, bad)`` for ``module``: up to three options of its spec (``bad``, chosen uniformly)
    get a hostile string or a value of the wrong type; the others are left out or valid-looking.
    ``core`` options are there most of the time, others now and then; of each of ``groups`` (options
    that exclude each other; None for "none of them") one is picked. ``fixed`` are strategies that
    replace the valid-looking defaults."""
    spec = SPECS[module]
    fixed = fixed or {}
    options = sorted(spec)
    rnd = random.Random(draw(st.integers(0, 2 ** 64)))  # uniform choices (hypothesis favours "simple" ones)
    bad = rnd.sample(options, rnd.choice([0, 0, 0, 1, 1, 1, 2, 3]))

    def members(pick):
        return (pick,) if isinstance(pick, str) else tuple(pick or ())

    grouped = set(o for group in groups for pick in group for o in members(pick))
    chosen = set(o for group in groups for o in members(rnd.choice(group)))
    args = {}
    for option in options:
        if option in bad:
            args[option] = draw(st.one_of(hostile, hostile, wrong_type))
            continue
        if option in grouped:
            present = option in chosen and rnd.random() < 0.95
        else:
            present = rnd.random() < (0.95 if option in core else 0.12)
        if present:
            args[option] = draw(fixed[option] if option in fixed else _valid(option, spec[option]))
    return args, bad


# -- running a module ---------------------------------------------------------------------------
class Exited(Exception):
    pass


class Failed(Exception):
    pass


class Hang(BaseException):
    """Raised by the case watchdog; a BaseException so that no ``except Exception`` hides it."""


def _exit_json(self, **result):
    raise Exited(result)


def _fail_json(self, msg=None, **result):
    result["msg"] = msg
    raise Failed(result)


class World(object):
    """What the cases share: counters, the ssh log, the child processes seen, the defects found."""

    def __init__(self):
        self.outcomes = collections.Counter()
        self.per_test = collections.defaultdict(collections.Counter)
        self.defects = collections.OrderedDict()  # (test, module, where) -> [shortest args, detail]
        self.children = []
        self.ssh_log_offset = 0
        self.remote_log_offset = 0
        self.engine = None
        self.ssh_runs = 0
        self.case = 0
        self.seconds = collections.Counter()
        self.hostile_options = collections.defaultdict(collections.Counter)
        self.messages = collections.defaultdict(collections.Counter)  # fail_json messages, for tuning


WORLD = World()


class RecordingPopen(subprocess.Popen):
    def __init__(self, args, *rest, **kwargs):
        WORLD.children.append({"args": [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args),
                               "shell": bool(kwargs.get("shell"))})
        super(RecordingPopen, self).__init__(args, *rest, **kwargs)


def _substitute(value, folder):
    if isinstance(value, str):
        return value.replace(CASE, folder)
    if isinstance(value, list):
        return [_substitute(v, folder) for v in value]
    if isinstance(value, dict):
        return dict((_substitute(k, folder), _substitute(v, folder)) for k, v in value.items())
    return value


def _as_seconds(value):
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def keep_short(args, module):
    """Outside check mode a time option may not ask the module to wait long: values over 0.3 s (and
    inf) become 0.2 s, and so do the defaults (a request retries a closed port for wait_timeout,
    300 s by default). NaN, negatives and junk stay: the module must refuse them or cope."""
    for option in WAITS:
        if option not in SPECS[module] or option == "lock_timeout":
            continue
        if option == "deadline":  # no default (a batch has no deadline); a given one is kept short
            if option in args and not isinstance(args[option], bool):
                seconds = _as_seconds(args[option])
                if seconds is not None and (seconds > 0.3 or math.isinf(seconds)):
                    args[option] = 0.2
            continue
        if option not in args:
            args[option] = 0.2
        elif not isinstance(args[option], bool):
            seconds = _as_seconds(args[option])
            if seconds is not None and (seconds > 0.3 or math.isinf(seconds)):
                args[option] = 0.2
    return args


def no_real_engine(args):
    """A docker_host a non-check run may use: never one that could name the real engine's socket
    (``unix://`` with an empty path means /var/run/docker.sock)."""
    host = args.get("docker_host")
    if isinstance(host, str) and host.strip().lower().startswith("unix:") and host not in ENGINES:
        args["docker_host"] = ENGINES[0]
    return args


def _case_folder(registry):
    WORLD.case += 1
    folder = os.path.join(BASE, "cases", str(WORLD.case))
    os.makedirs(folder, 0o700)
    target = os.path.join(folder, "registry.json")
    if registry is not None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(registry, handle)
    os.symlink(target, os.path.join(folder, "link.json"))
    return folder


def _check_ssh_log(test, module, args):
    """New ssh invocations since the last case: none may have a destination that ssh reads as an
    option, nor an ``-o`` option that came from the hostile strings."""
    log = os.path.join(BASE, "ssh.log")
    if not os.path.exists(log):
        return
    with open(log) as handle:
        handle.seek(WORLD.ssh_log_offset)
        text = handle.read()
        WORLD.ssh_log_offset = handle.tell()
    for line in text.splitlines():
        argv = json.loads(line)
        WORLD.ssh_runs += 1
        problem = ssh_argv_problem(argv)
        if problem:
            _defect(test, module, "ssh argv: " + problem, args, json.dumps(argv))


SSH_WITH_VALUE = set("BbcDEeFIiJLlmOoPpQRSWw")


def _commands(option):
    """True for an ssh option that runs a command, or one that names the canary."""
    names = ("proxycommand", "localcommand", "knownhostscommand", "proxyjump")
    return CANARY in option or any(name in option.lower() for name in names)


def ssh_argv_problem(argv):
    """Why this ``ssh`` argv lets a value act as an option, or None. The destination is the first
    word that is not an option (after ``--`` if there is one)."""
    words = argv[1:]
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        if word.startswith("-o") and _commands(word):
            return "option %r" % word
        if word[1:2] in SSH_WITH_VALUE and len(word) == 2:
            value = words[index + 1] if index + 1 < len(words) else ""
            if word == "-o" and _commands(value):
                return "option -o %r" % value
            index += 2
        else:
            index += 1
    if index >= len(words):
        return None if "-G" in words or "-V" in words else "no destination"
    if words[index].startswith("-"):
        return "destination %r starts with '-'" % words[index]
    return None


def _check_changes(test, module, args):
    """Nothing may have asked the fake engine or the fake login host to change anything."""
    changes = list(WORLD.engine.changes) if WORLD.engine else []
    del WORLD.engine.changes[:]
    if os.path.exists(REMOTE_LOG):
        with open(REMOTE_LOG) as handle:
            handle.seek(WORLD.remote_log_offset)
            changes += ["login host: " + line for line in handle.read().splitlines()]
            WORLD.remote_log_offset = handle.tell()
    for change in changes:
        _defect(test, module, "it tried to change something: " + change[:200], args, change)


def _defect(test, module, where, args, detail):
    key = (test, module, where.splitlines()[0][:300])
    shown = json.dumps(args, sort_keys=True, default=repr)
    if key not in WORLD.defects or len(shown) < len(WORLD.defects[key][0]):
        WORLD.defects[key] = [shown, detail]


def _where(exc_tb):
    frames = traceback.extract_tb(exc_tb)
    last = frames[-1] if frames else None
    return "%s at %s:%s" % (sys.exc_info()[0].__name__, os.path.basename(last.filename) if last else "?",
                            last.lineno if last else "?")


def upstream_overflow(exc):
    """ansible-core's int check lets ``int(Decimal('Infinity'))`` raise OverflowError out of AnsibleModule()
    (it catches only DecimalException, TypeError and ValueError): an int option given inf or -inf."""
    frames = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, OverflowError) and bool(frames) and frames[-1].name == "check_type_int"


def call_main(module, args, check_mode, folder):
    """Run ``module``'s main() with ``args`` (exit_json / fail_json raise Exited / Failed)."""
    shown = json.dumps(args, sort_keys=True, default=repr)
    module_args_ = dict(args, _ansible_check_mode=check_mode, _ansible_diff=bool(len(shown) % 2),
                        _ansible_tmpdir=folder, _ansible_verbosity=0)
    with patch_module_args(module_args_), mock_attr(basic.AnsibleModule, "exit_json", _exit_json), \
            mock_attr(basic.AnsibleModule, "fail_json", _fail_json), \
            mock_attr(basic.AnsibleModule, "_log_invocation", lambda self: None):
        importlib.import_module(PACKAGE + module).main()


def _children():
    """This process's live child processes (pid -> command line); zombies are not counted."""
    found = {}
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, IndexError):
            continue
        if fields[1] == me and fields[0] != "Z":
            found[pid] = command
    return found


# Modules whose cases each get their own state folder (XDG_STATE_HOME), removed with the case.
OWN_STATE = ("tao_inference_pull",)


def run_case(test, module, args, check_mode, bad=(), registry=None, prepare=None, judge=None):
    """Run ``module`` with ``args``; count the outcome; record anything but exit_json/fail_json.
    ``prepare(folder, args)`` runs first (within the case's time limit), and may return a function that
    undoes what it set up; ``judge(folder, args, outcome, result)`` looks at what the case left."""
    for option in bad:
        WORLD.hostile_options[module][option] += 1
    folder = _case_folder(registry)
    args = _substitute(dict(args), folder)
    saved_state = os.environ.get("XDG_STATE_HOME")
    children = _children() if module in OWN_STATE else {}
    if module in OWN_STATE:
        os.makedirs(os.path.join(folder, "state"), 0o700)
        os.environ["XDG_STATE_HOME"] = os.path.join(folder, "state")

    def on_alarm(_signum, _frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT)
    began = time.monotonic()
    outcome = "exception"
    result = {}
    undo = None
    try:
        try:
            undo = prepare(folder, args) if prepare is not None else None
            call_main(module, args, check_mode, folder)
            outcome = "returned"
            _defect(test, module, "main() returned without exit_json or fail_json", args, "")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if undo is not None:
                undo()
    except Exited as exited:
        outcome = "exit_json"
        result = exited.args[0]
    except Failed as failed:
        outcome = "fail_json"
        result = failed.args[0]
        WORLD.messages[test][" ".join(str(failed.args[0].get("msg"))[:70].split())] += 1
    except Hang:
        _defect(test, module, "no answer within %d s" % CASE_LIMIT, args, traceback.format_exc())
    except BaseException as exc:  # noqa: B036 - SystemExit and the like escape main() too
        if isinstance(exc, KeyboardInterrupt):
            raise
        if upstream_overflow(exc):
            outcome = "upstream"  # counted apart; test_int_options_refuse_infinity fails on it
        else:
            _defect(test, module, _where(exc.__traceback__), args, traceback.format_exc())
    WORLD.seconds[test] += time.monotonic() - began
    WORLD.outcomes[outcome] += 1
    WORLD.per_test[test][outcome] += 1
    _check_ssh_log(test, module, args)
    _check_changes(test, module, args)
    if os.path.lexists(CANARY):
        _defect(test, module, "the canary %s was created" % CANARY, args, "")
        os.unlink(CANARY)
    _check_secrets(test, module, args, json.dumps(result, default=repr), "its result")
    if judge is not None:
        judge(folder, args, outcome, result)
    if module in OWN_STATE:
        if saved_state is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = saved_state
        _check_children(test, module, args, children)
    shutil.rmtree(folder, ignore_errors=True)
    return outcome


def _check_children(test, module, args, before):
    """No process the case started may outlive it (a second's grace for one that is ending)."""
    for _attempt in range(10):
        left = dict((pid, command) for pid, command in _children().items() if pid not in before)
        if not left:
            return
        time.sleep(0.1)
    _defect(test, module, "a process outlived the case", args, json.dumps(left))
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)


def _check_secrets(test, module, args, text, where):
    """No registry credential the docker config holds (nor the header made of it) may show in ``text``."""
    secrets = [REGISTRY_SECRET, REGISTRY_AUTH] + (WORLD.engine.auth if WORLD.engine else [])
    for secret in secrets:
        if secret and secret in text:
            _defect(test, module, "a registry credential shows in " + where, args, text[:2000])


# -- the world the cases run in ----------------------------------------------------------------
# ``ssh`` on PATH. It logs its argv, then plays the login host: the remote command runs in a local
# ``sh`` whose PATH starts with stubs for the Slurm commands (sinfo and squeue answer, anything that
# would change the cluster is logged and refused) and for ``docker system dial-stdio`` (a bridge to
# the fake engine). A value that got out of its quotes would run for real, and touch the canary.
# An argv with a command-running option, or a destination ssh would read as an option, goes to the
# real ssh instead (aimed at a closed port): whatever it would run, runs.
SSH_WRAPPER = """#!{python}
import json, os, sys
with open({log!r}, "a") as handle:
    handle.write(json.dumps(sys.argv) + "\\n")
argv = sys.argv[1:]
with_value = set("BbcDEeFIiJLlmOoPpQRSWw")
options, index = [], 0
while index < len(argv):
    word = argv[index]
    if word == "--":
        index += 1
        break
    if not word.startswith("-") or word == "-":
        break
    if word[1:2] in with_value and len(word) == 2:
        options += argv[index:index + 2]
        index += 2
    else:
        options.append(word)
        index += 1
words = argv[index:]
runs = [w for w in options if any(k in w.lower() for k in ("proxycommand", "localcommand", "proxyjump",
                                                          "knownhostscommand"))]
if "-G" in options or runs or (words and words[0].startswith("-")):
    real = {real!r}
    os.execv(real, [real, "-o", "HostName=127.0.0.1", "-o", "Port={port}", "-o", "ConnectTimeout=3",
                    "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null"] + argv)
config = options[options.index("-F") + 1] if "-F" in options else None
if config is not None and not os.path.exists(config):
    sys.stderr.write("Can't open user config file %s: No such file or directory\\n" % config)
    sys.exit(255)
if "-N" in options or len(words) < 2:
    sys.stderr.write("ssh: connect to host %s port 22: Connection refused\\n" % (words[0] if words else "?"))
    sys.exit(255)
os.execve("/bin/sh", ["/bin/sh", "-c", " ".join(words[1:])],
          dict(os.environ, PATH={stubs!r} + os.pathsep + os.environ.get("PATH", "")))
"""

STUB = """#!{python}
import json, os, socket, sys, threading
name = os.path.basename(sys.argv[0])
if name == "sinfo":
    print("batch|up\\ngpu|up\\ndebug|down")
elif name == "squeue":
    pass
elif name == "scontrol":
    sys.exit(1)
elif name == "docker" and sys.argv[1:3] == ["system", "dial-stdio"]:
    engine = socket.socket(socket.AF_UNIX)
    engine.connect({engine!r})

    def upstream():
        while True:
            data = os.read(0, 65536)
            if not data:
                engine.shutdown(socket.SHUT_WR)
                return
            engine.sendall(data)

    threading.Thread(target=upstream, daemon=True).start()
    while True:
        data = engine.recv(65536)
        if not data:
            break
        os.write(1, data)
else:
    with open({log!r}, "a") as handle:
        handle.write(json.dumps(sys.argv) + "\\n")
    sys.stderr.write("%s: refused by the hostile-input test's login host\\n" % name)
    sys.exit(1)
"""
STUBS = ("sinfo", "squeue", "scontrol", "sbatch", "scancel", "srun", "salloc", "docker", "apptainer", "enroot")


class FakeEngine(object):
    """A Docker Engine API on a unix socket that answers what a check or a status needs (ping, info,
    no images, no containers) and refuses, and logs, every request that would change something.

    While ``pull`` is set (tao_inference_pull's cases), ``POST /images/create`` is answered as it says
    instead, and logged in ``pulls`` (the ``X-Registry-Auth`` headers in ``auth``): ``("status", code,
    message)`` an error as the real engine gives for a registry or repository that does not exist;
    ``("stream", lines)`` a 200 progress stream of those lines (chunked, as the engine sends it), then
    its end; ``("cut", lines)`` the same stream cut off, as when the engine stops mid-pull. The stream
    comes at once, so no pull lasts; an image whose stream ended without an error is in ``images``
    (its inspect answers) until the case ends."""

    def __init__(self, path):
        import http.server
        import socketserver
        import threading

        changes = self.changes = []
        engine = self
        self.pull = None
        self.pulls = []
        self.auth = []
        self.images = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, document, headers=()):
                body = json.dumps(document).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("API-Version", "1.45")
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/_ping":
                    return self._send(200, "OK")
                path = path.split("/", 2)[-1] if path.startswith("/v1.") else path.lstrip("/")
                if path == "info":
                    return self._send(200, {"ServerVersion": "27.0.0-hostile-test",
                                            "Runtimes": {"runc": {}, "nvidia": {}}})
                if path == "version":
                    return self._send(200, {"ApiVersion": "1.45", "Version": "27.0.0"})
                if path == "containers/json":
                    return self._send(200, [])
                if path.startswith("images/") and path.endswith("/json") and \
                        unquote(path[len("images/"):-len("/json")]) in engine.images:
                    return self._send(200, {"Id": "sha256:" + "c" * 64, "RepoTags": []})
                return self._send(404, {"message": "no such object: %s" % path})

            def _pull(self):
                engine.pulls.append(self.path)
                if self.headers.get("X-Registry-Auth"):
                    engine.auth.append(self.headers["X-Registry-Auth"])
                answer = engine.pull
                if answer[0] == "stream" and not _answer_fails(answer):
                    query = parse_qs(urlsplit(self.path).query)
                    image = query.get("fromImage", [""])[0]
                    engine.images.add(image + (":" + query["tag"][0] if "tag" in query else ""))
                if answer[0] == "status":
                    return self._send(answer[1], {"message": answer[2]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("API-Version", "1.45")
                self.end_headers()
                self.close_connection = True
                try:
                    for line in answer[1]:
                        data = line.encode("utf-8", "surrogatepass") + b"\r\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    if answer[0] == "stream":
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading at an error event: the engine would see the same

            def _change(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if engine.pull is not None and self.command == "POST" and \
                        self.path.split("?")[0].endswith("/images/create"):
                    return self._pull()
                changes.append("%s %s" % (self.command, self.path))
                self._send(500, {"message": "the hostile-input test's engine changes nothing"})

            do_POST = do_PUT = do_DELETE = _change

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _entry(arch, job_id, name, port):
    return {"job_id": job_id, "name": name, "platform": "local-docker", "network_arch": arch,
            "host_url": "http://127.0.0.1:%d" % port, "host_port": port, "port_scope": "local",
            "status": "started", "started_at": "2026-01-01T00:00:00.000000Z", "num_gpus": 0,
            "model_path": "hf_model://nvidia/Cosmos-Reason1-7B", "image": "tao-inference-emulator:latest",
            "docker_host": "unix://" + FAKE_SOCKET, "connection": {"docker_host": "unix://" + FAKE_SOCKET},
            "secret_env": [], "fingerprint": "0123456789abcdef"}


ONE_JOB = "5a1c0d2e-3b4f-4a5b-8c6d-7e8f9a0b1c2d"


def one_service(arch):
    return {ONE_JOB: _entry(arch, ONE_JOB, "svc-closed", CLOSED_PORT), "latest": ONE_JOB, "schema_version": 1}


def _write(path, text, mode=0o600):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def world():
    real_ssh = shutil.which("ssh")
    if real_ssh is None:
        pytest.skip("no ssh client")
    os.makedirs(BASE, 0o700)
    for folder in ("canary", "fixed", "bin", "stubs", "cases", "work", "fixed/certs", "fixed/no-certs",
                   "docker-config", "state"):
        os.makedirs(os.path.join(BASE, folder), 0o700, exist_ok=True)
    stubs = os.path.join(BASE, "stubs")
    _write(os.path.join(BASE, "bin", "ssh"), SSH_WRAPPER.format(
        python=sys.executable, log=os.path.join(BASE, "ssh.log"), real=real_ssh, port=CLOSED_PORT, stubs=stubs), 0o700)
    for name in STUBS:
        _write(os.path.join(stubs, name), STUB.format(python=sys.executable, engine=FAKE_SOCKET, log=REMOTE_LOG), 0o700)
    engine = FakeEngine(FAKE_SOCKET)
    _write(_fixed("id_key"), "not a key\n")
    os.symlink(_fixed("id_key"), _fixed("id_key-link"))
    _write(_fixed("ssh_config"), "Host *\n  LogLevel ERROR\n")
    os.symlink(_fixed("ssh_config"), _fixed("ssh_config-link"))
    os.symlink(_fixed("gone"), _fixed("dangling-link"))
    with open(_fixed("frame.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    os.symlink(_fixed("frame.png"), _fixed("frame-link.png"))
    with open(_fixed("clip.mp4"), "wb") as handle:
        handle.write(b"\0\0\0\x18ftypmp42" + b"\0" * 64)
    _write(_fixed("requests.jsonl"), '{"id": "a", "prompt": "hi", "media": "frame.png"}\n{"prompt": "again"}\n')
    _write(_fixed("requests.csv"), "id,prompt,media\na,hi,frame.png\nb,\"$(touch %s)\",\n" % CANARY)
    os.symlink(_fixed("requests.jsonl"), _fixed("requests-link.jsonl"))
    _write(_fixed("bad.jsonl"), '{"prompt": "x"}\nnot json\n[1, 2]\n')
    _write(_fixed("requests.txt"), "prompt\n")
    _write(_fixed("empty.csv"), "")
    _write(os.path.join(BASE, "docker-config", "config.json"),
           json.dumps({"auths": {"registry.example:5000": {"auth": REGISTRY_AUTH}}}))

    # Hypothesis also draws constants it finds in the local modules loaded so far, so what it generates
    # would depend on which tests ran before; without them a run is the same alone and in `make test`.
    from hypothesis.internal.conjecture import providers
    saved_constants = getattr(providers, "_get_local_constants", None)
    if saved_constants is not None:
        providers._get_local_constants = providers.Constants

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_popen = subprocess.Popen
    for name in list(os.environ):
        if name.startswith(("DOCKER_", "SLURM_", "SSH_AUTH")) or name in ("HF_TOKEN", "IMAGE_COSMOS_RL"):
            del os.environ[name]
    os.environ.update({
        "DOCKER_HOST": "unix://" + FAKE_SOCKET,
        "DOCKER_CONFIG": os.path.join(BASE, "docker-config"),
        "XDG_STATE_HOME": os.path.join(BASE, "state"),
        "PATH": os.path.join(BASE, "bin") + os.pathsep + os.environ.get("PATH", ""),
    })
    os.chdir(os.path.join(BASE, "work"))
    subprocess.Popen = RecordingPopen
    WORLD.engine = engine
    try:
        yield WORLD
    finally:
        engine.close()
        if saved_constants is not None:
            providers._get_local_constants = saved_constants
        subprocess.Popen = saved_popen
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        canary_there = os.path.lexists(CANARY)
        shutil.rmtree(BASE, ignore_errors=True)
        assert not canary_there, "the canary %s was created" % CANARY


def _settings(examples):
    return settings(max_examples=EXAMPLES or examples, derandomize=True, database=None, deadline=None,
                    print_blob=False, suppress_health_check=list(HealthCheck))


def _report(test):
    counts = WORLD.per_test[test]
    total = sum(counts.values())
    print("\nhostile input: %s: %d cases, %d fail_json, %d exit_json, %d inf/-inf for an int option (ansible-core "
          "OverflowError, see test_int_options_refuse_infinity), %d other; %.1f s in the modules"
          % (test, total, counts["fail_json"], counts["exit_json"], counts["upstream"],
             total - counts["fail_json"] - counts["exit_json"] - counts["upstream"], WORLD.seconds[test]))
    if os.environ.get("TAO_HOSTILE_MESSAGES"):
        for message, count in WORLD.messages[test].most_common(int(os.environ["TAO_HOSTILE_MESSAGES"])):
            print("  %5d  %s" % (count, message))
    found = [(key, value) for key, value in WORLD.defects.items() if key[0] == test]
    assert not found, "%d defects:\n\n" % len(found) + "\n\n".join(
        "%s: %s\nargs: %s\n%s" % (key[1], key[2], value[0], value[1][-3000:]) for key, value in found)
    assert counts["exit_json"] + counts["fail_json"] + counts["upstream"] == total


# -- the properties ------------------------------------------------------------------------------
SERVICE_CORE = ("state", "network_arch", "model_path", "registry_path", "platform")
SLURM_CORE = ("slurm_login_host", "slurm_user", "ssh_config", "ssh_key_path", "partition", "sbatch_options",
              "ssh_port")
REQUEST_CORE = ("sampling", "registry_path")
# One input (media goes with a prompt), one way to choose the service (or none: the only one).
BATCH = ("deadline", "output_path", "return_content_max", "concurrency", "fail_on_item_error")
REQUEST_GROUPS = [
    ("prompt", ("prompt", "media"), ("prompt", "media", "system_prompt", "output_dir"), "messages",
     ("requests",) + BATCH, ("requests_file", "output_path", "output_dir"), ("requests", "concurrency", "timeout")),
    ("job_id", "name", None, None)]


def test_the_traps_work(world):
    """The traps catch what they are for: a ProxyCommand that reaches ssh runs and touches the canary,
    so does a command that reaches the fake login host unquoted; the argv check flags a destination
    that starts with '-'; the fake engine logs a change."""
    from ansible_collections.tao.inference.plugins.module_utils.docker_engine import DockerEngine, EngineError

    caught = []
    for argv in (["ssh", "-o", "BatchMode=yes", "-oProxyCommand=touch " + CANARY, "--", "h", "true"],
                 ["ssh", "-o", "BatchMode=yes", "--", "h", "true;", "touch", CANARY]):
        subprocess.run(argv, capture_output=True, timeout=30, check=False)
        caught.append(os.path.exists(CANARY))
        if caught[-1]:
            os.unlink(CANARY)
    problems = [ssh_argv_problem(argv) for argv in (
        ["ssh", "-p", "22", "--", "-oProxyCommand=x", "true"], ["ssh", "-i", "/k", "-oProxyCommand=x", "h"],
        ["ssh", "-o", "LocalCommand=x", "h"], ["ssh", "-p", "22", "-i", "/k", "--", "u@h", "true"])]
    engine = DockerEngine("unix://" + FAKE_SOCKET, timeout=5)
    with pytest.raises(EngineError):
        engine.container_create("hostile-test", {"Image": "x"})
    engine.close()
    logged = list(WORLD.engine.changes)
    # Start the cases from a clean slate: these were the traps' own.
    del WORLD.engine.changes[:]
    with open(os.path.join(BASE, "ssh.log")) as handle:
        handle.seek(0, os.SEEK_END)
        WORLD.ssh_log_offset = handle.tell()
    print("\nhostile input: traps: ProxyCommand ran (%s), unquoted remote command ran (%s), bad argvs flagged %d "
          "of 3, fake engine logged %s" % (caught[0], caught[1], sum(bool(p) for p in problems[:3]), logged))
    assert caught == [True, True]
    assert all(problems[:3]) and problems[3] is None, problems
    assert logged and logged[0].startswith("POST ") and "/containers/create" in logged[0]


def test_service_present_in_check_mode(world):
    test = "service present (check mode)"

    @_settings(1200)
    @given(drawn=module_args("tao_inference_service", core=SERVICE_CORE + SLURM_CORE + ("docker_host",),
                             fixed={"state": st.just("present")}, groups=[("name", "name", None, None, "job_id")]))
    def cases(drawn):
        args, bad = drawn
        run_case(test, "tao_inference_service", args, True, bad=bad)

    cases()
    _report(test)


def test_service_absent_on_an_empty_registry(world):
    test = "service absent"

    @_settings(500)
    @given(drawn=module_args("tao_inference_service", core=("state", "registry_path", "platform", "docker_host",
                                                            "slurm_login_host"),
                             fixed={"state": st.just("absent")}, groups=[("name", "job_id", "job_id", None)]),
           check_mode=st.booleans())
    def cases(drawn, check_mode):
        args, bad = drawn
        if not check_mode:
            args = no_real_engine(keep_short(args, "tao_inference_service"))
        run_case(test, "tao_inference_service", args, check_mode, bad=bad)

    cases()
    _report(test)


def test_preflight(world):
    test = "preflight"

    @_settings(600)
    @given(drawn=module_args("tao_inference_preflight",
                             core=("network_arch", "platform", "docker_host", "registry_path") + SLURM_CORE))
    def cases(drawn):
        args, bad = drawn
        run_case(test, "tao_inference_preflight", no_real_engine(keep_short(args, "tao_inference_preflight")), False, bad=bad)

    cases()
    _report(test)


def test_info(world):
    test = "info"

    @_settings(500)
    @given(drawn=module_args("tao_inference_info", core=("registry_path",), groups=[("name", "job_id", None, None)]),
           check_mode=st.booleans(),
           registry=st.sampled_from([None, "one"]))
    def cases(drawn, check_mode, registry):
        args, bad = drawn
        if not check_mode:
            args = no_real_engine(keep_short(args, "tao_inference_info"))
        run_case(test, "tao_inference_info", args, check_mode, bad=bad,
                 registry=one_service("cosmos-rl") if registry else None)

    cases()
    _report(test)


def test_prune(world):
    test = "prune"

    @_settings(300)
    @given(drawn=module_args("tao_inference_prune", core=("registry_path",),
                             groups=[("name", "job_id", "all", "all", None)]),
           check_mode=st.booleans(),
           registry=st.sampled_from([None, "one"]))
    def cases(drawn, check_mode, registry):
        args, bad = drawn
        if not check_mode:
            args = no_real_engine(keep_short(args, "tao_inference_prune"))
        run_case(test, "tao_inference_prune", args, check_mode, bad=bad,
                 registry=one_service("cosmos-rl") if registry else None)

    cases()
    _report(test)


# What a fleet's hosts publish and its inventory holds: each value valid-looking or hostile.
FLEET_CONNECTION = st.fixed_dictionaries({}, optional=dict((key, st.one_of(hostile, valid)) for key, valid in (
    ("ansible_host", st.sampled_from(["10.9.0.2", "gpu1.example", "::1"])),
    ("ansible_user", st.sampled_from(["root", "ops"])),
    ("ansible_port", st.sampled_from([22, "2222"])),
    ("ansible_ssh_private_key_file", st.sampled_from(["/keys/id", "~/.ssh/id"])),
    ("ansible_ssh_common_args", st.sampled_from(["-o StrictHostKeyChecking=no", "-o ProxyCommand=touch " + CANARY,
                                                 "-oLocalCommand=touch %s" % CANARY, "-J a@b:22", "-F /etc/x"])),
    ("ansible_connection", st.sampled_from(["ssh", "local"])))))
FLEET_SERVICE = st.fixed_dictionaries({"job_id": st.one_of(st.just(ONE_JOB), hostile)}, optional={
    "network_arch": st.one_of(st.just("cosmos-rl"), hostile), "name": st.one_of(SERVICE_NAME, hostile),
    "host_url": st.one_of(st.sampled_from(["http://localhost:8080", "http://10.9.0.2:8080"]), hostile),
    "platform_status": st.one_of(st.just({"state": "running"}), wrong_type), "machine": hostile,
    "shape": st.one_of(st.just({"platform_options": {"bind_address": "0.0.0.0"}}), wrong_type)})
FLEET_HOSTS = st.lists(st.fixed_dictionaries({"inventory_host": st.one_of(st.sampled_from(["gpu1", "gpu2"]), hostile)},
                                             optional={"reachable": st.booleans(), "error": hostile,
                                                       "services": st.lists(FLEET_SERVICE, max_size=2),
                                                       "connection": FLEET_CONNECTION}), max_size=3)


def test_fleet(world):
    test = "fleet"

    @_settings(300)
    @given(drawn=module_args("tao_inference_fleet", core=("registry_path", "hosts"), fixed={
        "hosts": FLEET_HOSTS, "job_ids": st.lists(st.one_of(st.just(ONE_JOB), hostile), max_size=2),
        "missing_hosts": st.lists(st.one_of(st.just("gpu3"), hostile), max_size=2)}), check_mode=st.booleans())
    def cases(drawn, check_mode):
        args, bad = drawn
        if not check_mode:
            args["forward"] = False  # no ssh process outlives a case; the variables are checked all the same
        run_case(test, "tao_inference_fleet", args, check_mode, bad=bad, registry={})

    cases()
    _report(test)


# -- tao_inference_pull -------------------------------------------------------------------------
# Images of registries that do not exist (the fake engine answers for them as the real one would).
PULL_IMAGES = st.sampled_from(["registry.example:5000/team/img:1", "registry.example:5000/team/img@sha256:" + "a" * 64,
                               "no-such-registry.invalid/x/y:1", "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl",
                               "tao-inference-emulator:latest"])
PULL_REFUSALS = st.sampled_from([
    ("status", 404, "pull access denied for team/img, repository does not exist or may require 'docker login': "
                    "denied: requested access to the resource is denied"),
    ("status", 500, 'Get "https://registry.example:5000/v2/": dial tcp: lookup registry.example on 127.0.0.11:53: '
                    "no such host"),
    ("status", 500, 'Head "https://nvcr.io/v2/nvidia/tao/tao-toolkit/manifests/7.0.0-cosmos-rl": unauthorized: '
                    "authentication required"),
    ("status", 404, "manifest for registry.example:5000/team/img:1 not found: manifest unknown"),
    ("status", 500, "$(touch %s)\n-oProxyCommand=touch %s" % (CANARY, CANARY)),
])
_LAYER = st.sampled_from(["a1b2c3d4e5f6", "0f0f0f0f0f0f", "1"])
_STATUSES = st.sampled_from(["Pulling fs layer", "Waiting", "Downloading", "Verifying Checksum", "Download complete",
                             "Extracting", "Pull complete", "Already exists", "Retrying in 5 seconds",
                             "Digest: sha256:" + "b" * 64, "Status: Downloaded newer image for x:1"])
_BIG = st.one_of(st.integers(-2 ** 70, 2 ** 70), wrong_type)
PULL_EVENT = st.one_of(
    st.fixed_dictionaries({"status": _STATUSES}, optional={
        "id": _LAYER, "progress": st.just("[==>    ] 1MB/20MB"),
        "progressDetail": st.fixed_dictionaries({}, optional={"current": st.integers(0, 2 ** 40),
                                                              "total": st.integers(1, 2 ** 40)})}),
    st.fixed_dictionaries({"status": st.one_of(_STATUSES, hostile, wrong_type)}, optional={
        "id": st.one_of(_LAYER, hostile, wrong_type),
        "progressDetail": st.one_of(st.fixed_dictionaries({}, optional={"current": _BIG, "total": _BIG}), wrong_type)}),
    st.fixed_dictionaries({"error": st.one_of(hostile, wrong_type)},
                          optional={"errorDetail": st.one_of(st.fixed_dictionaries({"message": hostile}), wrong_type)}),
    wrong_type)
PULL_LINE = st.one_of(PULL_EVENT.map(json.dumps), PULL_EVENT.map(json.dumps),
                      st.text(_chars, max_size=40).map(lambda t: t.replace("\n", " ").replace("\r", " ")))
PULL_DONE = ("stream", [json.dumps(e) for e in (
    {"status": "Pulling from team/img", "id": "1"}, {"status": "Pulling fs layer", "id": "a1b2c3d4e5f6"},
    {"status": "Downloading", "id": "a1b2c3d4e5f6", "progressDetail": {"current": 512, "total": 1024}},
    {"status": "Pull complete", "id": "a1b2c3d4e5f6"}, {"status": "Status: Downloaded newer image for x:1"})])
PULL_ANSWER = st.one_of(PULL_REFUSALS, st.just(PULL_DONE),
                        st.tuples(st.sampled_from(["stream", "stream", "cut"]), st.lists(PULL_LINE, max_size=8)))
PULL_CORE = ("network_arch", "image", "docker_host", "pull")
PULL_FIXED = {"image": PULL_IMAGES, "docker_host": st.sampled_from(ENGINES[:4]), "platform": st.just("local-docker"),
              "pull": st.sampled_from(["missing", "always", "missing", "never"]), "watch_timeout": st.floats(0.1, 0.3),
              "tolerations": st.lists(st.just({"key": "gpu", "operator": "Exists"}), max_size=1)}


PULL_DEPTH = collections.Counter()  # how deep the pull cases got (printed with their report)


def _answer_fails(answer):
    """Whether the engine's answer is a failed pull (an error status, a cut stream, an error event)."""
    if answer[0] != "stream":
        return True
    for line in answer[1]:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("error"):
            return True
    return False


def _pulls_folder(folder):
    return os.path.join(folder, "state", "tao-inference", "pulls")


def _pull_files(folder):
    """Each file of the case's pulls folder: name -> (mode, size, mtime)."""
    found = {}
    for path in glob.glob(os.path.join(_pulls_folder(folder), "*")):
        st_ = os.lstat(path)
        found[os.path.basename(path)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return found


def _pre_pull(folder, args, answer):
    """Run the pull once as a real run would (not a case: it only leaves a state file and a lock)."""
    WORLD.engine.pull = answer
    try:
        call_main("tao_inference_pull", dict(args, watch=False), False, folder)
    except (Exited, Failed):
        pass


class _Holder(object):
    """Another run's pull under way: it holds the lock, its state file says pulling; ``end()`` lets go,
    leaving the state file saying ``end_state`` (None: as it was, pulling)."""

    def __init__(self, folder, end_state):
        self.fd = None
        self.end_state = end_state
        self.timer = None
        self.images = set(WORLD.engine.images)  # what its pull brings, once it is done
        WORLD.engine.images.clear()
        locks = glob.glob(os.path.join(_pulls_folder(folder), "*.lock"))
        if not locks:
            return
        self.state_path = locks[0][:-len(".lock")] + ".json"
        self.fd = os.open(locks[0], os.O_RDWR)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        PULL_DEPTH["held by another run"] += 1
        self._rewrite("pulling")

    def _rewrite(self, state):
        try:
            with open(self.state_path) as handle:
                document = json.load(handle)
        except (OSError, ValueError):
            return
        document.update(state=state, pid=1, updated_at=time.time(),
                        error="the other run's pull failed" if state == "failed" else None)
        with open(self.state_path + ".new", "w") as handle:
            json.dump(document, handle)
        os.chmod(self.state_path + ".new", 0o600)
        os.rename(self.state_path + ".new", self.state_path)

    def end(self):
        if self.fd is None:
            return
        if self.end_state:
            self._rewrite(self.end_state)
        if self.end_state == "done":
            WORLD.engine.images.update(self.images)
        os.close(self.fd)
        self.fd = None

    def end_in(self, seconds):
        self.timer = threading.Timer(seconds, self.end)
        self.timer.start()

    def undo(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join()
        self.end()


def _judge_pull(test, check_mode, watch, answer, baseline):
    """What every pull case must leave: no pull asked of the engine in check mode or when watching, and
    then no state file written; state files private (0600 in a 0700 folder) and free of credentials;
    nothing in the shared state folder (each case has its own); a failed pull never reported done."""
    def judge(folder, args, outcome, result):
        pulls_asked, WORLD.engine.pulls[:] = list(WORLD.engine.pulls), []
        WORLD.engine.pull = None
        WORLD.engine.images.clear()
        if (check_mode or watch) and pulls_asked:
            _defect(test, "tao_inference_pull", "a pull was asked of the engine in check mode or when watching",
                    args, json.dumps(pulls_asked))
        files = _pull_files(folder)
        if (check_mode or watch) and files != baseline.get(folder, {}):
            _defect(test, "tao_inference_pull", "a state file was written in check mode or when watching", args,
                    json.dumps([baseline.get(folder), files]))
        directory = _pulls_folder(folder)
        if os.path.isdir(directory) and not os.path.islink(directory) and folder not in baseline.get("forged", ()):
            if os.stat(directory).st_mode & 0o077:
                _defect(test, "tao_inference_pull", "the pulls folder is not private", args,
                        oct(os.stat(directory).st_mode))
            for name, (mode, _size, _mtime) in files.items():
                if name.endswith(".json") and mode & 0o077:
                    _defect(test, "tao_inference_pull", "a state file is not private", args, "%s %o" % (name, mode))
        for path in glob.glob(os.path.join(directory, "*")):
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    _check_secrets(test, "tao_inference_pull", args, handle.read().decode("utf-8", "replace"),
                                   "a state file")
        if os.path.lexists(os.path.join(BASE, "state", "tao-inference", "pulls")):
            _defect(test, "tao_inference_pull", "a state file was written outside the case's folder", args, "")
        pull = result.get("pull") if isinstance(result, dict) else None
        if watch and outcome == "exit_json":
            progress = result.get("progress")
            keys = ("bytes_done", "bytes_total", "layers_done", "layers_total", "status", "seconds")
            if result.get("state") not in ("none", "pulling", "done", "failed", "interrupted") or \
                    not isinstance(progress, dict) or sorted(progress) != sorted(keys):
                _defect(test, "tao_inference_pull", "a watch returned a state or progress other than documented",
                        args, json.dumps(result)[:2000])
        PULL_DEPTH["engine asked to pull"] += bool(pulls_asked)
        PULL_DEPTH["pulled"] += bool(isinstance(pull, dict) and pull.get("pulled"))
        PULL_DEPTH["joined"] += bool(isinstance(pull, dict) and pull.get("joined"))
        if watch and "state" in result:
            PULL_DEPTH["watched: " + str(result["state"])] += 1
        if outcome == "exit_json" and pulls_asked and _answer_fails(answer) and isinstance(pull, dict) \
                and pull.get("pulled") and not pull.get("joined"):
            _defect(test, "tao_inference_pull", "a failed pull was reported done", args,
                    "engine's answer: %s\nresult: %s" % (json.dumps(answer)[:2000], json.dumps(result)[:2000]))
    return judge


def test_pull(world):
    """The pull, from a fake engine whose registry does not exist (or that sends a hostile or cut
    progress stream), in check mode (nothing pulled) and not; now and then another run holds the pull
    and lets it go after 0.3 s, saying it is done, failed, or saying nothing (so this run takes over)."""
    test = "pull"

    @_settings(500)
    @given(drawn=module_args("tao_inference_pull", core=PULL_CORE, fixed=dict(PULL_FIXED, watch=st.just(False))),
           check_mode=st.booleans(), answer=PULL_ANSWER,
           held=st.sampled_from([None, None, None, "done", "failed", "pulling"]))
    def cases(drawn, check_mode, answer, held):
        args, bad = drawn
        args = no_real_engine(keep_short(args, "tao_inference_pull"))
        baseline = {}

        def prepare(folder, args):
            holder = None
            if held and not check_mode:
                _pre_pull(folder, args, PULL_DONE)
                holder = _Holder(folder, None if held == "pulling" else held)
                holder.end_in(0.3)
            del WORLD.engine.pulls[:]
            WORLD.engine.pull = answer
            baseline[folder] = _pull_files(folder)
            return holder.undo if holder else None

        run_case(test, "tao_inference_pull", args, check_mode, bad=bad, prepare=prepare,
                 judge=_judge_pull(test, check_mode, False, answer, baseline))

    cases()
    print("\nhostile input: pull cases: %s" % dict(PULL_DEPTH))
    PULL_DEPTH.clear()
    _report(test)


# What a state file may hold when watched: another run's (held: its pull is under way), or one that
# was tampered with (fields of the wrong type, a link, a folder, a fifo, too big, not JSON...).
FORGED_FIELDS = st.fixed_dictionaries({}, optional=dict((key, st.one_of(hostile, wrong_type)) for key in (
    "image", "engine", "state", "error", "progress", "seconds", "updated_at", "pid", "started_at")))
FORGED_PROGRESS = st.fixed_dictionaries({}, optional=dict((key, _BIG) for key in (
    "bytes_done", "bytes_total", "layers_done", "layers_total", "status")))
FORGERY = st.one_of(st.none(), st.just("gone"), st.just("held"), st.tuples(st.just("fields"), FORGED_FIELDS),
                    st.tuples(st.just("progress"), FORGED_PROGRESS, st.sampled_from(["pulling", "done", "failed"])),
                    st.sampled_from(["link", "folder", "fifo", "big", "not-json", "open-mode", "folder-open",
                                     "folder-link", "lock-link"]))


def _forge(folder, forgery, undo):
    directory = _pulls_folder(folder)
    states = glob.glob(os.path.join(directory, "*.json"))
    if forgery == "held":
        holder = _Holder(folder, None)
        undo.append(holder.undo)
        return
    if forgery == "gone":  # no pull of it known
        for path in glob.glob(os.path.join(directory, "*")):
            os.unlink(path)
        return
    if forgery in ("folder-open", "folder-link"):
        if os.path.isdir(directory):
            if forgery == "folder-open":
                os.chmod(directory, 0o755)
            else:
                os.rename(directory, directory + "-real")
                os.symlink(directory + "-real", directory)
        return
    PULL_DEPTH["state files forged"] += len(states)
    for path in states:
        if isinstance(forgery, tuple):
            with open(path) as handle:
                document = json.load(handle)
            if forgery[0] == "fields":
                document.update(forgery[1])
            else:
                document.update(progress=forgery[1], state=forgery[2], updated_at=time.time())
            with open(path, "w") as handle:
                json.dump(document, handle)
        elif forgery == "link":
            os.unlink(path)
            os.symlink("/etc/passwd", path)
        elif forgery == "folder":
            os.unlink(path)
            os.mkdir(path, 0o700)
        elif forgery == "fifo":
            os.unlink(path)
            os.mkfifo(path, 0o600)
        elif forgery == "big":
            with open(path, "a") as handle:
                handle.write(" " * (70 << 10) + "}")
        elif forgery == "not-json":
            with open(path, "wb") as handle:
                handle.write(b"\xff\xfe{not json")
        elif forgery == "open-mode":
            os.chmod(path, 0o666)
        elif forgery == "lock-link":
            lock = path[:-len(".json")] + ".lock"
            if os.path.lexists(lock):
                os.unlink(lock)
            os.symlink(CASE_LOCK_TARGET, lock)


CASE_LOCK_TARGET = os.path.join(BASE, "no-such-dir", "lock")


def test_pull_watch(world):
    """Watching a pull: none known, one that failed or ended (a first run against the fake engine left
    its state file), one another run holds, or a state file tampered with; in check mode and not.
    Watching pulls nothing and writes nothing."""
    test = "pull, watch"

    @_settings(400)
    @given(drawn=module_args("tao_inference_pull", core=PULL_CORE + ("watch", "watch_timeout"),
                             fixed=dict(PULL_FIXED, watch=st.just(True))),
           check_mode=st.booleans(), answer=PULL_ANSWER, forgery=FORGERY)
    def cases(drawn, check_mode, answer, forgery):
        args, bad = drawn
        args = no_real_engine(keep_short(args, "tao_inference_pull"))
        baseline = {"forged": set()}

        def prepare(folder, args):
            undo = []
            if args.get("watch") is True:
                _pre_pull(folder, args, answer)
                if forgery is not None:
                    _forge(folder, forgery, undo)
                    baseline["forged"].add(folder)
            del WORLD.engine.pulls[:]
            WORLD.engine.pull = answer
            baseline[folder] = _pull_files(folder)
            return (lambda: [step() for step in undo]) if undo else None

        run_case(test, "tao_inference_pull", args, check_mode, bad=bad, prepare=prepare,
                 judge=_judge_pull(test, check_mode, args.get("watch") is True, answer, baseline))

    cases()
    print("\nhostile input: watched pull cases: %s" % dict(PULL_DEPTH))
    PULL_DEPTH.clear()
    _report(test)


def test_request_with_no_service(world):
    test = "request, no service"

    @_settings(400)
    @given(drawn=module_args("tao_inference_request", core=REQUEST_CORE, groups=REQUEST_GROUPS, fixed={
        "registry_path": st.sampled_from([CASE + "/registry.json", CASE + "/link.json"])}), check_mode=st.booleans())
    def cases(drawn, check_mode):
        args, bad = drawn
        if not check_mode:
            args = keep_short(args, "tao_inference_request")
        if run_case(test, "tao_inference_request", args, check_mode, bad=bad, registry={}) == "exit_json":
            _defect(test, "tao_inference_request", "a request to an empty registry succeeded", args, "")

    cases()
    _report(test)


def sampling_for(arch):
    """Sampling values ``arch`` takes (the service's arch is drawn first)."""
    if arch == "cosmos-predict2.5":
        fields = {"max_tokens": st.integers(1, 8), "guidance": st.integers(0, 7), "num_steps": st.integers(1, 4),
                  "seed": st.integers(0, 9), "negative_prompt": st.sampled_from(["blurry", ""])}
    else:
        fields = {"max_tokens": st.integers(1, 64), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1)}
    return st.one_of(st.just({}), st.fixed_dictionaries({}, optional=fields))


def test_request_to_a_closed_port(world):
    test = "request, closed port"

    @_settings(700)
    @given(data=st.data(), check_mode=st.booleans(),
           arch=st.sampled_from(["cosmos-rl", "cosmos-predict2.5", "tao-dataservices"]))
    def cases(data, check_mode, arch):
        sampling = sampling_for(arch)
        items = st.lists(st.fixed_dictionaries({"prompt": st.sampled_from(["describe", "what happens?"])}, optional={
            "id": st.one_of(st.integers(0, 5), st.sampled_from(["a", "b", "clip-1"])), "media": MEDIA,
            "system_prompt": st.just("terse"), "sampling": sampling}), min_size=1, max_size=3)
        args, bad = data.draw(module_args("tao_inference_request", core=REQUEST_CORE, groups=REQUEST_GROUPS, fixed={
            "registry_path": st.just(CASE + "/registry.json"), "sampling": sampling, "requests": items,
            "network_arch": st.sampled_from([arch, arch, "tao-dataservices"]),
            "media": st.lists(st.sampled_from([PNG, _fixed("frame.png"), _fixed("clip.mp4"), _fixed("frame-link.png"),
                                               "https://media.example/a.png"]), min_size=1, max_size=2),
            "job_id": st.sampled_from([ONE_JOB, "latest", str(uuid.UUID(int=7))]),
            "name": st.sampled_from(["svc-closed", "svc-closed", "other"])}))
        if not check_mode:
            args = keep_short(args, "tao_inference_request")
        outcome = run_case(test, "tao_inference_request", args, check_mode, bad=bad, registry=one_service(arch))
        if outcome == "exit_json" and not check_mode and not (args.get("requests") or args.get("requests_file")):
            _defect(test, "tao_inference_request", "a single request to a closed port succeeded", args, "")

    cases()
    _report(test)


def test_batch_output_path_that_is_a_folder_fails_cleanly(world):
    """A batch whose output_path names an existing folder must end in fail_json (found by the cases
    above: IsADirectoryError from write_atomically's rename escaped main(), after every request ran)."""
    test = "batch, output_path is a folder"
    args = {"registry_path": CASE + "/registry.json", "requests": [{"id": "a", "prompt": "hi"}], "sampling": {},
            "output_path": CASE, "timeout": 0.2, "wait_timeout": 0.2}
    outcomes = [run_case(test, "tao_inference_request", dict(args), False, registry=one_service("tao-dataservices")),
                run_case(test, "tao_inference_request", dict(args, output_path=CASE + "/out/"), False,
                         registry=one_service("tao-dataservices"))]
    print("\nhostile input: batch with output_path a folder: %s" % ", ".join(outcomes))
    _report(test)


def test_int_options_refuse_infinity(world):
    """Every int option given inf or -inf (a YAML ``.inf``, or the string) must end in fail_json.
    Open defect: ansible-core 2.19's check_type_int lets OverflowError out of AnsibleModule()."""
    escaped = []
    for module in MODULES:
        base = {"tao_inference_service": {"network_arch": "cosmos-rl", "model_path": "hf_model://a/b"},
                "tao_inference_request": {"prompt": "hi", "sampling": {}},
                "tao_inference_preflight": {"network_arch": "cosmos-rl"}}.get(module, {})
        for option, spec in sorted(SPECS[module].items()):
            if spec.get("type") != "int":
                continue
            for value in ("inf", "-inf", float("inf")):
                args = dict(base, registry_path=CASE + "/registry.json")
                args[option] = value
                outcome = run_case("int options given infinity", module, args, True)
                if outcome != "fail_json":
                    escaped.append("%s %s=%r: %s" % (module, option, value, outcome))
    print("\nhostile input: int options given inf/-inf: %d escaped fail_json" % len(escaped))
    assert not escaped, "an int option given infinity raised OverflowError out of AnsibleModule() instead of " \
                        "failing cleanly (ansible-core check_type_int):\n" + "\n".join(escaped)


TOP_UP = (HOSTILE_PLAIN[0], HOSTILE_PLAIN[4], HOSTILE_PLAIN[11], {"$(touch %s)" % CANARY: ["-oProxyCommand=x"]},
          ["--wrap=touch " + CANARY, None])
TOP_UP_BASE = {"tao_inference_service": {"network_arch": "cosmos-rl", "model_path": "hf_model://a/b"},
               "tao_inference_request": {"prompt": "hi", "sampling": {}},
               "tao_inference_preflight": {"network_arch": "cosmos-rl"},
               "tao_inference_pull": {"network_arch": "cosmos-rl"}}


def test_every_option_got_hostile_values(world):
    """Each option of each module's spec was given hostile or wrongly typed values many times: the draws
    above, topped up with fixed hostile values (check mode) for any option the draws reached fewer than
    five times (each new option thins the draws of the others)."""
    test = "top-up"
    for module in MODULES:
        for option in sorted(SPECS[module]):
            for value in TOP_UP[:max(0, 5 - WORLD.hostile_options[module][option])]:
                args = dict(TOP_UP_BASE.get(module, {}), registry_path=CASE + "/registry.json")
                args[option] = value
                run_case(test, module, args, True, bad=(option,))
    if WORLD.per_test[test]:
        _report(test)
    thin = []
    for module in MODULES:
        for option in SPECS[module]:
            if WORLD.hostile_options[module][option] < 5:
                thin.append("%s.%s: %d" % (module, option, WORLD.hostile_options[module][option]))
    counts = [n for m in MODULES for n in WORLD.hostile_options[m].values()]
    print("\nhostile input: %d options in %d modules, each given hostile or wrongly typed values %d to %d times"
          % (sum(len(SPECS[m]) for m in MODULES), len(MODULES), min(counts or [0]), max(counts or [0])))
    assert not thin, thin


def test_reports(world):
    """Each module's cases ended in exit_json or fail_json; the canary never appeared; ssh never
    got an option from a value. Runs last (file order)."""
    by_module = {
        "tao_inference_service": ("service present (check mode)", "service absent"),
        "tao_inference_preflight": ("preflight",),
        "tao_inference_info": ("info",),
        "tao_inference_prune": ("prune",),
        "tao_inference_fleet": ("fleet",),
        "tao_inference_pull": ("pull", "pull, watch"),
        "tao_inference_request": ("request, no service", "request, closed port"),
    }
    for module, tests in by_module.items():
        for test in tests:
            assert sum(WORLD.per_test[test].values()) > 0, "no case of %s ran" % test
    total = sum(WORLD.outcomes.values())
    argvs = [c["args"] for c in WORLD.children if isinstance(c["args"], list) and c["args"]]
    shells = [c for c in WORLD.children if c["shell"]] + [a for a in argvs if os.path.basename(a[0]) in ("sh", "bash")]
    ssh_abs = [a for a in argvs if os.path.basename(a[0]) == "ssh" and a[0] != "ssh"]
    print("\nhostile input: %d cases in all, %d fail_json, %d exit_json, %d ansible-core OverflowError (int option "
          "given inf), %d other exceptions or hangs; %d child processes (%d ssh, every argv checked), %d shells; "
          "canary %s never created; %d defects"
          % (total, WORLD.outcomes["fail_json"], WORLD.outcomes["exit_json"], WORLD.outcomes["upstream"],
             total - WORLD.outcomes["fail_json"] - WORLD.outcomes["exit_json"] - WORLD.outcomes["upstream"],
             len(WORLD.children), WORLD.ssh_runs, len(shells), CANARY, len(WORLD.defects)))
    assert total >= 1000
    assert not shells, shells[:3]
    assert not ssh_abs, "ssh run by absolute path, past the test's wrapper: %s" % ssh_abs[:3]
    assert not os.path.lexists(CANARY)
    assert not WORLD.defects, "\n\n".join("%s / %s: %s\nargs: %s\n%s" % (k[0], k[1], k[2], v[0], v[1][-2000:])
                                          for k, v in WORLD.defects.items())
