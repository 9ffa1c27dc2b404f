"""The generated catalog matches the data files, and every arch is complete."""

import os
import subprocess
import sys

from ansible_collections.tao.inference.plugins.module_utils import catalog

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


def test_generated_catalog_is_fresh():
    script = os.path.join(ROOT, "scripts", "gen-catalog.py")
    result = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_every_arch_has_a_config_constraints_and_an_image():
    assert catalog.NETWORK_ARCHS == ("cosmos-predict2.5", "cosmos-rl", "tao-dataservices")
    for arch in catalog.NETWORK_ARCHS:
        assert arch in catalog.CONFIGS
        assert arch in catalog.REQUEST["network_arch_constraints"]
        key = catalog.CONFIGS[arch]["api_params"]["image"]
        assert key in catalog.SERVICE["image_mapping"]


def test_every_platform_has_an_execution_backend():
    from ansible_collections.tao.inference.plugins.module_utils.platforms import drivers as platforms

    backends = dict((name, platforms.driver_class(name).EXECUTION_BACKEND) for name in platforms.names())
    assert backends == {"local-docker": "local-docker", "slurm": "slurm", "kubernetes": "local-k8s",
                        "brev": "local-docker", "lepton": "lepton"}
