"""The local development environment: a real control plane, a node, Redis, the images, and
the processes of the system on top.

Used by the tests, the benchmarks, `beatkeeper dev up` and `make demo`; never by a
production module (an import-linter contract checks it), and not in any image.
"""
