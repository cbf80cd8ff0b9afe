"""The library's exception types.

Every validation failure raises one of these (or a plain ``TypeError`` for a wrong kind of object) with a
message that says what was found, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = ["ShapeError"]


def fx_hint(value: object) -> str:
    """What to do instead, when ``value`` is a ``torch.fx`` proxy (``symbolic_trace`` calls layers with them)."""
    import torch.fx  # (torch is imported by then: this runs only while building an error message)

    if not isinstance(value, torch.fx.Proxy):
        return ""
    return (
        " (torch.fx.symbolic_trace: TT layers and objects branch on shapes and dtypes, which fx proxies cannot "
        "answer; trace TT layers as leaf modules, with a Tracer whose is_leaf_module returns True for "
        "tensortrain.nn.TTLinear and TTEmbedding, or use torch.export.export)"
    )


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
