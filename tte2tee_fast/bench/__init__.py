"""The library behind ``tte2tee bench``: solver error and speed of the samplers, the kernels and
the denoiser. (The pytest-benchmark suites in ``benchmarks/`` call it.) Import the submodules
directly."""
