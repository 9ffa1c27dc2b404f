"""Stand-in for ``nvidia_tao_core.microservices`` (tao-inference reference microservice)."""
