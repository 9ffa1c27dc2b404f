"""Checks at the trust boundaries: full matches, no option-looking values, no secrets in children."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils import trust
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.ssh import SSHTarget

from .helpers import make_spec


@pytest.mark.parametrize("host", ["-oProxyCommand=id", "h\n", "a b", "h;id", "$(id)", "`id`", "", "h'",
                                  "::1%-oProxyCommand=x", "fe80::1%a b\n", "[fe80::1%`id`]", "::1\n"])
def test_hosts_that_a_cli_would_misread_are_refused(host):
    with pytest.raises(TaoInferenceError):
        trust.check_host(host, "host")


@pytest.mark.parametrize("host", ["login01", "login.cluster.example", "10.0.0.5", "::1", "[::1]", "node_3"])
def test_real_hosts_pass(host):
    assert trust.check_host(host, "host") == host


@pytest.mark.parametrize("user", ["-oProxyCommand=id", "root\n", "a b", "u@h", "u;id"])
def test_bad_users_are_refused(user):
    with pytest.raises(TaoInferenceError):
        trust.check_user(user, "user")


def test_ssh_argv_puts_the_destination_after_double_dash():
    target = SSHTarget("login", user="alice", port=2222)
    argv = target.argv("squeue", "-h")
    assert argv[argv.index("--") + 1:] == ["alice@login", "squeue", "-h"]
    for bad in ({"host": "-oProxyCommand=x"}, {"host": "h", "user": "-x"}, {"host": "h", "port": "22x"},
                {"host": "h", "config": "rel/config"}):
        with pytest.raises(TaoInferenceError):
            SSHTarget(**bad)


def test_job_ids_are_uuids():
    assert trust.check_job_id("0f8c2e4a-1b2c-4d3e-8f90-123456789abc")
    for bad in ("postgres", "0f8c2e4a", "0f8c2e4a-1b2c-4d3e-8f90-123456789abc\n", "latest"):
        with pytest.raises(TaoInferenceError, match="not a job_id"):
            trust.check_job_id(bad)
    assert trust.check_job_id("latest", allow_latest=True) == "latest"


def test_children_get_no_secret():
    environ = {"HF_TOKEN": "x", "NGC_API_KEY": "x", "MY_SERVICE_TOKEN": "x", "DB_PASSWORD_FILE": "x",
               "AWS_SECRET_ACCESS_KEY": "x", "CUSTOM": "x", "PATH": "/bin", "SSH_AUTH_SOCK": "/s"}
    assert sorted(trust.child_environ(["CUSTOM"], environ=environ)) == ["PATH", "SSH_AUTH_SOCK"]
    # A credential helper may need its cloud keys: only the collection's own secrets go.
    assert "AWS_SECRET_ACCESS_KEY" in trust.child_environ(by_pattern=False, environ=environ)
    assert "HF_TOKEN" not in trust.child_environ(by_pattern=False, environ=environ)


@pytest.mark.parametrize("name", ["MY_API_TOKEN", "OPENAI_API_KEY", "S3_SECRET", "DB_PASSWORD", "NGC_API_KEY",
                                  "HUGGING_FACE_HUB_TOKEN"])
def test_credential_looking_env_names_point_to_secret_env(name):
    with pytest.raises(TaoInferenceError, match="secret_env"):
        make_spec(env={name: "value"})


@pytest.mark.parametrize("params, message", [
    ({"env": {"FOO\n": "x"}}, "not a valid variable name"),
    ({"secret_env": ["HF_TOKEN\n"]}, "not a variable name"),
    ({"name": "svc\n"}, "must start"),
    ({"shm_size": "16g\n"}, "not a size"),
    ({"image": "-v/:/host"}, "not an image reference"),
    ({"image": "img:tag\nRUN"}, "not an image reference"),
    ({"bind_address": "0.0.0.0 -p 1:1"}, "not an IP address"),
    ({"volumes": ["/a:/b,/etc:/etc"]}, "comma"),
])
def test_values_with_a_trailing_newline_or_an_option_shape_are_refused(params, message):
    with pytest.raises(TaoInferenceError, match=message):
        make_spec(**params)


@pytest.mark.parametrize("port", ["22\n", " 22", "1e3", 1e400, float("nan"), True, "0", 70000, "२२"])
def test_ports_are_exact_numbers(port):
    with pytest.raises(TaoInferenceError, match="not a TCP port"):
        trust.check_port(port, "port")


def test_ssh_children_get_only_what_ssh_needs():
    environ = {"PATH": "/bin", "HOME": "/root", "SSH_AUTH_SOCK": "/s", "LC_ALL": "C", "MYCORP_LOGIN": "x",
               "DOCKER_HOST": "tcp://x", "HF_TOKEN": "x"}
    assert sorted(trust.ssh_environ(environ)) == ["HOME", "LC_ALL", "PATH", "SSH_AUTH_SOCK"]


def test_tokens_are_printable_ascii_only():
    from ansible_collections.tao.inference.plugins.module_utils.trust import is_token

    assert is_token("abc-DEF_123.~+/=")
    for bad in ("", "abc\n", "a b", "tok\r", "t\x00", "t\u00e9", None, 5):
        assert not is_token(bad)
