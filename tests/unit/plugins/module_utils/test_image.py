"""Image resolution: every rule of CONTRACT §2."""

import pytest

from ansible_collections.tao.inference.plugins.module_utils.errors import TaoInferenceError
from ansible_collections.tao.inference.plugins.module_utils.image import image_key, resolve_image

VERSIONS = {"images": {"tao_toolkit": {"cosmos_rl": "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl",
                                       "cosmos_predict": "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-predict",
                                       "data_services": "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-data-services"}}}


@pytest.mark.parametrize("arch, environ, override, expected", [
    ("cosmos-rl", {}, None, "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-rl"),
    # The seed-era mapping pointed at tao_toolkit.cosmos_predict_2_5, which never existed.
    ("cosmos-predict2.5", {}, None, "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-predict"),
    ("tao-dataservices", {}, None, "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-data-services"),
    # IMAGE_<KEY> overrides the mapping, as a URI or as a dotted key.
    ("cosmos-rl", {"IMAGE_COSMOS_RL": "registry.local/my/cosmos:dev"}, None, "registry.local/my/cosmos:dev"),
    ("cosmos-rl", {"IMAGE_COSMOS_RL": "tao_toolkit.data_services"}, None,
     "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-data-services"),
    ("tao-dataservices", {"IMAGE_TAO_DATASERVICES": "tao-inference-emulator:latest"}, None,
     "tao-inference-emulator:latest"),
    # Another key's override does not leak.
    ("tao-dataservices", {"IMAGE_COSMOS_RL": "x/y:z"}, None, "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-data-services"),
    # The option beats the environment.
    ("cosmos-rl", {"IMAGE_COSMOS_RL": "x/y:z"}, "mine:1", "mine:1"),
    ("cosmos-rl", {}, "tao_toolkit.cosmos_predict", "nvcr.io/nvidia/tao/tao-toolkit:7.0.0-cosmos-predict"),
])
def test_resolution_table(arch, environ, override, expected):
    image, _how = resolve_image(arch, environ, override=override, versions=VERSIONS)
    assert image == expected


def test_missing_config_or_empty_key_falls_back_to_cosmos_rl():
    assert image_key("brand-new-arch", configs={}) == "COSMOS_RL"
    assert image_key("x", configs={"x": {"api_params": {"image": ""}}}) == "COSMOS_RL"
    assert image_key("x", configs={"x": {"api_params": {}}}) == "COSMOS_RL"


def test_unknown_dotted_key_lists_known_keys():
    with pytest.raises(TaoInferenceError) as err:
        resolve_image("cosmos-rl", {"IMAGE_COSMOS_RL": "tao_toolkit.cosmos_predict_2_5"}, versions=VERSIONS)
    assert "tao_toolkit.cosmos_predict_2_5" in err.value.msg
    assert "tao_toolkit.cosmos_predict" in err.value.msg and "tao_toolkit.data_services" in err.value.msg
    assert "$IMAGE_COSMOS_RL" in err.value.msg


def test_key_without_mapping_entry_says_how_to_override():
    with pytest.raises(TaoInferenceError) as err:
        resolve_image("x", {}, configs={"x": {"api_params": {"image": "NEW_KEY"}}}, versions=VERSIONS)
    assert "IMAGE_NEW_KEY" in err.value.msg


def test_group_is_not_an_image():
    with pytest.raises(TaoInferenceError, match="group"):
        resolve_image("cosmos-rl", {}, override="tao_toolkit", versions=VERSIONS)
