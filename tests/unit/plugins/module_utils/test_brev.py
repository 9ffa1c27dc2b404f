"""The Brev driver without a CLI: its options, how it reads the brev CLI, what it records."""

import subprocess

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
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
