"""Slurm: the exact batch script per runtime, how secrets reach sbatch, and how the driver
treats what Slurm answers (job ids, ownership, cancels that are not confirmed)."""

import fcntl
import os
import pwd
import shlex
import signal
import shutil
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.tao.inference.plugins.module_utils import procs
from ansible_collections.tao.inference.plugins.module_utils.command import container_env, inner_command
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.service import watched_state
from ansible_collections.tao.inference.plugins.module_utils.platforms import slurm as slurm_mod
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import MASK, Launch
from ansible_collections.tao.inference.plugins.module_utils.platforms.slurm import (
    FINAL, SlurmDriver, batch_script, is_active, parse_comment, parse_node_file, parse_sbatch_output,
    port_from_argument, pyxis_image, secret_lines, submit_command, submit_prologue,
)

from .helpers import JOB_ID, make_spec

SECRET = "s3cr3t-value-0123"

EXPECTED_PYXIS = r'''#!/bin/bash
#SBATCH --job-name=tao-0f8c2e4a
#SBATCH --output=0f8c2e4a-1b2c-4d3e-8f90-123456789abc.log
#SBATCH --ntasks=1
#SBATCH --comment=tao.inference:job_id=0f8c2e4a-1b2c-4d3e-8f90-123456789abc,name=
#SBATCH --partition=gpu
#SBATCH --account=proj
#SBATCH --time=01:00:00
#SBATCH --gres=gpu:2
#SBATCH --exclusive
# tao.inference 0f8c2e4a-1b2c-4d3e-8f90-123456789abc (cosmos-rl)
set -u
name=0f8c2e4a-1b2c-4d3e-8f90-123456789abc
export CLOUD_BASED=False
export LOG_LEVEL=debug
export TAO_API_JOB_ID=0f8c2e4a-1b2c-4d3e-8f90-123456789abc
export TAO_EXECUTION_BACKEND=slurm
{MARK}{CLAIM}{FIXED}mark TAO_NODE_PORT="$port"
srun \
  '--container-image=nvcr.io#nvidia/tao/tao-toolkit:7.0.0-cosmos-rl' \
  --no-container-mount-home \
  --container-env=CLOUD_BASED,LOG_LEVEL,TAO_API_JOB_ID,TAO_EXECUTION_BACKEND,HF_TOKEN \
  --container-mounts=/data/ckpt:/models/x:ro \
  /bin/sh -c {INNER} &
wait $!
'''

EXPECTED_APPTAINER = r'''#!/bin/bash
#SBATCH --job-name=tao-0f8c2e4a
#SBATCH --output=0f8c2e4a-1b2c-4d3e-8f90-123456789abc.log
#SBATCH --ntasks=1
#SBATCH --comment=tao.inference:job_id=0f8c2e4a-1b2c-4d3e-8f90-123456789abc,name=
#SBATCH --partition=gpu
#SBATCH --account=proj
#SBATCH --time=01:00:00
#SBATCH --gres=gpu:2
#SBATCH --exclusive
# tao.inference 0f8c2e4a-1b2c-4d3e-8f90-123456789abc (cosmos-rl)
set -u
name=0f8c2e4a-1b2c-4d3e-8f90-123456789abc
export CLOUD_BASED=False
export LOG_LEVEL=debug
export TAO_API_JOB_ID=0f8c2e4a-1b2c-4d3e-8f90-123456789abc
export TAO_EXECUTION_BACKEND=slurm
{MARK}export APPTAINERENV_CLOUD_BASED="$CLOUD_BASED"
export APPTAINERENV_LOG_LEVEL="$LOG_LEVEL"
export APPTAINERENV_TAO_API_JOB_ID="$TAO_API_JOB_ID"
export APPTAINERENV_TAO_EXECUTION_BACKEND="$TAO_EXECUTION_BACKEND"
export APPTAINERENV_HF_TOKEN="$HF_TOKEN"
{CLAIM}{FIXED}mark TAO_NODE_PORT="$port"
apptainer exec \
  --cleanenv \
  --nv \
  --bind /data/ckpt:/models/x:ro \
  docker://nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl \
  /bin/sh -c {INNER} &
wait $!
'''

EXPECTED_DOCKER = r'''#!/bin/bash
#SBATCH --job-name=tao-0f8c2e4a
#SBATCH --output=0f8c2e4a-1b2c-4d3e-8f90-123456789abc.log
#SBATCH --ntasks=1
#SBATCH --comment=tao.inference:job_id=0f8c2e4a-1b2c-4d3e-8f90-123456789abc,name=
#SBATCH --partition=gpu
#SBATCH --account=proj
#SBATCH --time=01:00:00
#SBATCH --gres=gpu:2
#SBATCH --exclusive
# tao.inference 0f8c2e4a-1b2c-4d3e-8f90-123456789abc (cosmos-rl)
set -u
name=0f8c2e4a-1b2c-4d3e-8f90-123456789abc
export CLOUD_BASED=False
export LOG_LEVEL=debug
export TAO_API_JOB_ID=0f8c2e4a-1b2c-4d3e-8f90-123456789abc
export TAO_EXECUTION_BACKEND=slurm
{MARK}cleanup() {{
  trap '' TERM INT
  docker rm -f "$name" >/dev/null 2>&1
  sleep 1
  docker rm -f "$name" >/dev/null 2>&1 || true
}}
trap cleanup EXIT
trap 'exit 143' TERM INT
docker run \
  --rm \
  --init \
  --name "$name" \
  -p 0.0.0.0::8080 \
  --shm-size 16g \
  -e CLOUD_BASED \
  -e LOG_LEVEL \
  -e TAO_API_JOB_ID \
  -e TAO_EXECUTION_BACKEND \
  -e HF_TOKEN \
  -v /data/ckpt:/models/x:ro \
  --gpus 2 \
  nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl \
  /bin/sh -c {INNER} &
run=$!
port=
while [ -z "$port" ]; do
  kill -0 "$run" 2>/dev/null || exit 1
  port=$(docker port "$name" 8080/tcp 2>/dev/null | head -n 1 | sed 's/.*://')
  [ -n "$port" ] || sleep 0.2
done
mark TAO_NODE_PORT="$port"
wait "$run"
'''


MARK = r'''mark() {
  if ! (umask 077 && printf '%s\n' "$@" >"$name.node.tmp" && mv -f "$name.node.tmp" "$name.node")
  then
    echo "tao.inference: cannot write $PWD/$name.node, which tells the login host where the service listens" >&2
    exit 1
  fi
}
'''


CLAIM = r'''# The container shares the node's network: take a port nothing listens on, and hold its
# lock for the job's life so that a job starting beside this one cannot take it too.
# The locks live in a folder of this user's own, which no other user can fill first.
locks=
for base in /run/lock /tmp; do
  { [ -d "$base" ] && [ -w "$base" ]; } || continue
  folder="$base/tao-inference-$(id -u)"
  mkdir -m 700 "$folder" 2>/dev/null
  if [ ! -L "$folder" ] && [ -d "$folder" ] && [ -O "$folder" ] && chmod 700 "$folder"; then
    locks=$folder
    break
  fi
done
if [ -z "$locks" ]; then  # another user made both folders first: keep the locks beside the job log
  locks="$PWD/port-locks-$(hostname)"
  mkdir -p -m 700 "$locks" || exit 1
fi
listening() {
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p="$(printf ':%04X' "$1")" \
    '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }'
}
claim() {
  lock="$locks/port-$1.lock"
  [ -L "$lock" ] && return 1
  [ -e "$lock" ] || : >>"$lock" 2>/dev/null
  { [ -f "$lock" ] && [ -r "$lock" ]; } || return 1
  exec 9<"$lock"
  if command -v flock >/dev/null 2>&1 && ! flock -n 9; then exec 9<&-; return 1; fi
  if listening "$1"; then exec 9<&-; return 1; fi
}
'''


