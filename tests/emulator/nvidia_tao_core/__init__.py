"""Stand-in for NVIDIA's ``nvidia_tao_core`` package (tao-inference reference microservice).

Only the module path of the HuggingFace inference server exists, so that the
tao-dataservices container command line runs unchanged against the emulator.
"""
