"""Slurm: the exact batch script per runtime, and how secrets reach sbatch."""

import os
import shlex
import stat
import subprocess

import pytest

from ansible_collections.tao.inference.plugins.module_utils.command import container_env, inner_command
from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.platforms.slurm import (
    batch_script, pyxis_image, secret_lines, submit_prologue,
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
echo TAO_NODE_PORT=8080
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
export APPTAINERENV_HF_TOKEN="$HF_TOKEN"
echo TAO_NODE_PORT=8080
apptainer exec \
  --cleanenv \
  --nv \
  --bind /data/ckpt:/models/x:ro \
  --env CLOUD_BASED=False,LOG_LEVEL=debug,TAO_API_JOB_ID=0f8c2e4a-1b2c-4d3e-8f90-123456789abc,TAO_EXECUTION_BACKEND=slurm \
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
cleanup() {{
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
echo TAO_NODE_PORT=$port
wait "$run"
'''


def expected(template):
    """The pinned text with the inner command (pinned in test_command.py) filled in."""
    spec = make_spec(environ={"HF_TOKEN": SECRET}, network_arch="cosmos-rl", model_path="/models/x", platform="slurm",
                     slurm_login_host="login", num_gpus=2)
    return template.format(INNER=shlex.quote(inner_command(spec, JOB_ID)))


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


def test_submit_prologue_exports_secrets_from_stdin_only(tmp_path):
    """Run the remote prologue with a fake sbatch: the secret reaches its
    environment, the script reaches its stdin intact, and no argv holds it."""
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$*" > "$OUT/argv"\nenv > "$OUT/env"\npwd > "$OUT/cwd"\n'
                    'cat > "$OUT/script"\necho 42\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    secrets = {"HF_TOKEN": "hf_a b$c'\"d\\e", "WANDB_API_KEY": "w=1=2"}
    script = "#!/bin/bash\necho hello\n"
    env = {"PATH": "%s:/usr/bin:/bin" % fake.parent, "OUT": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(["sh", "-c", str(submit_prologue(secrets))], input=(secret_lines(secrets) + script).encode(),
                         env=env, cwd=str(tmp_path), capture_output=True, check=True)
    assert out.stdout.strip() == b"42"
    assert (tmp_path / "script").read_text() == script
    exported = (tmp_path / "env").read_text()
    assert "HF_TOKEN=%s\n" % secrets["HF_TOKEN"] in exported and "WANDB_API_KEY=w=1=2\n" in exported
    argv = (tmp_path / "argv").read_text()
    assert argv.strip() == "--parsable --export=ALL"
    for value in secrets.values():
        assert value not in str(submit_prologue(secrets))
    assert (tmp_path / "cwd").read_text().strip() == os.path.join(str(tmp_path), ".tao-inference")
