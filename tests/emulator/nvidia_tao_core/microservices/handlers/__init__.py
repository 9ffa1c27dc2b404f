"""Stand-in for ``nvidia_tao_core.microservices.handlers`` (tao-inference reference microservice)."""