FIXED = (
    'port=8080\n'
    'if ! claim "$port"; then\n'
    '  echo "tao.inference: port $port on $(hostname) is taken by another service or program. cosmos-rl takes '
    'no port option and always listens on $port, so one node runs one of it at a time: stop the other service, '
    'or run this one on another node (e.g. sbatch_options: [--exclude=$(hostname)])" >&2\n'
    '  exit 1\n'
    'fi\n'
)


def expected(template):
    """The pinned text with the inner command (pinned in test_command.py) filled in."""
    spec = make_spec(environ={"HF_TOKEN": SECRET}, network_arch="cosmos-rl", model_path="/models/x", platform="slurm",
                     slurm_login_host="login", num_gpus=2)
    return template.format(INNER=shlex.quote(inner_command(spec, JOB_ID)), MARK=MARK, CLAIM=CLAIM, FIXED=FIXED)


def script_for(runtime, **overrides):
    params = dict(network_arch="cosmos-rl", model_path="/models/x", platform="slurm", slurm_login_host="login",
                  partition="gpu", account="proj", time_limit="01:00:00", slurm_container_runtime=runtime,
                  num_gpus=2, env={"LOG_LEVEL": "debug"}, secret_env=["HF_TOKEN"],
                  volumes=["/data/ckpt:/models/x:ro"], sbatch_options=["--exclusive"])
    params.update(overrides)
    environ = {"HF_TOKEN": SECRET}
    spec = make_spec(environ=environ, **params)
    plain, secret = container_env(spec, JOB_ID, environ)
    return batch_script(spec, spec.platform_options, JOB_ID, inner_command(spec, JOB_ID), plain, secret)


@pytest.mark.parametrize("runtime, template", [
    ("pyxis", EXPECTED_PYXIS), ("apptainer", EXPECTED_APPTAINER), ("docker", EXPECTED_DOCKER),
])
def test_exact_batch_script(runtime, template):
    text = script_for(runtime)
    assert text == expected(template)
    assert SECRET not in text  # names only: the value comes from the job's environment


def test_bash_accepts_every_script():
    for runtime in ("pyxis", "apptainer", "docker"):
        subprocess.run(["bash", "-n"], input=script_for(runtime).encode(), check=True)


def test_cpu_only_and_defaults_from_the_environment():
    spec = make_spec(platform="slurm", slurm_login_host="login", num_gpus=0,
                     environ={"SLURM_PARTITION": "cpu", "SLURM_ACCOUNT": "acct"})
    assert spec.platform_options["partition"] == "cpu" and spec.platform_options["account"] == "acct"
    assert spec.platform_options["runtime"] == "pyxis"
    text = batch_script(spec, spec.platform_options, JOB_ID, "true", {}, {})
    assert "--gres" not in text and "#SBATCH --partition=cpu" in text and "--container-env" not in text


@pytest.mark.parametrize("params, message", [
    ({"sbatch_options": ["--wrap=rm -rf /"]}, "must look like --name or --name=value"),
    ({"sbatch_options": ["--x\n#SBATCH --y"]}, "must look like"),
    ({"partition": "gpu\n#SBATCH --x"}, "characters Slurm does not take"),
    ({"slurm_login_host": None}, "needs slurm_login_host"),
    # Full matches: a trailing newline is refused, not taken as the end of the value.
    ({"partition": "gpu\n"}, "characters Slurm does not take"),
    ({"account": "proj\n"}, "characters Slurm does not take"),
    ({"time_limit": "01:00:00\n"}, "characters Slurm does not take"),
    ({"sbatch_options": ["--exclusive\n"]}, "must look like"),
    ({"sbatch_options": ["--constraint=a\x00b"]}, "must look like"),
    # What the collection sets itself or relies on, also abbreviated as sbatch allows.
    ({"sbatch_options": ["--comment=x"]}, "is not allowed"),
    ({"sbatch_options": ["--comm=x"]}, "is not allowed"),
    ({"sbatch_options": ["--output=/tmp/all.log"]}, "is not allowed"),
    ({"sbatch_options": ["--export=NONE"]}, "is not allowed"),
    ({"sbatch_options": ["--chdir=/"]}, "is not allowed"),
    ({"sbatch_options": ["--uid=0"]}, "is not allowed"),
    # Another cluster: every later squeue, scontrol and scancel asks the default one.
    ({"sbatch_options": ["--clusters=b"]}, "is not allowed"),
    ({"sbatch_options": ["--cluster=b"]}, "is not allowed"),
    ({"sbatch_options": ["--clu=b"]}, "is not allowed"),
    ({"sbatch_options": ["--clusters"]}, "is not allowed"),
    ({"sbatch_options": ["-M"]}, "must look like"),
    ({"sbatch_options": ["-Mb"]}, "must look like"),
    ({"slurm_bind_address": "localhost", "slurm_container_runtime": "docker"}, "is not an IP address"),
    ({"slurm_bind_address": "127.0.0.1\n", "slurm_container_runtime": "docker"}, "is not an IP address"),
    ({"slurm_bind_address": "fe80::1%eth0", "slurm_container_runtime": "docker"}, "is not an IP address"),
    ({"slurm_bind_address": "127.0.0.1", "slurm_container_runtime": "pyxis"}, "docker only"),
])
def test_bad_slurm_input(params, message):
    base = {"platform": "slurm", "slurm_login_host": "login"}
    base.update(params)
    with pytest.raises(TaoInferenceError, match=message):
        make_spec(**base)


@pytest.mark.parametrize("image, expected", [
    ("nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl", "nvcr.io#nvidia/tao/tao-toolkit:7.0.0-cosmos-rl"),
    ("localhost:5000/x:1", "localhost:5000#x:1"),
    ("ubuntu:22.04", "ubuntu:22.04"),
    ("library/ubuntu", "library/ubuntu"),
    ("nvcr.io#nvidia/x", "nvcr.io#nvidia/x"),
])
def test_pyxis_image_names(image, expected):
    assert pyxis_image(image) == expected


def test_good_sbatch_options_pass():
    spec = make_spec(platform="slurm", slurm_login_host="login",
                     sbatch_options=["--exclusive", "--constraint=a100&nvlink", "--ntasks-per-node=1", "--qos=high",
                                     "--cluster-constraint=gpu"])
    assert spec.platform_options["sbatch_options"][1] == "--constraint=a100&nvlink"


def _fake_sbatch(tmp_path, stdout="42"):
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho "$*" > "$OUT/argv"\nenv > "$OUT/env"\npwd > "$OUT/cwd"\numask > "$OUT/umask"\n'
                    'cat > "$OUT/script"\nprintf "%%s\\n" "%s"\n' % stdout)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


LOGIN_SHELLS = [shell for shell in ("bash", "dash", "sh", "tcsh", "csh", "fish", "zsh") if shutil.which(shell)]


@pytest.mark.parametrize("shell", LOGIN_SHELLS)
def test_submit_prologue_exports_secrets_from_stdin_only(tmp_path, shell):
    """Run the remote command as a login shell would (``<shell> -c <command>``), with a fake sbatch:
    the secret reaches its environment, the script its stdin intact, no argv holds a value, and the
    folder and what sbatch creates are private."""
    fake = _fake_sbatch(tmp_path)
    secrets = {"HF_TOKEN": "hf_a b$c'\"d\\e", "WANDB_API_KEY": "w=1=2"}
    script = "#!/bin/bash\necho hello\n"
    env = {"PATH": "%s:/usr/bin:/bin" % fake.parent, "OUT": str(tmp_path), "HOME": str(tmp_path)}
    (tmp_path / ".tao-inference").mkdir(mode=0o755)  # an older, readable folder is made private
    command = " ".join(submit_command(secrets))
    out = subprocess.run([shell, "-c", command], input=(secret_lines(secrets) + script).encode(),
                         env=env, cwd=str(tmp_path), capture_output=True, check=True)
    assert out.stdout.strip() == b"42"
    assert (tmp_path / "script").read_text() == script
    exported = (tmp_path / "env").read_text()
    assert "HF_TOKEN=%s\n" % secrets["HF_TOKEN"] in exported and "WANDB_API_KEY=w=1=2\n" in exported
    argv = (tmp_path / "argv").read_text()
    assert argv.strip() == "--parsable --export=ALL"
    for value in secrets.values():
        assert value not in command
    assert (tmp_path / "cwd").read_text().strip() == os.path.join(str(tmp_path), ".tao-inference")
    assert (tmp_path / "umask").read_text().strip() == "0077"  # Slurm creates the job log with it: 0600
    assert stat.S_IMODE((tmp_path / ".tao-inference").stat().st_mode) == 0o700


