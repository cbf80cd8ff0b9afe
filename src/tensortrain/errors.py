"""The library's exception types.

Every validation failure raises one of these (or a plain ``TypeError`` for a wrong kind of object) with a
message that says what was found, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = ["ShapeError"]


class ShapeError(ValueError):
    """Shapes, ranks, batch sizes, dtypes or devices of TT objects or dense operands disagree.

    A subclass of ``ValueError``, so ``except ValueError`` catches it too.

    Example:
        >>> import tensortrain as tt
        >>> try:
        ...     tt.TensorTrain([])
        ... except tt.ShapeError as e:
        ...     print("caught")
        caught
    """
