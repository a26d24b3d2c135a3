"""Exceptions a task can raise to steer its run, and the ones the built-ins raise."""

from __future__ import annotations


class PermanentError(Exception):
    """Fail the run now, without the retries its policy would allow.

    Raise it (or a subclass) from a task when trying again cannot help, such as
    for a malformed request. The run is recorded `Failed` with the exception's
    class name as the reason.
    """


class HostRefused(PermanentError):
    """`beatkeeper.http` refused a link-local or cloud-metadata address."""


class InvalidRequest(PermanentError):
    """`beatkeeper.http` was called with arguments that can never work."""


class UnexpectedStatus(Exception):
    """`beatkeeper.http` got a status outside the expected ones; retried by policy."""
