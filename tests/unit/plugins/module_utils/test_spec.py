"""Input validation: each bad input fails with a message that says what to do."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

from .helpers import make_spec


@pytest.mark.parametrize("model_path, expected", [
    ("s3://bucket/ckpt", "reads no cloud storage"),
    ("gs://bucket/ckpt", "reads no cloud storage"),
    ("az://c/ckpt", "reads no cloud storage"),
    ("cs://x/y", "reads no cloud storage"),
    ("aws://x/y", "reads no cloud storage"),
    ("hf://nvidia/model", "hf_model://<org>/<model>"),
    ("hf_model://nvidia", "not of the form hf_model://<org>/<model>"),
    ("hf_model://a/b/c", "not of the form"),
    ("ftp://x/y", "unknown scheme"),
    ("models/relative", "is relative"),
    ("", "model_path is required"),
])
def test_bad_model_paths(model_path, expected):
    with pytest.raises(TaoInferenceError) as err:
        make_spec(model_path=model_path)
    assert expected in err.value.msg


def test_unknown_arch_lists_the_choices():
    with pytest.raises(TaoInferenceError) as err:
        make_spec(network_arch="yolo")
    assert "cosmos-predict2.5, cosmos-rl, tao-dataservices" in err.value.msg


def test_secret_in_env_is_refused_with_the_way_to_pass_it():
    with pytest.raises(TaoInferenceError) as err:
        make_spec(env={"HF_TOKEN": "hf_x"})
    assert "secret_env" in err.value.msg and "hf_x" not in err.value.msg


@pytest.mark.parametrize("name", ["TAO_LOGGING_SERVER_URL", "TAO_ADMIN_KEY"])
def test_callback_variables_are_refused(name):
    with pytest.raises(TaoInferenceError, match=name):
        make_spec(env={name: "http://x"})


def test_missing_secret_names_the_variable_to_export():
    with pytest.raises(TaoInferenceError) as err:
        make_spec(secret_env=["HF_TOKEN", "WANDB_API_KEY"], environ={"HF_TOKEN": "hf-value"})
    assert "export WANDB_API_KEY" in err.value.msg


def test_hf_token_passes_by_default_only_for_hub_models():
    assert make_spec(environ={"HF_TOKEN": "hf-value"}).secret_env == ("HF_TOKEN",)
    assert make_spec(environ={"HF_TOKEN": "hf-value"}, model_path="/m").secret_env == ()
    assert make_spec(environ={}).secret_env == ()
    assert make_spec(environ={"HF_TOKEN": "hf-value"}, secret_env=[]).secret_env == ()


def test_model_key_rules():
    assert make_spec(network_arch="cosmos-predict2.5").model_key == "base-2b"
    with pytest.raises(TaoInferenceError, match="base-2b, base-14b, auto-multiview"):
        make_spec(network_arch="cosmos-predict2.5", model_key="huge")
    with pytest.raises(TaoInferenceError, match="only to cosmos-predict2.5"):
        make_spec(model_key="base-2b")


def test_volumes_and_ports():
    assert make_spec(volumes=["/a:/b:ro"]).volumes == ("/a:/b:ro",)
    for bad in ("a:/b", "/a", "/a:/b:rx"):
        with pytest.raises(TaoInferenceError):
            make_spec(volumes=[bad])
    with pytest.raises(TaoInferenceError, match="1-65535"):
        make_spec(host_port=70000)
    with pytest.raises(TaoInferenceError, match="num_gpus"):
        make_spec(num_gpus=-1)


def test_fingerprint_tracks_what_runs_not_names():
    base = make_spec(name="a")
    assert base.fingerprint() == make_spec(name="b").fingerprint()
    assert base.fingerprint() != make_spec(name="a", model_path="/other").fingerprint()
    assert base.fingerprint() != make_spec(name="a", env={"X": "1"}).fingerprint()
    assert base.fingerprint() == make_spec(name="a", env={}).fingerprint()


def test_bad_name():
    with pytest.raises(TaoInferenceError, match="letters, digits"):
        make_spec(name="has space")
