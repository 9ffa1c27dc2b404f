"""Shared builders for the unit tests."""

from ansible_collections.tao.inference.plugins.module_utils.spec import build_spec

JOB_ID = "0f8c2e4a-1b2c-4d3e-8f90-123456789abc"


def make_spec(environ=None, **params):
    base = {"network_arch": "cosmos-rl", "model_path": "hf_model://nvidia/Cosmos-Reason1-7B",
            "platform": "local-docker", "num_gpus": 1}
    base.update(params)
    return build_spec(base, environ or {})
