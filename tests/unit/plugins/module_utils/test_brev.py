"""The Brev driver without a CLI: its options, how it reads the brev CLI, what it records."""

import base64
import json
import os
import stat
import subprocess

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms import brev as brev_driver
from ansible_collections.tao.inference.plugins.module_utils.platforms.brev import BrevDriver

from .helpers import JOB_ID, make_spec


class FakeCLI(object):
    """Answers like the brev CLI; records every argv and how it was run."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        rc, out, err = self.answers.get(argv[1], (0, "", ""))
        return subprocess.CompletedProcess(argv, rc, out.encode(), err.encode())


def brev_spec(**params):
    return make_spec(platform="brev", num_gpus=0, **params)


@pytest.mark.parametrize("params, message", [
    ({"brev_instance": "-oProxyCommand=x"}, "brev_instance"),
    ({"brev_instance": "gpu\n"}, "brev_instance"),
    ({"brev_instance_type": "g5.xlarge;rm"}, "brev_instance_type"),
    ({"brev_gpu_name": "--help"}, "brev_gpu_name"),
    ({"brev_instance": "a", "brev_gpu_name": "A100"}, "give one or the other"),
    ({"brev_bind_address": "0.0.0.0"}, "with brev_expose tunnel"),
    ({"brev_expose": "direct", "brev_bind_address": "-x"}, "brev_bind_address"),
    ({"partition": "gpu"}, "partition is an option of platform slurm, not of brev"),
])
def test_bad_brev_options_are_refused(params, message):
    with pytest.raises(TaoInferenceError) as err:
        brev_spec(**params)
    assert message in err.value.msg


def test_the_options_that_shape_the_service():
    assert brev_spec().platform_options == {"expose": "tunnel"}
    assert brev_spec(brev_instance="gpu-1", brev_expose="direct", brev_bind_address="0.0.0.0").platform_options == \
        {"expose": "direct", "instance": "gpu-1", "bind_address": "0.0.0.0"}
    assert brev_spec(brev_instance_type="g5.xlarge,g6.xlarge", brev_gpu_name="A10G").platform_options == \
        {"expose": "tunnel", "instance_type": "g5.xlarge,g6.xlarge", "gpu_name": "A10G"}


def test_the_cli_runs_with_stdin_closed_and_no_secret(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "canary-secret-value")
    monkeypatch.setenv("BREV_API_TOKEN", "canary-brev-token")
    cli = FakeCLI({"ls": (0, '{"workspaces": null}', "")})
    assert BrevDriver(runner=cli).instances() == []
    argv, kwargs = cli.calls[0]
    assert argv == ["brev", "ls", "--json"] and kwargs["stdin"] == subprocess.DEVNULL
    assert "HF_TOKEN" not in kwargs["env"] and "BREV_API_TOKEN" not in kwargs["env"]


def test_a_logged_out_cli_says_how_to_log_in_and_no_token_is_passed(monkeypatch):
    monkeypatch.setenv("BREV_API_TOKEN", "canary-brev-token")
    prompt = "You are currently logged out, would you like to log in? [Y/n]: "
    cli = FakeCLI({"ls": (1, prompt, "EOF")})
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(runner=cli).instances()
    assert "not logged in" in err.value.msg and "brev login" in err.value.msg
    assert all("login" not in argv for argv, _kwargs in cli.calls)
    assert "canary-brev-token" not in repr(cli.calls)


def test_an_instance_that_is_being_deleted_is_refused():
    listing = '{"workspaces": [{"name": "gpu-1", "id": "abc123def", "status": "DELETING"}]}'
    driver = BrevDriver(instance="gpu-1", runner=FakeCLI({"ls": (0, listing, "")}))
    with pytest.raises(TaoInferenceError) as err:
        driver._wait_running("gpu-1", deadline=0, created=False)
    assert "is DELETING, not RUNNING" in err.value.msg


def test_an_instance_it_did_not_create_is_never_deleted():
    listing = '{"workspaces": [{"name": "gpu-1", "id": "abc123def", "status": "STOPPED"}]}'
    cli = FakeCLI({"ls": (0, listing, "")})
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(instance="gpu-1", runner=cli).stop({"job_id": JOB_ID, "brev_created": False})
    assert "is STOPPED" in err.value.msg  # the container cannot be removed: the entry is kept, nothing deleted
    assert all(argv[1] != "delete" for argv, _kwargs in cli.calls)


def test_the_tunnel_is_known_by_fields_the_registry_validated_not_by_text():
    entry = {"brev_expose": "tunnel", "tunnel_pid": 4242, "tunnel_start_time": "77", "host_port": 18080,
             "brev_port": 32771}
    assert BrevDriver()._tunnel(entry) == (4242, "77", "127.0.0.1:18080:127.0.0.1:32771")
    assert BrevDriver()._tunnel(dict(entry, brev_port="32771;x")) is None
    assert BrevDriver()._tunnel(dict(entry, brev_expose="direct")) is None


@pytest.mark.parametrize("entry", [
    {"brev_created": True, "connection": {"instance": "my-dev-box"}, "brev_instance_id": "zzz999zzz"},
    {"brev_created": True, "connection": {"instance": "my-dev-box"}},
    {"brev_created": True, "connection": {}},
])
def test_a_planted_or_mismatched_entry_never_deletes_an_instance(entry):
    """``brev_created`` alone deletes nothing: the instance must be the one recorded, by id (or, for a start
    cut off before the id was recorded, carry a name of the kind the collection gives)."""
    listing = '{"workspaces": [{"name": "my-dev-box", "id": "abc123def", "status": "RUNNING"}]}'
    cli = FakeCLI({"ls": (0, listing, "")})
    driver = BrevDriver(instance="my-dev-box", runner=cli)
    driver._engine = lambda name, bind=None: type("Engine", (), {"stop": lambda self, e: False})()
    driver.stop(dict(entry, job_id=JOB_ID))
    assert all(argv[1] != "delete" for argv, _kwargs in cli.calls)


def test_the_instance_it_made_is_deleted_by_its_recorded_id():
    listing = '{"workspaces": [{"name": "tao-0123456789abcdef", "id": "abc123def", "status": "RUNNING"}]}'
    cli = FakeCLI({"ls": (0, listing, "")})
    driver = BrevDriver(instance="tao-0123456789abcdef", runner=cli)
    driver._engine = lambda name, bind=None: type("Engine", (), {"stop": lambda self, e: True})()
    entry = {"job_id": JOB_ID, "brev_created": True, "brev_instance_id": "abc123def",
             "connection": {"instance": "tao-0123456789abcdef"}}
    assert driver.stop(entry) is True
    assert ["brev", "delete", "abc123def"] in [argv for argv, _kwargs in cli.calls]


# -- logging the CLI in with BREV_API_TOKEN (its credentials file, never a command line) ------------------
PROMPT = "You are currently logged out, would you like to log in? [Y/n]: "
LISTING = '{"workspaces": null}'


def jwt(header, claims, signature="c2ln"):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return "%s.%s.%s" % (part(header), part(claims), signature)


@pytest.mark.parametrize("token, access", [
    (jwt({"alg": "RS256"}, {"exp": 4102444800, "iat": 1700000000}), True),
    (jwt({"alg": "HS256"}, {}), True),
    (jwt({"alg": "none"}, None), True),  # claims null: Go leaves an empty map, nothing to check
    (jwt({"alg": "RS256"}, {"exp": 1700000000}), False),  # expired
    (jwt({"alg": "RS256"}, {"nbf": 4102444800}), False),  # not valid yet
    (jwt({"alg": "RS256"}, {"iat": 4102444800}), False),  # issued in the future
    (jwt({"alg": "RS256"}, {"exp": "4102444800"}), False),  # exp of the wrong type
    (jwt({"alg": "RS256"}, {"exp": True}), False),
    (jwt({"alg": "XX999"}, {}), False),  # a signing method golang-jwt does not know
    (jwt({"typ": "JWT"}, {}), False),  # no alg
    (jwt(None, {}), False),
    (jwt({"alg": "RS256"}, [1]), False),  # claims no object
    ("a.b.c.d", False), ("abc:def", False), ("eyJ=.e30.x", False),
])
def test_a_token_is_an_access_token_only_when_the_cli_would_take_it_for_one(token, access):
    assert brev_driver.access_token_valid(token, now=1750000000) is access
    text = brev_driver.credentials_text(token, now=1750000000)
    assert json.loads(text) == ({"access_token": token, "refresh_token": "auto-login"} if access else
                                {"access_token": "auto-login", "refresh_token": token})


def test_the_credentials_file_is_byte_for_byte_what_the_cli_writes():
    """Go's json.MarshalIndent(v, "", " ") of entity.AuthTokens: one space, field order, HTML-safe escapes,
    no newline at the end (api_key and api_key_org_id are omitempty)."""
    assert brev_driver.credentials_text("sess<1>&:dev") == \
        '{\n "access_token": "auto-login",\n "refresh_token": "sess\\u003c1\\u003e\\u0026:dev"\n}'


class LoginCLI(FakeCLI):
    """A brev CLI that is logged in once $HOME/.brev/credentials.json holds an accepted token."""

    def __init__(self, home, accept=lambda tokens: True):
        super(LoginCLI, self).__init__({})
        self.path = os.path.join(str(home), ".brev", "credentials.json")
        self.accept = accept

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        try:
            with open(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)) as handle:
                tokens = json.load(handle)
        except (OSError, ValueError):
            tokens = None
        if not tokens or not self.accept(tokens):
            return subprocess.CompletedProcess(argv, 1, PROMPT.encode(), b"EOF\n")
        return subprocess.CompletedProcess(argv, 0, LISTING.encode(), b"")


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("BREV_API_TOKEN", raising=False)
    return home


def test_a_logged_out_cli_is_logged_in_through_its_credentials_file(home):
    token = "canary-session:device-" + "9" * 8
    cli = LoginCLI(home)
    driver = BrevDriver(runner=cli, api_token=token)
    assert driver.instances() == [] and driver.logged_in_with_token is True
    path = home / ".brev" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE((home / ".brev").stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"access_token": "auto-login", "refresh_token": token}
    assert [argv for argv, _kwargs in cli.calls] == [["brev", "ls", "--json"]] * 3  # logged out, check, again
    assert token not in repr(cli.calls)  # in no argv and no environment
    assert sorted(os.listdir(str(home / ".brev"))) == ["credentials.json"]  # no temporary file left


def test_the_token_comes_from_the_environment_too(home, monkeypatch):
    monkeypatch.setenv("BREV_API_TOKEN", "from-the-env")
    assert BrevDriver.from_options({}, {}).api_token == "from-the-env"
    assert BrevDriver.from_options({}, {"brev_api_token": "the-option"}).api_token == "the-option"
    monkeypatch.setenv("BREV_API_TOKEN", "two words")
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver.from_options({}, {})
    assert "BREV_API_TOKEN" in err.value.msg and "two words" not in err.value.msg
    monkeypatch.setenv("BREV_API_TOKEN", "x7")  # too short to be masked, and no Brev token
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver.from_options({}, {})
    assert "shorter than 4 characters" in err.value.msg and "x7" not in err.value.msg


def test_a_working_login_is_never_touched(home):
    (home / ".brev").mkdir(mode=0o700)
    path = home / ".brev" / "credentials.json"
    path.write_text('{"access_token": "x", "refresh_token": "mine"}')
    cli = LoginCLI(home)
    driver = BrevDriver(runner=cli, api_token="another-token")
    driver.instances()
    assert path.read_text() == '{"access_token": "x", "refresh_token": "mine"}'
    assert driver.logged_in_with_token is False and len(cli.calls) == 1


@pytest.mark.parametrize("before", [None, '{"access_token": "auto-login", "refresh_token": "expired"}'])
def test_a_refused_token_is_named_not_shown_and_the_file_is_put_back(home, before):
    token = "canary-refused-" + "7" * 8
    folder = home / ".brev"
    folder.mkdir(mode=0o700)
    if before is not None:
        (folder / "credentials.json").write_text(before)
        os.chmod(str(folder / "credentials.json"), 0o644)

    def refuse(tokens):  # the CLI, failing to refresh, writes the token aside as the real one does
        (folder / ".invalid-refresh-token").write_text(tokens["refresh_token"])
        return False

    driver = BrevDriver(runner=LoginCLI(home, accept=refuse), api_token=token)
    with pytest.raises(TaoInferenceError) as err:
        driver.instances()
    assert "refused the token in BREV_API_TOKEN" in err.value.msg and token not in err.value.msg
    if before is None:
        assert os.listdir(str(folder)) == []  # the folder was there before: it stays
    else:
        assert (folder / "credentials.json").read_text() == before
        assert stat.S_IMODE((folder / "credentials.json").stat().st_mode) == 0o644
        # what the CLI had set aside before this run (from the expired login) is as it was, not the token
        assert (folder / ".invalid-refresh-token").read_text() == "expired"


def test_without_a_token_the_message_says_both_ways_to_log_in(home):
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(runner=LoginCLI(home)).instances()
    assert "brev login" in err.value.msg and "BREV_API_TOKEN" in err.value.msg
    assert not (home / ".brev").exists()


def test_never_through_a_symbolic_link(home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(str(elsewhere), str(home / ".brev"))
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(runner=LoginCLI(home), api_token="some-token").instances()
    assert "symbolic link" in err.value.msg and os.listdir(str(elsewhere)) == []
    os.unlink(str(home / ".brev"))
    (home / ".brev").mkdir(mode=0o700)
    os.symlink(str(elsewhere / "target"), str(home / ".brev" / "credentials.json"))
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(runner=LoginCLI(home), api_token="some-token").instances()
    assert "symbolic link" in err.value.msg and os.listdir(str(elsewhere)) == []


def test_never_into_a_folder_another_user_owns_or_can_write(home):
    os.chmod(str(home), 0o777)
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(runner=LoginCLI(home), api_token="some-token").instances()
    assert "can be written by other users" in err.value.msg and not (home / ".brev").exists()
    os.chmod(str(home), 0o700)
    (home / ".brev").mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(str(home / ".brev"), 65534, 65534)
        with pytest.raises(TaoInferenceError) as err:
            BrevDriver(runner=LoginCLI(home), api_token="some-token").instances()
        assert "belongs to another user" in err.value.msg and os.listdir(str(home / ".brev")) == []


def test_a_listing_after_a_line_of_the_cli_is_read():
    out = 'no oauth found for token\n{"workspaces": [{"name": "gpu-1", "id": "abc123def", "status": "RUNNING"}]}'
    assert BrevDriver(runner=FakeCLI({"ls": (0, out, "")})).instances()[0]["name"] == "gpu-1"


@pytest.mark.parametrize("token", ["-", "--token", "$(touch /tmp/pwned)", "`id`", "a\"b'c", "<x>&y", "\\u0000", "{}"])
def test_hostile_tokens_are_data_in_the_file_and_nowhere_else(home, token):
    cli = LoginCLI(home)
    assert BrevDriver(runner=cli, api_token=token).instances() == []
    text = (home / ".brev" / "credentials.json").read_text()
    assert json.loads(text)["refresh_token"] == token
    assert all(token not in argv for argv, _kwargs in cli.calls)


def test_a_folder_made_for_a_refused_token_goes_again(home):
    with pytest.raises(TaoInferenceError):
        BrevDriver(runner=LoginCLI(home, accept=lambda tokens: False), api_token="refused-token").instances()
    assert os.listdir(str(home)) == []


def test_no_fifo_or_other_odd_file_is_read_or_replaced(home):
    (home / ".brev").mkdir(mode=0o700)
    os.mkfifo(str(home / ".brev" / "credentials.json"))
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(runner=LoginCLI(home), api_token="some-token").instances()
    assert "not a regular file" in err.value.msg
    assert stat.S_ISFIFO((home / ".brev" / "credentials.json").lstat().st_mode)


@pytest.mark.parametrize("value", ["", "relative/home"])
def test_a_home_the_cli_could_not_use_is_refused(home, monkeypatch, value):
    monkeypatch.setenv("HOME", value)
    with pytest.raises(TaoInferenceError) as err:
        BrevDriver(runner=LoginCLI(home), api_token="some-token").instances()
    assert "HOME is" in err.value.msg
