"""Reference TAO inference microservice (the "emulator").

A small, standard-library-only HTTP server that stands in for NVIDIA's TAO
inference containers (cosmos-rl, cosmos-predict2.5 and tao-dataservices) in
tests and in the demo.  It mirrors the real servers' routes, status codes and
``error.type`` / ``reason`` strings (see CONTRACT sections 5, 6 and 8), but it
loads no model: every answer says plainly that it comes from the reference
microservice and is deterministic for the same input.

Command lines (exactly as the collection builds them, behind ``sh -c "umask 0 && ..."``)::

    cosmos-rl-inference-microservice --job JOB --docker_env_vars ENV
        [--port 8080] [--idle_timeout_minutes N] [--disable_auto_deletion]
    cosmos_predict inference_microservice start (--checkpoint-path PATH | --model KEY)
        --output-dir DIR [--port 8080] [--idle-timeout-minutes F]
        [--context-parallel-size N] [--disable-guardrails]
        [--offload-guardrail-models] [--offload-diffusion-model]
    python -m nvidia_tao_core.microservices.handlers.huggingface_inference_microservice_server
        --port 8080 --job JOB --docker_env_vars ENV
        [--idle_timeout_minutes N] [--disable_auto_deletion]

``python -m tao_emulator {cosmos-rl,cosmos-predict2.5,tao-dataservices} ARGS...`` runs
the same three by flavor name.

``JOB`` is ``{"job_id": ..., "specs": {"model_path": ...}, "neural_network_name": ...}``.
cosmos-rl parses both blobs with ``ast.literal_eval`` (so JSON ``true/false/null``
are rejected, like the real server); tao-dataservices tries ``json.loads`` first.
A malformed blob, or a job without ``job_id`` or ``specs.model_path``, prints an
error to stderr and exits with status 2.

Environment variables (all optional):

``TAO_EMULATOR_STARTUP_SECONDS`` (default 0)
    Delay before the socket listens; connections are refused meanwhile.
``TAO_EMULATOR_LOAD_SECONDS`` (default 1.0)
    Time spent in the "loading" state once the socket listens.
``TAO_EMULATOR_LOAD_FAIL`` (default unset)
    When set to a message, the model load fails after the load time.  The
    process keeps running and prints ``ERROR: model load failed: <message>``
    to stderr; HTTP bodies keep the real server's generic
    "Model failed to load: Model loading failed".
``TAO_EMULATOR_RESPONSE_MS`` (default 0)
    Extra latency, in milliseconds, added to every successful chat answer.
``TAO_EMULATOR_HOST`` (default ``0.0.0.0``, like the real server)
    Address to bind; tests set ``127.0.0.1``.

A local absolute model path that does not exist makes the load fail the same
way (log: ``model path not found: <path>``).  ``hf_model://org/model`` and
registered model keys always load; nothing is downloaded.

Routes:

``GET /api/v1/health/readiness``
    200 ``{"status": "ready", ...}``; 503 ``{"status": "not_ready", "reason":
    "model_loading" | "model_load_failed", "message": ...}``.
``GET /api/v1/health/liveness``
    Always 200; ``progress.stage`` is ``loading_model``, ``ready`` or ``error``.
``GET /api/v1/status``
    200 with ``job_id``, ``network_arch``, ``model_path``, ``state``, the
    non-secret environment it was given and ``hf_token_set``.  Secret values
    (``HF_TOKEN``, ``WANDB_API_KEY``, ``CLEARML_API_ACCESS_KEY``,
    ``CLEARML_API_SECRET_KEY``, ``TAO_API_KEY``, ``TAO_USER_KEY``...) are never
    printed nor returned.
``GET /emulator/stats``
    200 ``{"requests": n, "in_flight": n, "max_in_flight": n}``, counting
    ``POST /v1/chat/completions`` requests.
``POST /v1/chat/completions``
    OpenAI-style chat completion: 200 ``chat.completion`` (no ``usage``);
    202 ``model_loading``; 503 ``model_load_error``; 400 ``invalid_request``;
    500 ``internal_error``.

Anything else answers 404 (or 405 for a known route with another method) as JSON.
"""

__version__ = "1.0.0"

# The three kinds of TAO inference container this package can stand in for.
COSMOS_RL = "cosmos-rl"
COSMOS_PREDICT = "cosmos-predict2.5"
TAO_DATASERVICES = "tao-dataservices"
