"""The error raised where a meta-batch of tasks cannot run batched."""

from __future__ import annotations

__all__ = ["BatchingError"]


class BatchingError(ValueError):
    """``tasks=`` was asked of something that cannot run batched; the message says why and what to do."""
