"""Errors the loader reports, each tied to the gRPC status code a client sees."""

from __future__ import annotations

import grpc


class LoaderError(Exception):
    """Base class: a refusal with a message a person can act on."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class BadRequest(LoaderError):
    """The request is malformed, or a path leaves the models root."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LoaderError):
    """The artefact or its bundle does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class VerificationFailed(LoaderError):
    """The signature, transparency log or identity policy check failed."""

    code = grpc.StatusCode.PERMISSION_DENIED


class LimitExceeded(LoaderError):
    """An input or the confined child went past a size, memory, CPU or time limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnpicklingFailed(LoaderError):
    """The verified artefact could not be unpickled or converted in the confined child."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    # Set when the verified bytes are kept for Serve (an EXECUTION_AUTO load): sent to the caller
    # as the trailing metadata `loader.contract.SANDBOX_TICKET_METADATA`.
    sandbox_ticket: str = ""
