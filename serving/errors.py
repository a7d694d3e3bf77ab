"""A small error tree: each error knows its HTTP status; one handler turns them into JSON."""

from __future__ import annotations


class AisleError(Exception):
    status = 500
    error = "internal"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class InvalidInput(AisleError):
    status = 422
    error = "invalid_input"


class NotFound(AisleError):
    status = 404
    error = "not_found"


class PayloadTooLarge(AisleError):
    status = 413
    error = "payload_too_large"


class UnsupportedMediaType(AisleError):
    status = 415
    error = "unsupported_media_type"


class Unauthorized(AisleError):
    status = 401
    error = "unauthorized"


class Forbidden(AisleError):
    status = 403
    error = "forbidden"


class BrokerUnavailable(AisleError):
    status = 503
    error = "broker_unavailable"

    def __init__(self, detail: str, retry_after_s: int = 2) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})


class Conflict(AisleError):
    status = 409
    error = "conflict"


class StoreUnavailable(AisleError):
    status = 503
    error = "store_unavailable"

    def __init__(self, detail: str, retry_after_s: int = 2) -> None:
        super().__init__(detail, {"Retry-After": str(retry_after_s)})
