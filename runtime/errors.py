"""The one error a refused load raises; MLServer turns it into an HTTP 4xx/5xx with the reason."""

from __future__ import annotations

import grpc
from mlserver.errors import MLServerError

# How a loader refusal reaches the user of `POST /v2/repository/models/NAME/load`.
HTTP_STATUS_FOR = {
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ModelRefused(MLServerError):
    """The model was not loaded: verification, sandbox or validation refused it."""

    def __init__(self, msg: str, status_code: int = 400) -> None:
        super().__init__(msg, status_code)
