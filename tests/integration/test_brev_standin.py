"""The test Brev platform itself: scripts/ensure-brev.sh and the stand-in ``brev`` CLI (tests/brev/brev_standin).

Checks the CLI contract the Brev driver relies on (tests/brev/brev_standin/README.md): ``ls --json`` shapes,
the create/stop/start/delete transitions, failures when logged out, the login in
~/.brev/credentials.json as the real CLI keeps it, the SSH
config reaching each instance's own sshd (``ssh -G`` addresses, ``docker -H ssh://<alias>``), two CLI calls
at once, and ``--down`` leaving nothing. Every test uses its own platform folder and address range, so the
shared one in .build/brev (the driver's tests) is never touched.
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid

import pytest

from .conftest import IMAGE, ROOT

SCRIPT = os.path.join(ROOT, "scripts", "ensure-brev.sh")
PROMPT = "You are currently logged out, would you like to log in? [Y/n]: "
FIELDS = ["name", "id", "status", "build_status", "shell_status", "health_status", "instance_type", "instance_kind", "gpu"]
FAST = {"TAO_BREV_START_SECONDS": "0.4", "TAO_BREV_STOP_SECONDS": "0.4", "TAO_BREV_DELETE_SECONDS": "0.4",
        "TAO_BREV_POLL_SECONDS": "0.1"}


def wait_for(check, timeout=15.0, what="condition"):
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError("timed out after %ss waiting for %s; last: %r" % (timeout, what, last))


def our_processes(folder):
    """Processes whose command line mentions ``folder`` (instance sshds, ssh masters)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                line = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open("/proc/%s/stat" % entry, encoding="utf-8") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if folder in line and state != "Z" and int(entry) != os.getpid():
            found.append((int(entry), line))
    return found


