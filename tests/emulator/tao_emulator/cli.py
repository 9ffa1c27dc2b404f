"""The three container command lines the reference microservice accepts.

* :func:`cosmos_rl_main` -- ``cosmos-rl-inference-microservice --job ... --docker_env_vars ...``
  (blobs parsed with ``ast.literal_eval``, like cosmos-rl's own server);
* :func:`cosmos_predict_main` -- ``cosmos_predict inference_microservice start ...``
  (kebab-case flags like the real tyro CLI, which has no ``--job``);
* :func:`tao_dataservices_main` -- the tao-core HuggingFace server module
  (blobs parsed with ``json.loads``, falling back to ``ast.literal_eval``).

Usage errors print a message to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional

from . import COSMOS_PREDICT, COSMOS_RL, TAO_DATASERVICES
from .server import serve
from .service import EventLog, JobConfig, Settings

COSMOS_RL_ENTRYPOINT = "cosmos-rl-inference-microservice"
COSMOS_PREDICT_ENTRYPOINT = "cosmos_predict"
TAO_DATASERVICES_ENTRYPOINT = "nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server"


def _literal_blob(value: str) -> Any:
    """Parse a blob the way cosmos-rl does (``ast.literal_eval``)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(
            f"not a Python literal ({exc.__class__.__name__}: {exc}); "
            "JSON true/false/null are not accepted by ast.literal_eval"
        ) from None


def _json_or_literal_blob(value: str) -> Any:
    """Parse a blob the way tao-core does (``json.loads``, then ``ast.literal_eval``)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"Failed to parse job argument: {exc}") from None


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _settings_or_exit(parser: argparse.ArgumentParser) -> Settings:
    try:
        return Settings.from_env(os.environ)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _job_parser(prog: str, description: str, blob: Callable[[str], Any]) -> argparse.ArgumentParser:
    """The argparse front end shared by cosmos-rl and tao-dataservices."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port", type=_port, default=8080)
    parser.add_argument("--job", type=blob, required=True, help="job payload with job_id and specs.model_path")
    parser.add_argument("--docker_env_vars", type=blob, default=None, help="environment payload")
    parser.add_argument("--idle_timeout_minutes", type=int, default=30,
                        help="minutes of inactivity before auto-deletion (default: 30; never acted on)")
    parser.add_argument("--disable_auto_deletion", action="store_true", help="disable automatic deletion")
    return parser


def _job_config(parser: argparse.ArgumentParser, args: argparse.Namespace, flavor: str, entrypoint: str) -> JobConfig:
    """Check the job and env payloads; a bad one is a usage error (exit 2)."""
    job = args.job
    if not isinstance(job, dict):
        parser.error(f"--job must be a dict payload, got {type(job).__name__}")
    job_id = job.get("job_id")
    if not isinstance(job_id, str) or not job_id:
        parser.error("--job payload has no 'job_id'")
    specs = job.get("specs")
    if not isinstance(specs, dict):
        specs = {}
    model_path = specs.get("model_path")
    if not isinstance(model_path, str) or not model_path:
        parser.error("--job payload has no 'specs.model_path'")
    env = args.docker_env_vars if args.docker_env_vars is not None else {}
    if not isinstance(env, dict):
        parser.error(f"--docker_env_vars must be a dict payload, got {type(env).__name__}")
    arch = job.get("neural_network_name")
    hf_model = specs.get("hf_model")
    return JobConfig(
        flavor=flavor,
        entrypoint=entrypoint,
        model_path=model_path,
        job_id=job_id,
        network_arch=arch if isinstance(arch, str) and arch else flavor,
        served_model=hf_model if isinstance(hf_model, str) and hf_model else model_path,
        port=args.port,
        docker_env_vars=env,
        idle_timeout_minutes=args.idle_timeout_minutes,
        auto_deletion_enabled=not args.disable_auto_deletion,
    )


def _run(parser: argparse.ArgumentParser, job: JobConfig) -> int:
    return serve(job, _settings_or_exit(parser))


