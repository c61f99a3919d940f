"""Errors the data layer raises; each carries one message naming the field or object."""


class FlowrunsError(Exception):
    """Base of the errors a caller is meant to handle. One message argument, JSON-safe."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ObjectNotFoundError(FlowrunsError):
    """An id or name that matches no row."""


class ValidationError(FlowrunsError):
    """A request body or value that is refused; nothing was written."""


class FlowRunGraphTooLarge(FlowrunsError):
    """The graph has more nodes than the configured maximum."""


class InvalidRequestError(FlowrunsError):
    """A valid request the worker will not carry out as asked (a read over its time bound)."""


class PoisonMessageError(FlowrunsError):
    """A message whose worker process died again and again while running it: parked, not run again."""