def http_ok(url):
    """Whether ``url`` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (OSError, ValueError):
        return False


def namespaces_of(folder):
    """The network namespaces of the platform in ``folder`` (TAO_BREV_HOSTS=netns)."""
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    prefix = "brev-%s-" % hashlib.sha1(folder.encode("utf-8")).hexdigest()[:4]
    return [line.split()[0] for line in proc.stdout.splitlines() if line.startswith(prefix)]


class Platform:
    """One test Brev platform in its own folder."""

    def __init__(self, folder, subnet):
        self.dir = folder
        self.env = dict(os.environ, TAO_BREV_DIR=folder, TAO_BREV_SUBNET=subnet, **FAST)
        self.env.pop("TAO_BREV_HOME", None)
        self.env.pop("BREV_API_TOKEN", None)
        self.bin = None

    def ensure(self, *args):
        """Run the script."""
        return subprocess.run(["bash", SCRIPT] + list(args), capture_output=True, text=True, timeout=60, check=False, env=self.env)

    def brev(self, *args, stdin=None, env=None, timeout=60):
        """One ``brev`` call, stdout and stderr captured, stdin /dev/null unless given."""
        options = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run([os.path.join(self.bin, "brev")] + list(args), capture_output=True, text=True, timeout=timeout,
                              check=False, env=dict(self.env, **(env or {})), **options)

    def ok(self, *args, **kwargs):
        """A ``brev`` call that must succeed."""
        proc = self.brev(*args, **kwargs)
        assert proc.returncode == 0, "brev %s: rc %s\nstdout: %s\nstderr: %s" % (args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def ls(self):
        """``brev ls --json`` parsed."""
        return json.loads(self.ok("ls", "--json").stdout)["workspaces"]

    def status(self, name):
        """The listed status of ``name`` (None when it is gone)."""
        for item in self.ls() or []:
            if item["name"] == name:
                return item["status"]
        return None

    def ssh(self, *args, timeout=30):
        """``ssh -F <the platform's ssh_config>`` in batch mode."""
        return subprocess.run(["ssh", "-F", os.path.join(self.dir, "ssh_config"), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
                              + list(args), capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


_SUBNETS = [100]


@pytest.fixture(name="platform")
def platform_fixture(tmp_path):
    """A fresh platform, logged out; removed with --down afterwards, and nothing of it may be left running."""
    folder = str(tmp_path / "brev")
    _SUBNETS[0] += 1  # each platform its own addresses: an address freed by one must not be reused by the next at once
    made = Platform(folder, "127.%d.%d" % (_SUBNETS[0], os.getpid() % 250))
    proc = made.ensure()
    assert proc.returncode == 0, proc.stderr
    made.bin = proc.stdout.strip()
    assert made.bin == os.path.join(folder, "bin")
    yield made
    down = made.ensure("--down")
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(folder)
    assert wait_for(lambda: not our_processes(folder), 5, "no process of the platform") is True
    assert not namespaces_of(folder)


@pytest.fixture(name="logged_in")
def logged_in_fixture(platform):
    """The platform after ``brev login --token``."""
    platform.ok("login", "--token", "tok-" + uuid.uuid4().hex)
    return platform


def test_script_is_idempotent_and_prints_the_bin_folder(platform):
    again = platform.ensure()
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == platform.bin
    assert os.access(os.path.join(platform.bin, "brev"), os.X_OK)
    assert sorted(os.listdir(platform.bin)) == ["brev"]
    assert platform.ok("--version").stdout.startswith("Current Version: ")


def test_logged_out_commands_prompt_and_fail_like_the_real_cli(platform):
    for args in (["ls", "--json"], ["create", "x1", "--type", "g5.xlarge"], ["stop", "x1"], ["start", "x1"], ["delete", "x1"]):
        proc = platform.brev(*args)
        assert proc.returncode == 1, args
        assert proc.stdout == PROMPT, args
        assert proc.stderr == "EOF\n", args
    refresh = platform.brev("refresh")
    assert (refresh.returncode, refresh.stdout, refresh.stderr) == (1, "refreshing brev...\n" + PROMPT, "EOF\n")
    declined = platform.brev("ls", "--json", stdin="n\n")
    assert (declined.returncode, declined.stderr) == (1, "declined to login\n")
    accepted = platform.brev("ls", "--json", stdin="y\n")
    assert accepted.returncode == 1 and "brev login --token" in accepted.stderr
    assert platform.brev("login").returncode == 1  # the browser flow is not possible here


def credentials(platform):
    """The CLI's credentials file in the platform's home: (text, mode), or None."""
    path = os.path.join(platform.dir, "home", ".brev", "credentials.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read(), os.stat(path).st_mode & 0o777


def jwt(claims):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return "%s.%s.sig" % (part({"alg": "RS256", "typ": "JWT"}), part(claims))


def test_login_keeps_the_token_in_the_credentials_file_as_the_real_cli_does(platform):
    """``brev login --token`` writes ~/.brev/credentials.json (LoginWithToken, then the refresh of the user
    lookup), in Go's MarshalIndent format; the token is nowhere else, state.json never has it."""
    canary = "canary-" + uuid.uuid4().hex
    proc = platform.ok("login", "--token", canary)
    assert "Starting Login" in proc.stdout and "current organization: tao-test-hq" in proc.stdout
    text, _mode = credentials(platform)
    tokens = json.loads(text)
    assert list(tokens) == ["access_token", "refresh_token"] and tokens["refresh_token"] == canary
    assert text.startswith('{\n "access_token": "eyJ') and text.endswith('"\n}')  # refreshed: a JWT of the KAS
    platform.ok("create", "tk1", "--type", "g6.xlarge")
    platform.ok("refresh")
    for base, dirs, files in os.walk(platform.dir):
        del dirs
        for name in files:
            path = os.path.join(base, name)
            if name in ("credentials.json", "argv.log") or os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                assert canary.encode() not in handle.read(), path
    platform.ok("logout")
    assert credentials(platform) is None and platform.brev("ls", "--json").returncode == 1
    refused = platform.brev("login", "--token", "invalid-" + uuid.uuid4().hex)
    assert refused.returncode == 1 and refused.stderr == "failed to refresh token: UNAUTHORIZED\n"
    assert json.loads(credentials(platform)[0])["refresh_token"].startswith("invalid-")  # left behind, as the real CLI
    assert platform.brev("ls", "--json").stdout == "no oauth found for token\n" + PROMPT
    access = jwt({"iss": "https://login.nvidia.com", "exp": int(time.time()) + 600})
    platform.ok("login", "--token", access)  # a JWT still valid is the access token itself
    assert json.loads(credentials(platform)[0]) == {"access_token": access, "refresh_token": "auto-login"}
    expired = jwt({"iss": "https://login.nvidia.com", "exp": int(time.time()) - 600})
    platform.brev("logout")
    assert platform.brev("login", "--token", expired).returncode == 0  # an expired one is a refresh token
    assert json.loads(credentials(platform)[0])["refresh_token"] == expired
    assert platform.brev("login", "--api-key", "nope", "--org-id", "o1").stderr == "api key must start with bak-\n"
    key = "bak-" + uuid.uuid4().hex
    assert platform.ok("login", "--api-key", key, "--org-id", "o1").stdout == "API key saved for org o1\n"
    assert json.loads(credentials(platform)[0])["api_key"] == key
    assert platform.ls()[0]["name"] == "tk1"
    assert platform.brev("login", "extra").stderr == 'unknown command "extra" for "brev login"\n'


def test_a_credentials_file_written_as_the_driver_writes_it_logs_the_cli_in(platform):
    """What the Brev driver writes instead of running ``brev login --token``: the stand-in reads it the way
    the real CLI does (the placeholder access token, a refresh), and keeps the file's 0600."""
    from ansible_collections.tao.inference.plugins.module_utils.platforms.brev import credentials_text

    folder = os.path.join(platform.dir, "home", ".brev")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, "credentials.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(credentials_text("sess-" + uuid.uuid4().hex + ":dev"))
    first = platform.ok("ls", "--json")
    assert first.stdout == 'no oauth found for token\n{\n  "workspaces": null\n}\n'  # as the real CLI prints it
    assert platform.ok("ls", "--json").stdout == '{\n  "workspaces": null\n}\n'  # refreshed: a token it places
    text, mode = credentials(platform)
    assert mode == 0o600 and json.loads(text)["access_token"].startswith("eyJ")
    with open(path, "w") as handle:
        handle.write(credentials_text("invalid-" + uuid.uuid4().hex))
    refused = platform.brev("ls", "--json")
    assert refused.returncode == 1 and refused.stdout.endswith(PROMPT)


def test_ls_json_shapes(logged_in):
    empty = logged_in.ok("ls", "--json")
    assert empty.stdout == '{\n  "workspaces": null\n}\n'  # a Go nil slice, not []
    logged_in.ok("create", "shape1", "--type", "g5.xlarge")
    logged_in.ok("create", "shape2", "--type", "n2-standard-4", "--detached")
    listed = logged_in.ls()
    assert [list(item) for item in listed] == [FIELDS, FIELDS]
    first = listed[0]
    assert first["name"] == "shape1" and len(first["id"]) == 9 and first["id"].isalnum()
    assert {key: first[key] for key in FIELDS[2:]} == {
        "status": "RUNNING", "build_status": "COMPLETED", "shell_status": "READY", "health_status": "HEALTHY",
        "instance_type": "g5.xlarge", "instance_kind": "gpu", "gpu": "A10G"}
    second = listed[1]
    assert (second["status"], second["build_status"], second["shell_status"], second["health_status"]) == (
        "STARTING", "PENDING", "NOT READY", "")
    assert (second["instance_kind"], second["gpu"]) == ("cpu", "-")
    assert not any(key in json.dumps(listed) for key in ("127.", "address", "hostname", "dns"))
    table = logged_in.ok("ls").stdout
    assert "You have 2 instances in Org tao-test-hq" in table and "shape1" in table
    sick = logged_in.brev("ls", "--json", env={"TAO_BREV_UNHEALTHY_NAMES": "shape1"})
    assert json.loads(sick.stdout)["workspaces"][0]["status"] == "UNHEALTHY"
    assert logged_in.brev("ls", "a", "b").stderr == "too many args provided\n"


def test_lifecycle_create_stop_start_delete(logged_in):
    created = logged_in.ok("create", "life1", "--type", "g5.xlarge", "--detached")
    assert created.stdout == "life1\n" and "Success! Created instance 'life1'" in created.stderr
    assert logged_in.status("life1") == "STARTING"
    wait_for(lambda: logged_in.status("life1") == "RUNNING", what="RUNNING")
    not_stopped = logged_in.brev("start", "life1")
    assert (not_stopped.returncode, not_stopped.stderr) == (1, "Instance is not stopped status=RUNNING\n")
    assert logged_in.ok("stop", "life1").stdout == "life1\n"
    assert logged_in.status("life1") == "STOPPING"
    wait_for(lambda: logged_in.status("life1") == "STOPPED", what="STOPPED")
    again = logged_in.brev("stop", "life1")
    assert again.returncode == 1 and "workspace status STOPPED is not RUNNING" in again.stderr
    started = logged_in.ok("start", "life1", "--detached")
    assert "Instance life1 is starting." in started.stdout and started.stdout.endswith("life1\n")
    assert logged_in.status("life1") == "STARTING"
    wait_for(lambda: logged_in.status("life1") == "RUNNING", what="RUNNING again")
    logged_in.ok("stop", "life1")
    wait_for(lambda: logged_in.status("life1") == "STOPPED", what="STOPPED again")
    blocking = logged_in.ok("start", "life1")
    assert "Your instance is ready!" in blocking.stdout and logged_in.status("life1") == "RUNNING"
    by_id = [item["id"] for item in logged_in.ls() if item["name"] == "life1"][0]
    assert logged_in.ok("delete", by_id).stdout == by_id + "\n"
    assert logged_in.status("life1") == "DELETING"
    wait_for(lambda: logged_in.status("life1") is None, what="gone")
    gone = logged_in.brev("delete", "life1")
    assert gone.returncode == 1
    assert gone.stderr == "1 error occurred:\n\t* instance with id/name life1 not found\n\n\n"
    unknown = logged_in.brev("start", "no-such-instance")
    assert (unknown.returncode, unknown.stdout) == (0, "tried to start with local path but path not found\nno-such-instance\n")


def test_create_choices_and_refusals(logged_in):
    for flag in ("--cloud-cred-id", "--workspace-group-id"):
        proc = logged_in.brev("create", "c0", flag, "x")
        assert (proc.returncode, proc.stderr) == (1, "unknown flag: %s\n" % flag)
    bad = logged_in.brev("create", "-bad-name", "--type", "g5.xlarge")
    assert bad.returncode == 1 and bad.stderr.startswith("unknown shorthand flag: 'b' in -bad-name")
    bad = logged_in.brev("create", "--", "-bad", "--type", "g5.xlarge")
    assert bad.returncode == 1 and "name must start with a letter or digit" in bad.stderr
    assert logged_in.brev("create", "c0", "--timeout", "x").stderr.startswith('invalid argument "x" for "--timeout" flag')
    unknown = logged_in.brev("create", "c1", "--type", "nope.large")
    assert unknown.returncode == 1 and 'instance type "nope.large" is not a recognized type' in unknown.stderr
    assert unknown.stderr.endswith("could only create 0/1 instances\n") and unknown.stdout == ""
    full = logged_in.brev("create", "c1", "-t", "p5.48xlarge")
    assert full.returncode == 1 and "currently unavailable (no capacity)" in full.stderr
    fallback = logged_in.ok("create", "c1", "-t", "p5.48xlarge,g6.xlarge", "-d")
    assert "Type p5.48xlarge had failures, trying next type..." in fallback.stderr
    assert [item["instance_type"] for item in logged_in.ls()] == ["g6.xlarge"]
    duplicate = logged_in.brev("create", "c1", "--type", "g5.xlarge")
    assert duplicate.returncode == 1 and "workspace 'c1' already exists" in duplicate.stderr
    auto = logged_in.ok("create", "c2", "--gpu-name", "a10g", "--detached")
    assert auto.stdout == "c2\n"
    assert {item["name"]: item["gpu"] for item in logged_in.ls()}["c2"] == "A10G"
    cheapest = logged_in.ok("create", "--dry-run", "c3").stdout
    assert cheapest.split(", ")[0] == "g6.xlarge" and "n1-highmem-4" not in cheapest  # T4 is below capability 8.0
    many = logged_in.ok("create", "cc", "--count", "2", "--type", "g5.xlarge", "--detached")
    assert many.stdout == "cc-1\ncc-2\n"
    failing = logged_in.brev("create", "c4", "--type", "a2-highgpu-1g:nvidia-tesla-a100:1",
                             env={"TAO_BREV_FAIL_TYPES": "a2-highgpu-1g:nvidia-tesla-a100:1"})
    assert failing.returncode == 0  # the real CLI only logs a failed instance
    assert "c4: instance c4 failed: instance failed to start" in failing.stderr
    assert logged_in.brev("ls", "--json", env={"TAO_BREV_FAIL_TYPES": "a2-highgpu-1g:nvidia-tesla-a100:1"}).returncode == 0
    assert logged_in.status("c4") == "FAILURE"
    timed_out = logged_in.ok("create", "c5", "--type", "g5.xlarge", "--timeout", "0", env={"TAO_BREV_START_SECONDS": "5"})
    assert "c5: Timeout waiting for ready state" in timed_out.stderr
    logged_in.ok("create", "c6", "--type", "hyperstack_H100")
    refused = logged_in.brev("stop", "c6")
    assert refused.returncode == 1 and 'instance "c6" does not support stop.' in refused.stderr
    piped = logged_in.ok("stop", stdin="c2\n")
    assert piped.returncode == 0
    assert logged_in.status("c2") in ("STOPPING", "STOPPED")


def test_ssh_config_reaches_each_instance_and_docker_answers(logged_in):
    logged_in.ok("create", "ssh1", "--type", "g5.xlarge")
    logged_in.ok("create", "ssh2", "--type", "g6.xlarge")
    assert not os.path.exists(os.path.join(logged_in.dir, "ssh_config"))  # only refresh writes it
    assert logged_in.ok("refresh").stdout == "refreshing brev...\nbrev has been refreshed\n"
    home = os.path.join(logged_in.dir, "home")
    with open(os.path.join(home, ".brev", "ssh_config"), encoding="utf-8") as handle:
        text = handle.read()
    with open(os.path.join(logged_in.dir, "ssh_config"), encoding="utf-8") as handle:
        assert handle.read() == text
    with open(os.path.join(home, ".ssh", "config"), encoding="utf-8") as handle:
        assert handle.read().startswith('Include "%s"\n' % os.path.join(home, ".brev", "ssh_config"))
    assert text.startswith("# included in %s\nHost ssh1\n  Hostname " % os.path.join(home, ".ssh", "config"))
    assert "Host ssh1-host\n" in text and "Host ssh2\n" in text and "  ControlPersist 10m\n  Port 22\n\n" in text
    assert oct(os.stat(os.path.join(home, ".brev", "brev.pem")).st_mode & 0o777) == "0o600"
    control = text.split("\n  ControlPath ", 1)[1].split("\n", 1)[0]
    assert control.endswith("/brev-control-%C")
    masters = control[:-2]
    addresses = {}
    for alias in ("ssh1", "ssh2", "ssh1-host"):
        options = dict(line.split(" ", 1) for line in logged_in.ssh("-G", alias).stdout.splitlines() if " " in line)
        addresses[alias] = options["hostname"]
        assert options["port"] == "22" and options["user"] == "root"
    subnet = logged_in.env["TAO_BREV_SUBNET"] + "."
    assert addresses["ssh1"].startswith(subnet) and addresses["ssh2"].startswith(subnet)
    assert addresses["ssh1"] != addresses["ssh2"] and addresses["ssh1-host"] == addresses["ssh1"]
    for alias in ("ssh1", "ssh2-host"):
        proc = logged_in.ssh(alias, "echo", "reached")
        assert (proc.returncode, proc.stdout) == (0, "reached\n"), proc.stderr
    strict = logged_in.ssh("-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + os.path.join(logged_in.dir, "known_hosts"),
                           "-o", "ControlMaster=no", "ssh2", "true")
    assert strict.returncode == 0, strict.stderr
    banner = "import socket, sys; print(socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5).recv(8).decode())"
    for opt_out, port in (([], 17001 + os.getpid() % 1000), (["-o", "ControlMaster=no", "-o", "ControlPath=none"], 18001 + os.getpid() % 1000)):
        forward = subprocess.Popen(["ssh", "-F", os.path.join(logged_in.dir, "ssh_config"), "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
                                   + opt_out + ["-N", "-L", "127.0.0.1:%d:%s:22" % (port, addresses["ssh2"]), "ssh2"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        exited = forward.poll()
        seen = wait_for(lambda local=port: subprocess.run(["python3", "-c", banner, str(local)], capture_output=True, text=True,
                                                          check=False).stdout, 10, "the forward")
        assert seen.startswith("SSH-2.0")
        if opt_out:
            assert exited is None  # the ssh process owns its forward
            forward.terminate()
            forward.wait(5)
        else:
            assert exited == 0  # the real config hands the forward to a background ControlPersist master
    env = dict(os.environ, PATH=os.path.join(logged_in.dir, "ssh-bin") + os.pathsep + os.environ["PATH"])
    docker = subprocess.run(["docker", "-H", "ssh://ssh1", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                            text=True, timeout=60, check=False, env=env, stdin=subprocess.DEVNULL)
    assert docker.returncode == 0 and docker.stdout.strip(), docker.stderr
    before = len(our_processes(masters))
    assert before == 2  # the real config's ControlPersist masters: ssh1's, and one for ssh2 and ssh2-host (same %C)
    logged_in.ok("stop", "ssh1")
    refused = logged_in.ssh("-o", "ControlMaster=no", "-o", "ConnectTimeout=5", "ssh1", "true")
    assert refused.returncode == 255 and "refused" in refused.stderr
    assert wait_for(lambda: len(our_processes(masters)) == 1, 5, "ssh1's master gone")  # it died with the host
    wait_for(lambda: logged_in.status("ssh1") == "STOPPED", what="STOPPED")
    logged_in.ok("refresh")
    with open(os.path.join(logged_in.dir, "ssh_config"), encoding="utf-8") as handle:
        text = handle.read()
    assert "Host ssh1\n" not in text and "Host ssh2\n" in text
    logged_in.ok("start", "ssh1")
    logged_in.ok("refresh")
    options = dict(line.split(" ", 1) for line in logged_in.ssh("-G", "ssh1").stdout.splitlines() if " " in line)
    assert options["hostname"] == addresses["ssh1"]  # the address survives a stop and start
    assert logged_in.ssh("ssh1", "true").returncode == 0


def test_two_cli_calls_at_once(logged_in):
    def pair(first, second):
        procs = [subprocess.Popen([os.path.join(logged_in.bin, "brev")] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True, env=logged_in.env) for args in (first, second)]
        return [(proc.wait(timeout=60), proc.stdout.read(), proc.stderr.read()) for proc in procs]

    results = pair(["create", "par1", "--type", "g5.xlarge"], ["create", "par2", "--type", "g5.xlarge"])
    assert [item[0] for item in results] == [0, 0], results
    listed = logged_in.ls()
    assert sorted(item["name"] for item in listed) == ["par1", "par2"]
    assert len({item["id"] for item in listed}) == 2
    logged_in.ok("refresh")
    hostnames = {logged_in.ssh("-G", name).stdout.split("\nhostname ", 1)[1].split("\n", 1)[0] for name in ("par1", "par2")}
    assert len(hostnames) == 2
    same = pair(["create", "par3", "--type", "g5.xlarge", "-d"], ["create", "par3", "--type", "g6.xlarge", "-d"])
    assert sorted(item[0] for item in same) == [0, 1], same
    assert [item["name"] for item in logged_in.ls()].count("par3") == 1
    deletes = pair(["delete", "par1"], ["ls", "--json"])
    assert [item[0] for item in deletes] == [0, 0]
    json.loads(deletes[1][1])


def test_down_leaves_nothing(tmp_path):
    folder = str(tmp_path / "brev-down")
    made = Platform(folder, "127.140.%d" % (os.getpid() % 250))
    made.bin = made.ensure().stdout.strip()
    made.ok("login", "--token", "t")
    made.ok("create", "down1", "--type", "g5.xlarge")
    made.ok("refresh")
    assert made.ssh("down1", "true").returncode == 0  # leaves a ControlPersist master
    assert our_processes(folder)
    down = made.ensure("--down")
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(folder)
    wait_for(lambda: not our_processes(folder), 5, "no process left")
    again = made.ensure("--down")
    assert again.returncode == 0
    shutil.rmtree(folder, ignore_errors=True)


def test_exec_runs_the_last_argument_and_retries_a_failure_once(logged_in, tmp_path):
    logged_in.ok("create", "ex1", "--type", "g5.xlarge")
    first = logged_in.ok("exec", "ex1", "echo hello from $(hostname)")  # before any refresh: the retry refreshes
    assert first.stdout.endswith("ex1\n") and "hello from" in first.stdout
    assert "Connection failed, checking instance status..." in first.stderr
    marker = tmp_path / "runs"
    failing = logged_in.brev("exec", "ex1", "echo run >> %s; exit 3" % marker)
    assert (failing.returncode, failing.stderr.splitlines()[-1]) == (1, "exit status 3")
    assert marker.read_text() == "run\nrun\n"  # the real CLI runs a failing command again
    logged_in.ok("stop", "ex1")
    wait_for(lambda: logged_in.status("ex1") == "STOPPED", what="STOPPED")
    restarted = logged_in.ok("exec", "ex1", "--host", "echo back")
    assert restarted.stdout == "back\nex1\n" and logged_in.status("ex1") == "RUNNING"
    unknown = logged_in.brev("exec", "nope", "true")
    assert unknown.returncode == 1 and 'could not look up instance "nope"' in unknown.stderr
    assert logged_in.brev("exec").stderr == "requires at least 1 arg(s), only received 0\n"


def test_netns_hosts_have_their_own_engine_address_and_loopback(platform):
    """TAO_BREV_HOSTS=netns: each instance a namespace with its own dockerd and sshd, the emulator image loaded."""
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2")
    platform.env.update(TAO_BREV_HOSTS="netns", TAO_BREV_NETNS_NET="10.%d" % (200 + os.getpid() % 50), TAO_BREV_IMAGES=IMAGE)
    platform.ok("login", "--token", "t")
    platform.ok("create", "ns1", "--type", "g5.xlarge")
    platform.ok("create", "ns2", "--type", "g5.xlarge")
    platform.ok("refresh")
    address = {name: dict(line.split(" ", 1) for line in platform.ssh("-G", name).stdout.splitlines() if " " in line)["hostname"]
               for name in ("ns1", "ns2")}
    assert address["ns1"] != address["ns2"] and address["ns1"].startswith(platform.env["TAO_BREV_NETNS_NET"] + ".")
    env = dict(os.environ, PATH=os.path.join(platform.dir, "ssh-bin") + os.pathsep + os.environ["PATH"])

    def docker_on(host, *args):
        return subprocess.run(["docker", "-H", "ssh://" + host] + list(args), capture_output=True, text=True, timeout=120,
                              check=False, env=env, stdin=subprocess.DEVNULL)

    job = json.dumps({"job_id": "brev", "specs": {"model_path": "hf_model://a/b"}, "neural_network_name": "tao-dataservices"})
    command = "python -m nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server --port 8080 --job '%s'" % job
    svc = "brevsvc-" + uuid.uuid4().hex[:8]
    run = docker_on("ns1", "run", "-d", "--init", "--name", svc, "-p", address["ns1"] + ":8080:8080", "-p", "127.0.0.1:8081:8080",
                    IMAGE, "sh", "-c", command)
    assert run.returncode == 0, run.stderr
    assert docker_on("ns2", "ps", "-aq").stdout == ""  # another engine
    local = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                           check=False).stdout.split()
    assert svc not in local  # not this machine's engine either
    health = "http://%s:8080/api/v1/health/liveness" % address["ns1"]
    assert wait_for(lambda: http_ok(health), 30, "the service on the instance's address")
    loopback = platform.ssh("ns1", "docker inspect -f '{{.State.Running}}' %s && exec 3<>/dev/tcp/127.0.0.1/8081 && echo open" % svc)
    assert loopback.stdout.split() == ["true", "open"], loopback.stderr  # the instance's own loopback
    assert not http_ok("http://127.0.0.1:8081/api/v1/health/liveness")  # not this machine's loopback
    platform.ok("stop", "ns1")
    wait_for(lambda: platform.status("ns1") == "STOPPED", 30, "STOPPED")
    platform.ok("start", "ns1")
    assert docker_on("ns1", "ps", "-a", "--format", "{{.Names}} {{.State}}").stdout.split() == [svc, "exited"]  # the VM stopped
    assert len(namespaces_of(platform.dir)) == 2
    platform.ok("delete", "ns1")
    wait_for(lambda: platform.status("ns1") is None, 30, "gone")
    assert len(namespaces_of(platform.dir)) == 1  # ns2's, until --down (the fixture checks that none is left)
