"""The local development environment: a real control plane, Redis, and the processes on top.

Used by the tests, by `beatkeeper dev up` and by `make demo`; never by the
operator running in a cluster.
"""