def test_submit_command_is_posix_sh_whatever_the_login_shell():
    """The prologue runs under ``sh -c '...'``; its text has nothing that csh or fish would read
    inside single quotes (a quote, a backslash, a ``!``), nor a newline."""
    prologue = submit_prologue({"HF_TOKEN": "x"})
    assert not set(prologue) & set("'\\!\n")
    (command,) = submit_command({"HF_TOKEN": "x"})
    assert command == "sh -c '%s'" % prologue
    assert prologue.startswith("umask 077 && mkdir -p .tao-inference && chmod 700 .tao-inference && ")


# -- apptainer environment ------------------------------------------------------------------
def test_apptainer_env_is_no_argument_and_is_never_split():
    text = script_for("apptainer", env={"A": "x,LD_PRELOAD=/tmp/e.so", "LOG_LEVEL": "debug"})
    assert "--env" not in text and "x,LD_PRELOAD" not in text.split("apptainer exec", 1)[1]
    assert "export A=x,LD_PRELOAD=/tmp/e.so\n" in text
    assert 'export APPTAINERENV_A="$A"\n' in text and "APPTAINERENV_LD_PRELOAD" not in text


def _run_script(text, tmp_path, bin_dir, name="job"):
    """Run a batch script as Slurm runs it: in its own submit folder ``tmp_path/name``, where its log
    and its node file go."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    path = folder / "batch.sh"
    path.write_text(text)
    log = open(str(_job_log(tmp_path, name)), "w")
    env = {"PATH": "%s:/usr/bin:/bin" % bin_dir, "HF_TOKEN": SECRET, "OUT": str(tmp_path)}
    return subprocess.Popen(["bash", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(folder),
                            start_new_session=True)


def _job_log(tmp_path, name="job"):
    return tmp_path / name / ("%s.log" % JOB_ID)


def _node_file(tmp_path, name="job"):
    return tmp_path / name / ("%s.node" % JOB_ID)


def _stop(proc):
    """Kill the script and everything it started, and wait until they are gone (a server's port free)."""
    try:
        os.killpg(proc.pid, 9)
    except OSError:
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except OSError:
            return
        time.sleep(0.05)


def _fake_bin(tmp_path):
    """``apptainer`` that records its argv and environment, then runs the command after the image;
    ``python`` that listens on its ``--port`` on 127.0.0.1 (the server, on the node's network)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apptainer").write_text(
        '#!/bin/bash\nprintf "%s\\n" "$@" > "$OUT/apptainer.$$.argv"\nenv > "$OUT/apptainer.$$.env"\n'
        'while [ "${1#docker://}" = "$1" ]; do shift; done\nshift\nexec "$@"\n')
    (bin_dir / "python").write_text(  # it prints a marker line of its own, as a hostile image could
        '#!/bin/sh\necho TAO_NODE_PORT=22\necho TAO_NODE_ADDR=203.0.113.9\n'
        'while [ $# -gt 0 ]; do [ "$1" = --port ] && port=$2; shift; done\n'
        'exec %s -c "import socket, sys, time; s = socket.socket(); s.bind((\'127.0.0.1\', int(sys.argv[1]))); '
        's.listen(); time.sleep(120)" "$port"\n' % sys.executable)
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "cosmos-rl-inference-microservice").write_text("#!/bin/sh\nexec sleep 120\n")
    for item in bin_dir.iterdir():
        item.chmod(0o755)
    return bin_dir


def _marker(tmp_path, name, timeout=30):
    """The port in the job's node file, read as the driver reads it; the file is private."""
    node_file = _node_file(tmp_path, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node_file.exists():
            assert stat.S_IMODE(node_file.stat().st_mode) == 0o600
            return parse_node_file(node_file.read_text())["port"]
        time.sleep(0.05)
    raise AssertionError(_job_log(tmp_path, name).read_text())


def _listening(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _lock_dir():
    """The user's own lock folder the batch script uses on this machine."""
    base = "/run/lock" if os.path.isdir("/run/lock") and os.access("/run/lock", os.W_OK) else "/tmp"
    return os.path.join(base, "tao-inference-%d" % os.getuid())


def test_apptainer_script_runs_with_the_env_in_apptainerenv_only(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    text = script_for("apptainer", network_arch="tao-dataservices", model_path="/models/x",
                      env={"A": "x,LD_PRELOAD=/tmp/e.so"})
    proc = _run_script(text, tmp_path, bin_dir)
    try:
        _marker(tmp_path, "job")
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("apptainer.*.env")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        (env_file,) = tmp_path.glob("apptainer.*.env")
        (argv_file,) = tmp_path.glob("apptainer.*.argv")
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        assert env["APPTAINERENV_A"] == "x,LD_PRELOAD=/tmp/e.so" and "APPTAINERENV_LD_PRELOAD" not in env
        assert env["APPTAINERENV_HF_TOKEN"] == SECRET
        argv = argv_file.read_text()
        assert "LD_PRELOAD" not in argv and SECRET not in argv and "debug" not in argv
    finally:
        _stop(proc)


# -- ports on the node's own network -----------------------------------------------------------
def test_the_port_word_is_found_only_as_the_port_option():
    assert port_from_argument("umask 0 && x --port 8080 --job '{}'") == "umask 0 && x --port \"$1\" --job '{}'"
    assert port_from_argument("umask 0 && x --job '{\"m\":\"/a --port 8080\"}'") is None  # inside a quoted word
    assert port_from_argument("umask 0 && x --job \"--port 8080\"") is None
    assert port_from_argument("umask 0 && x --port 9000") is None
    assert port_from_argument("umask 0 && x --port 8080 --port 8080") is None
    for arch, moved in (("tao-dataservices", True), ("cosmos-predict2.5", True), ("cosmos-rl", False)):
        spec = make_spec(network_arch=arch, model_path="/models/x", platform="slurm", slurm_login_host="login")
        assert (port_from_argument(inner_command(spec, JOB_ID)) is not None) is moved


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_a_server_with_a_port_option_gets_a_free_port_of_its_own(runtime):
    text = script_for(runtime, network_arch="tao-dataservices", model_path="/models/x")
    assert "p=8080\nwhile [ \"$p\" -le 8199 ]; do\n" in text and "mark TAO_NODE_PORT=\"$port\"\n" in text
    assert "--port \"$1\" --job" in text and "' sh \"$port\" &\n" in text and "--port 8080" not in text


def test_two_services_on_one_node_take_two_ports(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    text = script_for("apptainer", network_arch="tao-dataservices", model_path="/models/x")
    one = _run_script(text, tmp_path, bin_dir, "one")
    two = None
    try:
        first = _marker(tmp_path, "one")
        two = _run_script(text, tmp_path, bin_dir, "two")
        second = _marker(tmp_path, "two")
        assert first != second and 8080 <= first <= 8199 and 8080 <= second <= 8199
        deadline = time.monotonic() + 30
        while not (_listening(first) and _listening(second)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _listening(first) and _listening(second)
        assert one.poll() is None and two.poll() is None
    finally:
        _stop(one)
        if two is not None:
            _stop(two)


def _hold(port):
    os.makedirs(_lock_dir(), mode=0o700, exist_ok=True)
    handle = open(os.path.join(_lock_dir(), "port-%d.lock" % port), "a")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_a_held_port_is_skipped(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    handle = _hold(8080)
    proc = _run_script(script_for("pyxis", network_arch="tao-dataservices", model_path="/models/x"), tmp_path,
                       bin_dir)
    try:
        port = _marker(tmp_path, "job")
        assert port > 8080
        deadline = time.monotonic() + 30
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _listening(port)  # srun ran the server with the port it was given
    finally:
        _stop(proc)
        handle.close()


def test_a_second_fixed_port_server_on_the_node_fails_at_once_and_says_why(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    handle = _hold(8080)  # the first cosmos-rl job on this node
    try:
        started = time.monotonic()
        proc = _run_script(script_for("apptainer"), tmp_path, bin_dir)
        assert proc.wait(timeout=10) == 1 and time.monotonic() - started < 5
        log = _job_log(tmp_path).read_text()
        assert "port 8080 on " in log and "cosmos-rl takes no port option and always listens on 8080" in log
        assert not _node_file(tmp_path).exists() and not list(tmp_path.glob("apptainer.*"))
    finally:
        handle.close()


# -- docker publish address ----------------------------------------------------------------------
def test_docker_publishes_on_every_interface_by_default_and_the_option_is_left_out():
    spec = make_spec(platform="slurm", slurm_login_host="login", slurm_container_runtime="docker",
                     slurm_bind_address="0.0.0.0")
    assert "bind_address" not in spec.platform_options  # services started before keep their fingerprint
    assert "-p 0.0.0.0::8080" in script_for("docker")


@pytest.mark.parametrize("address, publish, tunnel", [
    ("127.0.0.1", "-p 127.0.0.1::8080", "127.0.0.1"),
    ("10.1.2.3", "-p 10.1.2.3::8080", "10.1.2.3"),
    ("::1", "-p '[::1]::8080'", "[::1]"),
])
def test_docker_publishes_on_slurm_bind_address_and_the_tunnel_goes_there(address, publish, tunnel):
    text = script_for("docker", slurm_bind_address=address)
    assert publish in text and "0.0.0.0" not in text
    assert "mark TAO_NODE_ADDR=%s TAO_NODE_PORT=\"$port\"\n" % shlex.quote(address) in text
    spec = make_spec(platform="slurm", slurm_login_host="login", slurm_container_runtime="docker",
                     slurm_bind_address=address)
    assert slurm_mod.tunnel_host(spec.platform_options, "node-addr") == tunnel
    assert slurm_mod.tunnel_host(make_spec(platform="slurm", slurm_login_host="login").platform_options,
                                 "node-addr") == "node-addr"


# -- names that go into script lines -------------------------------------------------------------
@pytest.mark.parametrize("env, secrets", [
    ({"A\n": "x"}, {}), ({"A;B": "x"}, {}), ({"LOG_LEVEL": "a\0b"}, {}), ({}, {"HF_TOKEN\n": "x"}),
])
def test_batch_script_refuses_names_that_are_not_variable_names(env, secrets):
    spec = make_spec(platform="slurm", slurm_login_host="login")
    with pytest.raises(TaoInferenceError):
        batch_script(spec, spec.platform_options, JOB_ID, "true", env, secrets)


def test_batch_script_refuses_a_job_id_that_is_no_uuid():
    spec = make_spec(platform="slurm", slurm_login_host="login")
    with pytest.raises(TaoInferenceError, match="not a job_id"):
        batch_script(spec, spec.platform_options, JOB_ID + "\n", "true", {}, {})


# -- what sbatch prints ----------------------------------------------------------------------------
@pytest.mark.parametrize("out, expected", [
    ("42\n", "42"), ("Welcome to the cluster\nMOTD: be nice\n42\n", "42"),
    ("42\n\n  \n", "42"), ("42\nWelcome\n", None), ("Welcome 42\n", None), ("", None), ("\n", None),
    ("42;bad cluster\n", None), ("\u0664\u0662\n", None), ("42;\n", None), ("-42\n", None),
    # A job on another cluster: no later squeue, scontrol or scancel would reach it.
    ("42;cluster-a\n", None), ("42;b\n", None),
])
def test_sbatch_output_is_read_strictly(out, expected):
    assert parse_sbatch_output(out) == expected


@pytest.mark.parametrize("comment, expected", [
    ("tao.inference:job_id=%s,name=svc" % JOB_ID, (JOB_ID, "svc")),
    ("tao.inference:job_id=%s,name=" % JOB_ID, (JOB_ID, "")),
    ("tao.inference:job_id=not-a-uuid-not-a-uuid-not-a-uuid-1234,name=", None),
    ("tao.inference:job_id=%s,name=svc,extra=1" % JOB_ID, None),
    ("tao.inference:job_id=%s" % JOB_ID.upper(), None),
    ("my own comment", None), ("", None),
])
def test_only_comments_with_a_uuid_job_id_are_ours(comment, expected):
    assert parse_comment(comment) == expected


# -- what the batch script says about where the service listens ------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("TAO_NODE_PORT=40001\n", {"port": 40001}),
    ("TAO_NODE_PORT=1\n", {"port": 1}),
    ("TAO_NODE_ADDR=10.1.2.3\nTAO_NODE_PORT=65535\n", {"port": 65535, "addr": "10.1.2.3"}),
    ("TAO_NODE_ADDR=::1\nTAO_NODE_PORT=8080\n", {"port": 8080, "addr": "::1"}),
    ("TAO_NODE_ADDR=node-7.cluster\nTAO_NODE_PORT=8080\n", {"port": 8080, "addr": "node-7.cluster"}),
])
def test_a_node_file_as_the_script_writes_it(text, expected):
    assert parse_node_file(text) == expected


@pytest.mark.parametrize("text", [
    "", "\n", "TAO_NODE_PORT=40001",  # not yet whole: the script renames a finished file into place
    "TAO_NODE_PORT=0\n", "TAO_NODE_PORT=65536\n", "TAO_NODE_PORT=\n", "TAO_NODE_PORT=4000a\n",
    "TAO_NODE_PORT=\u0664\u0662\n", "TAO_NODE_PORT= 40001\n", " TAO_NODE_PORT=40001\n",
    "TAO_NODE_PORT=1\nTAO_NODE_PORT=2\n", "TAO_NODE_PORT=1\nhello\n", "TAO_NODE_ADDR=10.0.0.1\n",
    "TAO_NODE_ADDR=-oProxyCommand=x\nTAO_NODE_PORT=1\n", "TAO_NODE_ADDR=fe80::1%eth0\nTAO_NODE_PORT=1\n",
    "TAO_NODE_ADDR=a b\nTAO_NODE_PORT=1\n", "TAO_NODE_ADDR=\nTAO_NODE_PORT=1\n",
])
def test_anything_else_in_a_node_file_is_refused(text):
    with pytest.raises(TaoInferenceError, match="not what the batch script writes"):
        parse_node_file(text)


def _fake_docker(tmp_path):
    """``docker`` whose container prints marker lines of its own (a hostile image) and publishes 40001."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(
        '#!/bin/bash\ncase "$1" in\n'
        '  run) echo TAO_NODE_PORT=22; echo TAO_NODE_ADDR=203.0.113.9; exec sleep 120;;\n'
        '  port) sleep 0.3; echo 0.0.0.0:40001;;\n'
        'esac\nexit 0\n')
    (bin_dir / "docker").chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("bind, expected", [
    (None, "TAO_NODE_PORT=40001\n"), ("127.0.0.1", "TAO_NODE_ADDR=127.0.0.1\nTAO_NODE_PORT=40001\n"),
])
def test_the_script_tells_where_it_listens_in_a_private_file_never_in_the_log(tmp_path, bind, expected):
    """With the docker runtime the container's output reaches the log before the script knows the
    port: a marker printed there is the container's, and only the node file is read."""
    extra = {"slurm_bind_address": bind} if bind else {}
    proc = _run_script(script_for("docker", **extra), tmp_path, _fake_docker(tmp_path))
    try:
        assert _marker(tmp_path, "job") == 40001  # the file is 0600
        assert _node_file(tmp_path).read_text() == expected
        assert "TAO_NODE_PORT=22\nTAO_NODE_ADDR=203.0.113.9\n" in _job_log(tmp_path).read_text()
        assert sorted(p.name for p in (tmp_path / "job").iterdir()) == sorted(
            ["batch.sh", "%s.log" % JOB_ID, "%s.node" % JOB_ID])  # no temporary file left
    finally:
        _stop(proc)


def test_a_host_network_server_printing_a_marker_does_not_move_the_port(tmp_path):
    """The fake server prints TAO_NODE_PORT=22 into the log; the node file has the port it got."""
    proc = _run_script(script_for("pyxis", network_arch="tao-dataservices", model_path="/models/x"), tmp_path,
                       _fake_bin(tmp_path))
    try:
        port = _marker(tmp_path, "job")
        assert 8080 <= port <= 8199
        deadline = time.monotonic() + 30
        while "TAO_NODE_PORT=22" not in _job_log(tmp_path).read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "TAO_NODE_PORT=22" in _job_log(tmp_path).read_text()
        assert _node_file(tmp_path).read_text() == "TAO_NODE_PORT=%d\n" % port
    finally:
        _stop(proc)


# -- port locks are the user's own --------------------------------------------------------------------
def _shared_dirs(tmp_path):
    """Two world-writable, sticky folders standing in for /run/lock and /tmp."""
    dirs = []
    for label in ("run-lock", "shared-tmp"):
        folder = tmp_path / label
        folder.mkdir()
        folder.chmod(0o1777)
        dirs.append(folder)
    return dirs


def _in_shared_dirs(text, run_lock, shared_tmp):
    return text.replace("/run/lock", "@RUN_LOCK@").replace("/tmp", "@TMP@").replace(
        "@RUN_LOCK@", str(run_lock)).replace("@TMP@", str(shared_tmp))


@pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")
def test_another_user_cannot_block_the_ports_by_making_their_locks_first(tmp_path):
    """Another user (nobody) made, before any job of ours ran, every name a lock of ours could take in
    both shared folders: the lock files of a shared scheme for every port 8080-8199 (folders, which
    even root cannot flock) and this user's own lock folder (a folder of theirs, a symlink). The
    job still gets a port, its lock in a private folder beside the job log."""
    nobody = pwd.getpwnam("nobody")
    run_lock, shared_tmp = _shared_dirs(tmp_path)
    for base in (run_lock, shared_tmp):
        for port in range(8080, 8200):
            squat = base / ("tao-inference-port-%d.lock" % port)
            squat.mkdir(mode=0o700)
            os.chown(str(squat), nobody.pw_uid, nobody.pw_gid)
    own = "tao-inference-%d" % os.getuid()
    (run_lock / own).mkdir(mode=0o700)
    os.chown(str(run_lock / own), nobody.pw_uid, nobody.pw_gid)
    os.symlink(str(tmp_path), str(shared_tmp / own))
    os.lchown(str(shared_tmp / own), nobody.pw_uid, nobody.pw_gid)
    text = script_for("apptainer", network_arch="tao-dataservices", model_path="/models/x")
    proc = _run_script(_in_shared_dirs(text, run_lock, shared_tmp), tmp_path, _fake_bin(tmp_path))
    try:
        port = _marker(tmp_path, "job")
        assert 8080 <= port <= 8199
        host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
        locks = tmp_path / "job" / ("port-locks-%s" % host)  # beside the job log, private
        assert stat.S_IMODE(locks.stat().st_mode) == 0o700 and (locks / ("port-%d.lock" % port)).is_file()
        assert not list(tmp_path.glob("port-*.lock"))  # nothing went through the symlink
    finally:
        _stop(proc)


def test_the_lock_folder_is_the_users_own_and_private(tmp_path):
    run_lock, shared_tmp = _shared_dirs(tmp_path)
    proc = _run_script(_in_shared_dirs(script_for("apptainer", network_arch="tao-dataservices",
                                                  model_path="/models/x"), run_lock, shared_tmp),
                       tmp_path, _fake_bin(tmp_path))
    try:
        port = _marker(tmp_path, "job")
        folder = run_lock / ("tao-inference-%d" % os.getuid())
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
        assert (folder / ("port-%d.lock" % port)).is_file() and not list(shared_tmp.iterdir())
        assert [p.name for p in run_lock.iterdir()] == [folder.name]
    finally:
        _stop(proc)


# -- the driver against a scripted login host ------------------------------------------------------
OTHER_ID = "11111111-2222-4333-8444-555555555555"
LOG = ".tao-inference/%s.log" % JOB_ID
NODE = ".tao-inference/%s.node" % JOB_ID
NOT_FINAL = ("STOPPED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD",
             "REVOKED", "REQUEUED", "RESIZING", "CONFIGURING", "COMPLETING", "SUSPENDED", "PENDING", "?")
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY")


class FakeLogin(object):
    """A login host that answers the driver's commands from a table of jobs (every user's, on the
    default cluster) and files, as Slurm 22.05 does. A job missing from the table is one Slurm no
    longer knows."""

    destination = "login"

    def __init__(self):
        self.jobs = {}
        self.files = {}
        self.calls = []
        self.submit = lambda stdin: (0, "%s\n" % self.add(JOB_ID), "")
        self.scancel_rc = 0
        self.cancel_works = True
        self.squeue_down = False
        self.squeue_hides = False  # squeue -j shows nothing (the job only in scontrol)

    def add(self, job_id, state="RUNNING", user="me", comment=None, slurm_id=None):
        slurm_id = slurm_id or str(100 + len(self.jobs))
        self.jobs[slurm_id] = {"state": state, "node": "n1" if state == "RUNNING" else "", "user": user,
                               "comment": comment if comment is not None else "tao.inference:job_id=%s,name=" % job_id}
        return slurm_id

    def run(self, words, stdin=None, check=True, timeout=60):
        words = [str(w) for w in words]
        self.calls.append(words)
        if words[0].startswith("sh -c "):
            return self.submit(stdin)
        if self.squeue_down and words[0] in ("squeue", "scontrol"):
            return 1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
        if words == ["squeue", "--me", "-t", "all", "-h", "-o", "%i|%T|%N|%r|%k"]:
            lines = ("%s|%s|%s|%s|%s\n" % (i, j["state"], j["node"], j.get("reason", "None"), j["comment"] or "(null)")
                     for i, j in self.jobs.items() if j["user"] == "me")
            return 0, "".join(lines), ""
        if words[:5] == ["squeue", "-h", "-t", "all", "-j"] and words[6:] == ["-o", "%T|%N|%r"]:
            job = self.jobs.get(words[5])
            if job is None:
                return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
            return 0, "" if self.squeue_hides else "%s|%s|None\n" % (job["state"], job["node"]), ""
        if words[:3] == ["scontrol", "show", "job"]:
            if words[3] not in self.jobs:
                return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
            return 0, "JobId=%s JobName=x\n   JobState=%s Reason=None Dependency=(null)\n" % (
                words[3], self.jobs[words[3]]["state"]), ""
        if words[:3] == ["scontrol", "show", "node"]:
            return 0, "NodeName=n1 NodeAddr=10.0.0.7 State=IDLE\n", ""
        if words[0] == "scancel":
            if words[1].startswith("--clusters="):
                return 0, "", ""  # another cluster: nothing in this table
            if self.scancel_rc:
                return self.scancel_rc, "", "scancel: error: Kill job error on job id %s: Access denied\n" % words[1]
            if self.cancel_works and words[1] in self.jobs:
                self.jobs[words[1]]["state"] = "CANCELLED"
            return 0, "", ""
        if words[:2] == ["tail", "-n"]:
            return 0, self.files.get(words[-1], ""), ""
        if words[:3] == ["head", "-c", "1024"] and len(words) == 4:
            if words[3] not in self.files:
                return 1, "", "head: cannot open '%s' for reading: No such file or directory\n" % words[3]
            return 0, self.files[words[3]], ""
        raise AssertionError("unexpected command %s" % words)

    def scancels(self):
        return [" ".join(c[1:]) for c in self.calls if c[0] == "scancel"]


@pytest.fixture
def login(monkeypatch):
    monkeypatch.setattr(slurm_mod, "SUBMIT_RECHECK", 0)
    monkeypatch.setattr(slurm_mod, "CANCEL_WAIT", 0.3)
    fake = FakeLogin()
    driver = SlurmDriver("login")
    driver.target = fake
    return fake, driver


def _launch(timeout=2, **params):
    base = dict(network_arch="cosmos-rl", model_path="/models/x", platform="slurm", slurm_login_host="login",
                slurm_container_runtime="docker", num_gpus=0, secret_env=["HF_TOKEN"])
    base.update(params)
    environ = {"HF_TOKEN": SECRET}
    spec = make_spec(environ=environ, **base)
    plain, secret = container_env(spec, JOB_ID, environ)
    submitted = []
    launch = Launch(spec, JOB_ID, inner_command(spec, JOB_ID), plain, secret, 18080, {}, timeout=timeout,
                    on_submitted=submitted.append)
    return launch, submitted


def _tunnels(monkeypatch):
    """open_tunnel stand-in: records where each tunnel goes."""
    opened = []

    def fake(target, local_port, host, port):
        opened.append((host, port))
        return 4242, "99"
    monkeypatch.setattr(slurm_mod, "open_tunnel", fake)
    return opened


def test_a_banner_before_the_job_id_is_no_job_id(login, monkeypatch):
    fake, driver = login
    fake.submit = lambda stdin: (0, "Welcome to cluster 7 (node 12)\n%s\n" % fake.add(JOB_ID), "")
    fake.files[NODE] = "TAO_NODE_PORT=40001\n"
    _tunnels(monkeypatch)
    launch, submitted = _launch()
    fields = driver.start(launch)
    assert fields["platform_job_id"] == "100" and submitted[0]["platform_job_id"] == "100"
    assert fields["node_port"] == 40001 and fields["slurm_node_addr"] == "10.0.0.7"


def test_the_tunnel_goes_where_the_node_file_says_never_where_the_log_says(login, monkeypatch):
    """The container's output shares the job log: marker lines there are not the script's."""
    fake, driver = login
    fake.files[LOG] = "TAO_NODE_PORT=22\nTAO_NODE_ADDR=203.0.113.9\nserver starting\n"
    fake.files[NODE] = "TAO_NODE_PORT=40001\n"
    opened = _tunnels(monkeypatch)
    fields = driver.start(_launch()[0])
    assert opened == [("10.0.0.7", 40001)] and fields["node_port"] == 40001
    assert not [c for c in fake.calls if c[0] in ("grep", "tail")]  # the log is never read for it


def test_a_node_file_the_script_did_not_write_fails_the_start_and_cancels_the_job(login, monkeypatch):
    fake, driver = login
    fake.files[NODE] = "TAO_NODE_PORT=40001\nTAO_NODE_PORT=22\n"
    opened = _tunnels(monkeypatch)
    with pytest.raises(TaoInferenceError, match="not what the batch script writes") as caught:
        driver.start(_launch()[0])
    assert ".tao-inference/%s.node on login" % JOB_ID in caught.value.msg
    assert opened == [] and fake.scancels() == ["100"] and fake.jobs["100"]["state"] == "CANCELLED"


def test_a_job_submitted_to_another_cluster_is_never_taken_for_a_job_here(login, monkeypatch):
    """sbatch answered <id>;<cluster>: on the default cluster that id is another job of the user's,
    which must be neither recorded, waited for nor cancelled."""
    fake, driver = login
    unrelated = fake.add(None, comment="my own batch job", slurm_id="42")
    fake.files[NODE] = "TAO_NODE_PORT=40001\n"
    fake.submit = lambda stdin: (0, "42;b\n", "")
    _tunnels(monkeypatch)
    launch, submitted = _launch()
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(launch)
    msg = caught.value.msg
    assert "submitted the job to cluster b (job 42)" in msg and "squeue --clusters=b -j 42" in msg
    assert "scancel --clusters=b --name=tao-0f8c2e4a 42 was sent" in msg
    assert submitted == [] and fake.scancels() == ["--clusters=b --name=tao-0f8c2e4a 42"]
    assert fake.jobs[unrelated]["state"] == "RUNNING"
    assert not [c for c in fake.calls if c[0] in ("squeue", "scontrol") and "42" in c]


def test_unreadable_sbatch_output_finds_cancels_and_shows_it_masked(login):
    fake, driver = login
    fake.submit = lambda stdin: (0, "%s\nlast login token %s\n" % (fake.add(JOB_ID), SECRET), "")
    launch, submitted = _launch()
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(launch)
    msg = caught.value.msg
    assert "printed no job id" in msg and "last login token %s" % MASK in msg and SECRET not in msg
    assert "Slurm had taken it as job 100, which was cancelled" in msg
    assert fake.scancels() == ["100"] and fake.jobs["100"]["state"] == "CANCELLED"
    assert submitted[0]["platform_job_id"] == "100"


def test_a_submit_cut_off_after_sbatch_took_the_job_cancels_it(login):
    fake, driver = login

    def cut(stdin):
        fake.add(JOB_ID)
        raise TaoInferenceError("ssh login timed out after 60s running: sh -c '...'")
    fake.submit = cut
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(_launch()[0])
    assert "did not complete (ssh login timed out" in caught.value.msg
    assert "Slurm had taken it as job 100, which was cancelled" in caught.value.msg
    assert fake.jobs["100"]["state"] == "CANCELLED"


def test_a_submit_cut_off_before_sbatch_names_the_job_id(login):
    fake, driver = login

    def cut(stdin):
        raise TaoInferenceError("cannot reach login over SSH: Connection reset")
    fake.submit = cut
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(_launch()[0])
    assert "none was submitted" in caught.value.msg
    assert "state: absent, job_id: %s, platform: slurm" % JOB_ID in caught.value.msg
    assert caught.value.details["job_id"] == JOB_ID


def test_a_submit_whose_outcome_cannot_be_learned_names_the_job_id(login):
    fake, driver = login

    def cut(stdin):
        fake.squeue_down = True
        raise TaoInferenceError("ssh login timed out after 60s")
    fake.submit = cut
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(_launch()[0])
    assert "Whether Slurm took the job is unknown" in caught.value.msg
    assert "job_id: %s" % JOB_ID in caught.value.msg


# -- signals (the service layer raises Interrupted from its handler) and Ctrl-C -----------------------
SIGNALS = [procs.Interrupted(signal.SIGTERM), KeyboardInterrupt()]


@pytest.mark.parametrize("interruption", SIGNALS, ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_during_the_submit_finds_and_cancels_the_job(login, interruption):
    fake, driver = login

    def cut(stdin):
        fake.add(JOB_ID)  # sbatch took the job; the answer never arrived
        raise interruption
    fake.submit = cut
    launch, submitted = _launch()
    with pytest.raises(type(interruption)) as caught:
        driver.start(launch)
    assert caught.value is interruption  # raised again as it came
    assert fake.scancels() == ["100"] and fake.jobs["100"]["state"] == "CANCELLED"
    assert submitted[0]["platform_job_id"] == "100"


def test_a_signal_before_sbatch_took_the_job_is_raised_as_it_came(login):
    fake, driver = login
    interruption = procs.Interrupted(signal.SIGHUP)

    def cut(stdin):
        raise interruption
    fake.submit = cut
    with pytest.raises(procs.Interrupted) as caught:
        driver.start(_launch()[0])
    assert caught.value is interruption and fake.scancels() == []
    assert ["squeue", "--me", "-t", "all", "-h", "-o", "%i|%T|%N|%r|%k"] in fake.calls  # it was looked for


def test_a_signal_during_the_submit_whose_job_cannot_be_cancelled_names_it(login):
    fake, driver = login
    fake.cancel_works = False

    def cut(stdin):
        fake.add(JOB_ID)
        raise procs.Interrupted(signal.SIGTERM)
    fake.submit = cut
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(_launch()[0])
    msg = caught.value.msg
    assert msg.startswith("the start was interrupted (SIGTERM) while sbatch ran on login")
    assert "Slurm had taken it as job 100, and cancelling it failed" in msg and "scancel 100" in msg
    assert caught.value.details["platform_job_id"] == "100"


def test_a_signal_while_the_job_id_is_recorded_cancels_the_job(login):
    fake, driver = login
    launch, _submitted = _launch()

    def record(fields):
        raise procs.Interrupted(signal.SIGTERM)
    launch.on_submitted = record
    with pytest.raises(procs.Interrupted):
        driver.start(launch)
    assert fake.scancels() == ["100"] and fake.jobs["100"]["state"] == "CANCELLED"


def test_a_signal_while_waiting_for_the_job_to_run_cancels_it(login, monkeypatch):
    fake, driver = login
    real, calls = driver.job_state, []

    def job_state(slurm_id):
        calls.append(slurm_id)
        if len(calls) == 1:
            raise procs.Interrupted(signal.SIGINT)
        return real(slurm_id)
    monkeypatch.setattr(driver, "job_state", job_state)
    with pytest.raises(procs.Interrupted):
        driver.start(_launch()[0])
    assert fake.scancels() == ["100"] and fake.jobs["100"]["state"] == "CANCELLED"


def test_sbatch_errors_and_job_logs_are_masked(login):
    fake, driver = login
    fake.submit = lambda stdin: (1, "", "sbatch: error: bad value %s\n" % SECRET)
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(_launch()[0])
    assert SECRET not in caught.value.msg and MASK in caught.value.msg

    fake.submit = lambda stdin: (0, "%s\n" % fake.add(JOB_ID, state="FAILED"), "")
    fake.files[LOG] = "server: token=%s refused\n" % SECRET
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(_launch()[0])
    assert "ended as FAILED" in caught.value.msg and "token=%s refused" % MASK in caught.value.msg
    assert driver.logs({"job_id": JOB_ID}, 5, {"HF_TOKEN": SECRET}) == "server: token=%s refused\n" % MASK


def test_find_lists_only_own_active_jobs_with_a_uuid_job_id(login):
    fake, driver = login
    mine = fake.add(JOB_ID, comment="tao.inference:job_id=%s,name=svc" % JOB_ID)
    held = fake.add(OTHER_ID, state="REQUEUE_HOLD", comment="tao.inference:job_id=%s,name=svc" % OTHER_ID)
    fake.add(OTHER_ID, state="COMPLETED", comment="tao.inference:job_id=%s,name=svc" % OTHER_ID)
    fake.add(OTHER_ID, user="someone-else", comment="tao.inference:job_id=%s,name=svc" % OTHER_ID)
    fake.add(None, comment="tao.inference:job_id=../../x,name=svc")
    fake.add(None, comment="an unrelated job")
    found = driver.find("svc")
    assert [(f.ident, f.labels["platform_job_id"]) for f in found] == [(JOB_ID, mine), (OTHER_ID, held)]


# -- job states: every state but the final ones is active ------------------------------------------
def test_the_final_states_are_the_ended_ones_and_the_gone_answer():
    assert set(FINAL) == set(ENDED) | {"UNKNOWN"}
    for state in ENDED + ("UNKNOWN",):
        assert not is_active(state)
    for state in NOT_FINAL + ("RUNNING", "", "SOME_STATE_OF_A_LATER_SLURM"):
        assert is_active(state)


@pytest.mark.parametrize("state", NOT_FINAL)
def test_stop_cancels_an_own_job_in_any_state_that_is_not_final(login, state):
    fake, driver = login
    slurm_id = fake.add(JOB_ID, state=state)
    assert driver.stop({"job_id": JOB_ID, "platform_job_id": slurm_id}) is True
    assert fake.scancels() == [slurm_id] and fake.jobs[slurm_id]["state"] == "CANCELLED"


@pytest.mark.parametrize("state", ["STOPPED", "REQUEUE_HOLD", "SPECIAL_EXIT", "STAGE_OUT", "SIGNALING"])
@pytest.mark.parametrize("hidden", [False, True], ids=["squeue", "scontrol"])
def test_a_job_that_stays_in_a_state_that_is_not_final_is_no_confirmed_cancel(login, state, hidden):
    fake, driver = login
    slurm_id = fake.add(JOB_ID, state=state)
    fake.cancel_works = False
    fake.squeue_hides = hidden  # the state as scontrol spells it (JobState=)
    with pytest.raises(TaoInferenceError, match="is still %s" % state):
        driver._cancel(slurm_id)


@pytest.mark.parametrize("state", ENDED)
def test_a_job_that_ended_before_scancel_is_no_failure(login, state):
    fake, driver = login
    slurm_id = fake.add(JOB_ID)
    fake.scancel_rc = 1
    fake.jobs[slurm_id]["state"] = state  # ended between squeue --me and scancel
    driver._cancel(slurm_id)


# -- stop ----------------------------------------------------------------------------------------
def test_stop_cancels_the_own_job_that_carries_the_job_id(login):
    fake, driver = login
    slurm_id = fake.add(JOB_ID)
    assert driver.stop({"job_id": JOB_ID, "platform_job_id": slurm_id}) is True
    assert fake.scancels() == [slurm_id]


NOT_OURS = [
    ("someone-else", "tao.inference:job_id=%s,name=" % JOB_ID),  # another user's job
    ("me", "tao.inference:job_id=%s,name=" % OTHER_ID),          # another service's job
    ("me", "my own batch job"),                                   # not the collection's
]


@pytest.mark.parametrize("owner, comment", NOT_OURS)
def test_stop_refuses_a_recorded_job_that_runs_but_is_not_this_services(login, owner, comment):
    """The service's own job may run where this driver cannot see it (another cluster): the entry
    must stay, so stop raises rather than answer "nothing to stop"."""
    fake, driver = login
    slurm_id = fake.add(None, user=owner, comment=comment)
    also_ours = fake.add(JOB_ID, state="PENDING")
    with pytest.raises(TaoInferenceError) as caught:
        driver.stop({"job_id": JOB_ID, "platform_job_id": slurm_id})
    msg = caught.value.msg
    assert "Slurm job %s, recorded for service %s, is RUNNING but is not that service's job" % (slurm_id, JOB_ID) in msg
    assert "Nothing was cancelled" in msg and caught.value.details["platform_job_id"] == slurm_id
    assert fake.scancels() == [] and fake.jobs[slurm_id]["state"] == "RUNNING"
    assert fake.jobs[also_ours]["state"] == "PENDING"


@pytest.mark.parametrize("owner, comment", NOT_OURS)
def test_stop_lets_go_of_a_recorded_job_that_ended_whoever_it_was(login, owner, comment):
    fake, driver = login
    slurm_id = fake.add(None, user=owner, comment=comment, state="COMPLETED")
    assert driver.stop({"job_id": JOB_ID, "platform_job_id": slurm_id}) is False
    assert driver.stop({"job_id": JOB_ID, "platform_job_id": "999"}) is False  # unknown to Slurm
    assert fake.scancels() == []


def test_stop_finds_a_job_whose_id_was_never_recorded(login):
    fake, driver = login
    slurm_id = fake.add(JOB_ID)
    assert driver.stop({"job_id": JOB_ID, "orphan": True}) is True
    assert fake.scancels() == [slurm_id]


def test_an_orphans_tunnel_is_found_by_the_node_file_never_by_the_log(login, monkeypatch):
    fake, driver = login
    slurm_id = fake.add(JOB_ID)
    fake.files[LOG] = "TAO_NODE_PORT=22\nTAO_NODE_ADDR=203.0.113.9\n"
    fake.files[NODE] = "TAO_NODE_ADDR=127.0.0.1\nTAO_NODE_PORT=40001\n"
    looked, closed = [], []
    monkeypatch.setattr(slurm_mod, "find_tunnels", lambda host, port: looked.append((host, port)) or [(7, "1", "s")])
    monkeypatch.setattr(slurm_mod, "close_tunnel", lambda *args: closed.append(args) or False)
    assert driver.stop({"job_id": JOB_ID, "orphan": True}) is True
    assert looked == [("127.0.0.1", 40001)] and closed[0] == (7, "1", "s") and fake.scancels() == [slurm_id]

    # A node file that is not the script's: no tunnel is looked for by it; the job is still cancelled.
    slurm_id = fake.add(JOB_ID)
    fake.files[NODE] = "TAO_NODE_PORT=22\nTAO_NODE_PORT=40001\n"
    looked[:] = []
    assert driver.stop({"job_id": JOB_ID, "orphan": True}) is True
    assert looked == [] and fake.scancels()[-1] == slurm_id


def test_stop_raises_when_slurm_cannot_be_asked(login):
    fake, driver = login
    fake.add(JOB_ID)
    fake.squeue_down = True
    with pytest.raises(TaoInferenceError, match="squeue --me"):
        driver.stop({"job_id": JOB_ID, "platform_job_id": "100"})
    assert fake.scancels() == []


def test_a_failed_scancel_raises_with_the_job_id_and_what_to_do(login):
    fake, driver = login
    slurm_id = fake.add(JOB_ID)
    fake.scancel_rc = 1
    with pytest.raises(TaoInferenceError) as caught:
        driver.stop({"job_id": JOB_ID, "platform_job_id": slurm_id})
    assert "scancel %s failed" % slurm_id in caught.value.msg and "scancel %s" % slurm_id in caught.value.msg
    assert caught.value.details["platform_job_id"] == slurm_id


def test_a_job_still_active_after_scancel_raises(login):
    fake, driver = login
    slurm_id = fake.add(JOB_ID)
    fake.cancel_works = False
    started = time.monotonic()
    with pytest.raises(TaoInferenceError) as caught:
        driver.stop({"job_id": JOB_ID, "platform_job_id": slurm_id})
    assert "is still RUNNING" in caught.value.msg and "by hand on login: scancel %s" % slurm_id in caught.value.msg
    assert time.monotonic() - started < 5


def test_a_failed_start_whose_cancel_fails_names_the_slurm_job(login, monkeypatch):
    fake, driver = login
    fake.submit = lambda stdin: (0, "%s\n" % fake.add(JOB_ID), "")
    fake.files[NODE] = "TAO_NODE_PORT=40001\n"

    def broken(*args):
        raise TaoInferenceError("the SSH tunnel failed: port in use")
    monkeypatch.setattr(slurm_mod, "open_tunnel", broken)
    fake.cancel_works = False
    with pytest.raises(TaoInferenceError) as caught:
        driver.start(_launch()[0])
    msg = caught.value.msg
    assert msg.startswith("the SSH tunnel failed: port in use. Then cancelling Slurm job 100 failed")
    assert "scancel 100" in msg and caught.value.details["platform_job_id"] == "100"


# -- status --------------------------------------------------------------------------------------
def test_status_does_not_call_a_job_missing_when_slurm_does_not_answer(login):
    fake, driver = login
    slurm_id = fake.add(JOB_ID)
    fake.squeue_down = True
    with pytest.raises(TaoInferenceError, match="failed|cannot tell the state"):
        driver.status({"job_id": JOB_ID, "platform_job_id": slurm_id})


@pytest.mark.parametrize("state, expected, detail", [
    ("RUNNING", "running", "RUNNING on n1"),
    ("PENDING", "pending", "PENDING"),
    ("STOPPED", "pending", "STOPPED"),
    ("REQUEUE_HOLD", "pending", "REQUEUE_HOLD"),
    ("CANCELLED", "exited", "CANCELLED"),
    ("OUT_OF_MEMORY", "exited", "OUT_OF_MEMORY"),
])
def test_status_of_the_services_own_job(login, state, expected, detail):
    fake, driver = login
    slurm_id = fake.add(JOB_ID, state=state)
    status = driver.status({"job_id": JOB_ID, "platform_job_id": slurm_id})
    assert status.state == expected and detail in status.detail and status.extra["slurm_state"] == state
    assert status.broken == ("tunnel_down" if state == "RUNNING" else None)  # the entry has no tunnel


@pytest.mark.parametrize("state, reason, shown", [
    ("PENDING", "Resources", "pending (Resources)"),
    ("PENDING", "ReqNodeNotAvail, UnavailableNodes:n1", "pending (ReqNodeNotAvail, UnavailableNodes:n1)"),
    ("PENDING", "None", "pending"),
    ("RUNNING", "None", "running"),
])
def test_a_waiting_job_says_why_and_a_watch_sees_the_reason_change(login, state, reason, shown):
    fake, driver = login
    slurm_id = fake.add(JOB_ID, state=state)
    fake.jobs[slurm_id]["reason"] = reason
    status = driver.status({"job_id": JOB_ID, "platform_job_id": slurm_id})
    assert status.as_dict().get("reason") == (None if reason == "None" else reason)
    if reason != "None":
        assert "%s (%s)" % (state, reason) in status.detail
    assert watched_state({"platform_status": status.as_dict(), "readiness": None}) == shown
    # Readiness, once there is some, is what a watch compares.
    assert watched_state({"platform_status": status.as_dict(), "readiness": {"reason": "model_loading"}}) == \
        "model_loading"


def test_status_of_a_job_slurm_no_longer_knows(login):
    _fake, driver = login
    status = driver.status({"job_id": JOB_ID, "platform_job_id": "999"})
    assert status.state == "missing" and "unknown to Slurm" in status.detail


@pytest.mark.parametrize("owner, comment", NOT_OURS)
@pytest.mark.parametrize("state", ["RUNNING", "COMPLETED"])
def test_status_reports_a_recorded_job_that_is_not_this_services_as_missing(login, owner, comment, state):
    fake, driver = login
    slurm_id = fake.add(None, user=owner, comment=comment, state=state)
    status = driver.status({"job_id": JOB_ID, "platform_job_id": slurm_id})
    assert status.state == "missing" and status.extra["slurm_state"] is None and status.broken is None
    assert "Slurm job %s is not this service's" % slurm_id in status.detail and state not in status.detail
    assert fake.scancels() == []


def test_a_job_held_past_the_remaining_time_says_the_time_in_seconds_as_given(login, monkeypatch):
    """The service layer gives the time left of one deadline: a float, said rounded."""
    fake, driver = login
    fake.submit = lambda stdin: (0, "%s\n" % fake.add(JOB_ID, state="PENDING"), "")
    launch, _submitted = _launch(timeout=0.3999)
    with pytest.raises(TaoInferenceError, match=r"did not start within 0\.4s \(Slurm holds it: None\)"):
        driver.start(launch)
    assert fake.jobs["100"]["state"] == "CANCELLED"