def cosmos_rl_main(argv: Optional[List[str]] = None) -> int:
    """``cosmos-rl-inference-microservice``: the cosmos-rl container's server."""
    parser = _job_parser(
        COSMOS_RL_ENTRYPOINT,
        "TAO Cosmos Model Server (tao-inference reference microservice)",
        _literal_blob,
    )
    args = parser.parse_args(argv)
    return _run(parser, _job_config(parser, args, COSMOS_RL, COSMOS_RL_ENTRYPOINT))


def tao_dataservices_main(argv: Optional[List[str]] = None) -> int:
    """``python -m nvidia_tao_core...huggingface_inference_microservice_server``."""
    parser = _job_parser(
        "huggingface_inference_microservice_server",
        "HuggingFace Inference Microservice Server (tao-inference reference microservice)",
        _json_or_literal_blob,
    )
    args = parser.parse_args(argv)
    return _run(parser, _job_config(parser, args, TAO_DATASERVICES, TAO_DATASERVICES_ENTRYPOINT))


def _predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COSMOS_PREDICT_ENTRYPOINT,
        description="Cosmos-Predict2.5 (tao-inference reference microservice)",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{inference_microservice}")
    service = commands.add_parser("inference_microservice", allow_abbrev=False, help="inference microservice")
    actions = service.add_subparsers(dest="action", required=True, metavar="{start}")
    start = actions.add_parser("start", allow_abbrev=False, help="start the inference microservice")
    source = start.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint-path", help="local checkpoint folder")
    source.add_argument("--model", help="registered model key, e.g. base-2b")
    start.add_argument("--output-dir", required=True, help="folder for generated videos")
    start.add_argument("--port", type=_port, default=8080)
    start.add_argument("--idle-timeout-minutes", type=float, default=None)
    start.add_argument("--context-parallel-size", type=int, default=1)
    for flag in ("--disable-guardrails", "--offload-guardrail-models", "--offload-diffusion-model"):
        start.add_argument(flag, action=argparse.BooleanOptionalAction, default=False)
    return parser


def cosmos_predict_main(argv: Optional[List[str]] = None) -> int:
    """``cosmos_predict inference_microservice start ...``: the cosmos-predict2.5 server."""
    parser = _predict_parser()
    args = parser.parse_args(argv)
    if args.context_parallel_size < 1:
        parser.error(f"--context-parallel-size must be >= 1, got {args.context_parallel_size}")
    model_path = args.checkpoint_path or args.model
    options: Dict[str, Any] = {
        "output_dir": args.output_dir,
        "context_parallel_size": args.context_parallel_size,
        "disable_guardrails": args.disable_guardrails,
        "offload_guardrail_models": args.offload_guardrail_models,
        "offload_diffusion_model": args.offload_diffusion_model,
        "model_source": "checkpoint_path" if args.checkpoint_path else "model",
    }
    job = JobConfig(
        flavor=COSMOS_PREDICT,
        entrypoint=COSMOS_PREDICT_ENTRYPOINT,
        model_path=model_path,
        job_id=os.environ.get("TAO_API_JOB_ID") or None,
        port=args.port,
        idle_timeout_minutes=args.idle_timeout_minutes,
        auto_deletion_enabled=args.idle_timeout_minutes is not None,
        options=options,
    )
    settings = _settings_or_exit(parser)
    log = EventLog()
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as exc:
        log.info(f"warning: cannot create output dir {args.output_dir}: {exc}")
    return serve(job, settings, log)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m tao_emulator FLAVOR ARGS...``: pick a command line by flavor name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mains = {COSMOS_RL: cosmos_rl_main, COSMOS_PREDICT: cosmos_predict_main, TAO_DATASERVICES: tao_dataservices_main}
    if not argv or argv[0] not in mains:
        sys.stderr.write(f"usage: python -m tao_emulator {{{','.join(mains)}}} ARGS...\n")
        return 2
    return mains[argv[0]](argv[1:])
