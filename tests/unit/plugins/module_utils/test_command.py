"""Inner commands: exact text per arch, and what the server really receives."""

import ast
import json
import os
import stat
import subprocess

import pytest

from ansible_collections.tao.inference.plugins.module_utils.command import (
    container_env, env_payload, inner_command, job_payload,
)
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError

from .helpers import JOB_ID, make_spec

ENV_BLOB = ('{"CLOUD_BASED":"False","TAO_API_JOB_ID":"%s","TAO_EXECUTION_BACKEND":"local-docker"}' % JOB_ID)


def test_cosmos_rl_exact_command():
    spec = make_spec()
    assert inner_command(spec, JOB_ID) == (
        "umask 0 && cosmos-rl-inference-microservice --job "
        "'{\"job_id\":\"%s\",\"neural_network_name\":\"cosmos-rl\","
        "\"specs\":{\"model_path\":\"hf_model://nvidia/Cosmos-Reason1-7B\"}}' "
        "--docker_env_vars '%s'" % (JOB_ID, ENV_BLOB)
    )


def test_tao_dataservices_exact_command_with_options():
    spec = make_spec(network_arch="tao-dataservices", model_path="/models/llm",
                     server_options={"idle_timeout_minutes": "30", "disable_auto_deletion": True})
    assert inner_command(spec, JOB_ID) == (
        "umask 0 && python -m nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server "
        "--port 8080 --job '{\"job_id\":\"%s\",\"neural_network_name\":\"tao-dataservices\","
        "\"specs\":{\"model_path\":\"/models/llm\"}}' --docker_env_vars '%s' "
        "--disable_auto_deletion --idle_timeout_minutes 30" % (JOB_ID, ENV_BLOB)
    )


def test_cosmos_predict_hf_model_maps_to_registered_key():
    spec = make_spec(network_arch="cosmos-predict2.5", model_path="hf_model://nvidia/Cosmos-Predict2.5-2B")
    assert inner_command(spec, JOB_ID) == (
        "umask 0 && cosmos_predict inference_microservice start --model base-2b "
        "--output-dir /tmp/cosmos-predict2.5-output --port 8080"
    )
    spec = make_spec(network_arch="cosmos-predict2.5", model_path="hf_model://nvidia/x", model_key="base-14b",
                     server_options={"disable_guardrails": True, "idle_timeout_minutes": 2.5})
    assert inner_command(spec, JOB_ID).endswith(
        "--model base-14b --output-dir /tmp/cosmos-predict2.5-output --port 8080 "
        "--disable-guardrails --idle-timeout-minutes 2.5")


def test_cosmos_predict_local_path_uses_checkpoint_path_and_no_tao_env():
    spec = make_spec(network_arch="cosmos-predict2.5", model_path="/ckpt/predict 2.5")
    assert inner_command(spec, JOB_ID) == (
        "umask 0 && cosmos_predict inference_microservice start --checkpoint-path '/ckpt/predict 2.5' "
        "--output-dir /tmp/cosmos-predict2.5-output --port 8080"
    )
    assert env_payload(spec, JOB_ID) == {}
    assert "--job" not in inner_command(spec, JOB_ID)


@pytest.mark.parametrize("platform, backend", [("local-docker", "local-docker"), ("slurm", "slurm")])
def test_execution_backend_per_platform(platform, backend):
    spec = make_spec()
    spec.platform = platform  # each driver says which backend the server is told
    payload = env_payload(spec, JOB_ID)
    assert payload == {"TAO_EXECUTION_BACKEND": backend, "TAO_API_JOB_ID": JOB_ID, "CLOUD_BASED": "False"}
    assert "TAO_LOGGING_SERVER_URL" not in payload and "TAO_ADMIN_KEY" not in payload


def test_server_option_unknown_or_mistyped_is_refused():
    with pytest.raises(TaoInferenceError, match="valid: disable_auto_deletion, idle_timeout_minutes"):
        make_spec(server_options={"guardrails": True})
    with pytest.raises(TaoInferenceError, match="type int"):
        make_spec(server_options={"idle_timeout_minutes": "soon"})


NASTY_PATHS = [
    "/models/it's here",
    "/models/with space/and\"quote",
    "/models/$(touch /tmp/pwned)/`id`",
    "/models/a;rm -rf /;b",
    "/models/back\\slash & ampersand | pipe > redirect",
    "/models/ünïcödé/\u65e5\u672c",
]

RECORDER = """#!/bin/sh
exec "%s" -c 'import json, os, sys; json.dump(sys.argv, open(os.environ["RECORD"], "w"))' "$0" "$@"
"""


@pytest.fixture
def recorder(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    import sys

    for name in ("cosmos-rl-inference-microservice", "cosmos_predict", "python"):
        path = bindir / name
        path.write_text(RECORDER % sys.executable)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)

    def run(command):
        record = tmp_path / "argv.json"
        env = {"PATH": "%s:/usr/bin:/bin" % bindir, "RECORD": str(record)}
        subprocess.run(["/bin/sh", "-c", command], env=env, check=True, timeout=30)
        return json.loads(record.read_text())[2:]  # drop "-c" and $0

    return run


@pytest.mark.parametrize("model_path", NASTY_PATHS)
@pytest.mark.parametrize("arch", ["cosmos-rl", "tao-dataservices"])
def test_sh_c_delivers_the_exact_json(recorder, arch, model_path):
    spec = make_spec(network_arch=arch, model_path=model_path)
    argv = recorder(inner_command(spec, JOB_ID))
    job = argv[argv.index("--job") + 1]
    env = argv[argv.index("--docker_env_vars") + 1]
    assert json.loads(job) == job_payload(spec, JOB_ID)
    assert json.loads(job)["specs"]["model_path"] == model_path
    # cosmos-rl parses with ast.literal_eval: it must read the same values.
    assert ast.literal_eval(job) == job_payload(spec, JOB_ID)
    assert ast.literal_eval(env) == env_payload(spec, JOB_ID)
    assert not os.path.exists("/tmp/pwned")


@pytest.mark.parametrize("model_path", NASTY_PATHS)
def test_sh_c_delivers_the_exact_checkpoint_path(recorder, model_path):
    spec = make_spec(network_arch="cosmos-predict2.5", model_path=model_path)
    argv = recorder(inner_command(spec, JOB_ID))
    assert argv[:3] == ["inference_microservice", "start", "--checkpoint-path"]
    assert argv[3] == model_path


def test_container_env_keeps_secrets_apart_and_out_of_the_command():
    canary = "hf_CANARY_0123456789"
    environ = {"HF_TOKEN": canary}
    spec = make_spec(environ=environ, env={"LOG_LEVEL": "debug"})
    assert spec.secret_env == ("HF_TOKEN",)
    plain, secret = container_env(spec, JOB_ID, environ)
    assert secret == {"HF_TOKEN": canary}
    assert canary not in json.dumps(plain)
    assert plain["LOG_LEVEL"] == "debug" and plain["TAO_API_JOB_ID"] == JOB_ID
    assert canary not in inner_command(spec, JOB_ID)
    assert canary not in json.dumps(spec.as_dict()) and canary not in spec.fingerprint()
