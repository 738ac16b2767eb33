"""Errors raised across the core library's layers, in a module of their own so that a
low-level module (a backbone's weight loader, the ONNX sidecar reader) can raise them
without importing what builds the whole model."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit what was asked of it."""
