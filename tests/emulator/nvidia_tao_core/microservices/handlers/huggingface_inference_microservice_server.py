"""Reference microservice stand-in for tao-core's HuggingFace inference server.

``python -m nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server
--port 8080 --job JOB --docker_env_vars ENV`` runs :func:`tao_emulator.cli.tao_dataservices_main`.
"""

import sys

from tao_emulator.cli import tao_dataservices_main

if __name__ == "__main__":
    sys.exit(tao_dataservices_main())
