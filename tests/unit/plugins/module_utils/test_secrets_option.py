"""Secrets given as a module option (``secrets``, no_log) travel the secret_env path: names in the spec and the
registry, values only in the launch's secret channel; conflicts and bad values fail without showing a value."""

import json

import pytest

from ansible_collections.tao.inference.plugins.module_utils import readiness
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.base import mask
from ansible_collections.tao.inference.plugins.module_utils.spec import check_secrets

from .helpers import make_spec
from .test_service_trust import FakeDriver, world  # noqa: F401  pylint: disable=unused-import

CANARY = "hf_OPTION_CANARY_0a1b2c3d"


def test_option_names_join_secret_env_and_the_spec_holds_no_value():
    spec = make_spec(num_gpus=0, secrets={"HF_TOKEN": CANARY, "MYCORP_LOGIN": 12345}, secret_env=["WANDB_API_KEY"],
                     environ={"WANDB_API_KEY": "wandb-key"})
    assert spec.secret_env == ("HF_TOKEN", "MYCORP_LOGIN", "WANDB_API_KEY")
    assert CANARY not in json.dumps(spec.shape()) and "12345" not in json.dumps(spec.shape())


def test_the_default_secret_env_adds_the_option_names():
    spec = make_spec(num_gpus=0, secrets={"MYCORP_LOGIN": "x" * 8}, environ={"HF_TOKEN": "from-env"})
    assert spec.secret_env == ("HF_TOKEN", "MYCORP_LOGIN")
    # Given as an option, it need not be in the environment; without secret_env nothing else is asked for.
    assert make_spec(num_gpus=0, secrets={"HF_TOKEN": CANARY}).secret_env == ("HF_TOKEN",)


def test_the_fingerprint_does_not_depend_on_the_value():
    one = make_spec(num_gpus=0, name="s", secrets={"HF_TOKEN": CANARY})
    two = make_spec(num_gpus=0, name="s", secrets={"HF_TOKEN": CANARY + "-rotated"})
    assert one.fingerprint() == two.fingerprint()


@pytest.mark.parametrize("params, expected", [
    (dict(secrets={"HF_TOKEN": CANARY}, secret_env=["HF_TOKEN"]), "both in secret_env"),
    (dict(secrets={"MYCORP_LOGIN": CANARY}, env={"MYCORP_LOGIN": "plain"}), "both in env and in secrets"),
    (dict(secrets={"HF TOKEN": CANARY}), "not a variable name"),
    (dict(secrets={"TAO_ADMIN_KEY": CANARY}), "must not be set"),
    (dict(secrets={"HF_TOKEN": ""}), "secrets.HF_TOKEN is empty"),
    (dict(secrets={"HF_TOKEN": None}), "must be a string"),
    (dict(secrets={"HF_TOKEN": [CANARY]}), "must be a string"),
    (dict(secrets={"HF_TOKEN": {"v": CANARY}}), "must be a string"),
    (dict(secrets={"HF_TOKEN": True}), "not a boolean"),
    (dict(secrets={"HF_TOKEN": CANARY + "\0x"}), "NUL"),
    (dict(secrets={"$(touch /tmp/x)": CANARY}), "not a variable name"),
])
def test_bad_secrets_fail_clearly_without_the_value(params, expected):
    with pytest.raises(TaoInferenceError) as err:
        make_spec(num_gpus=0, environ={"HF_TOKEN": "env-value"}, **params)
    assert expected in err.value.msg and CANARY not in err.value.msg
    assert "env-value" not in err.value.msg


def test_lepton_reserved_names_are_refused_in_secrets_too():
    with pytest.raises(TaoInferenceError, match="reserved"):
        make_spec(num_gpus=0, platform="lepton", resource_shape="cpu.small", secrets={"LEPTON_DEPLOYMENT_NAME": "x1234"})


def test_check_secrets_takes_numbers_as_strings():
    assert check_secrets({"PIN_CODE": 1234}) == {"PIN_CODE": "1234"} and check_secrets(None) == {}


def test_the_value_reaches_only_the_launch_and_is_masked(world, monkeypatch):  # noqa: F811
    manager, driver, registry = world
    seen = {}
    real_start = driver.start

    def start(launch):
        seen["secret_env"], seen["env"], seen["command"] = dict(launch.secret_env), dict(launch.env), launch.command
        return real_start(launch)

    driver.start = start
    manager.environ = {"HF_TOKEN": "env-value-ignored"}
    manager.secrets = check_secrets({"HF_TOKEN": CANARY})
    spec = make_spec(num_gpus=0, name="svc", secrets={"HF_TOKEN": CANARY}, environ=manager.environ)
    result = manager.present(spec)
    assert seen["secret_env"] == {"HF_TOKEN": CANARY}
    assert CANARY not in json.dumps(seen["env"]) + seen["command"]
    assert CANARY not in json.dumps(result) and CANARY not in open(registry.path).read()
    assert result["service"]["secret_env"] == ["HF_TOKEN"]
    # A server that echoes the value: what a later look shows is masked.
    monkeypatch.setattr(readiness, "probe", lambda url, timeout=2.0: readiness.Probe(
        readiness.FATAL, "model_load_failed", "bad token %s" % CANARY))
    # Drivers mask their logs with the secrets they are given (this run's option values among them).
    monkeypatch.setattr(driver, "logs",
                        lambda entry, lines=40, secrets=None: mask("auth with %s failed" % CANARY, secrets))
    info = manager.info()
    assert CANARY not in json.dumps(info) and "********" in json.dumps(info)


@pytest.mark.parametrize("kwargs, named", [
    ({"secrets": {"MYCORP_LOGIN": "abc"}}, "secrets.MYCORP_LOGIN"),
    ({"secrets": {"MYCORP_LOGIN": 7}}, "secrets.MYCORP_LOGIN"),
    ({"secret_env": ["WANDB_API_KEY"], "environ": {"WANDB_API_KEY": "w"}}, "secret_env WANDB_API_KEY"),
    ({"model_path": "hf_model://org/m", "environ": {"HF_TOKEN": "xy"}}, "HF_TOKEN"),
])
def test_a_secret_too_short_to_mask_is_refused_without_showing_it(kwargs, named):
    """mask() cannot hide a value of 1-3 characters without mangling every message: such a value is refused,
    by name, before anything starts."""
    with pytest.raises(TaoInferenceError) as caught:
        make_spec(num_gpus=0, **kwargs)
    assert named in caught.value.msg and "shorter than 4 characters" in caught.value.msg and "env" in caught.value.msg
    for value in ("abc", "xy"):
        assert "'%s'" % value not in caught.value.msg and " %s " % value not in caught.value.msg


def test_a_short_hf_token_in_the_environment_does_not_matter_when_secrets_gives_it():
    spec = make_spec(num_gpus=0, secrets={"HF_TOKEN": CANARY}, environ={"HF_TOKEN": "x"})
    assert spec.secret_env == ("HF_TOKEN",)
