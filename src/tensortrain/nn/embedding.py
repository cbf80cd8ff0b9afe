"""``TTEmbedding``: an embedding table stored as a TT-matrix (TT-Rec, Yin et al. 2021).

Symbols: ``V`` vocabulary size, ``V'`` padded vocabulary (product of the row modes), ``D`` embedding dim,
``d`` number of cores, ``r_k`` TT-ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import nn

from ..errors import ShapeError
from ..shapes import max_tt_ranks, svd_tt_ranks
from ..tensor_train import CORE_DTYPES, TensorTrain, dtensor_hint, is_dtensor
from . import functional as F
from .base import TTModule, assign_cores_, cast_back, check_factory_dtype, svd_ready
from .dims import check_features, check_rank_form, resolve_embedding_dims
from .init import tt_normal_

__all__ = ["TTEmbedding"]

EmbeddingInit = Literal["normal", "glorot"]
_EMBEDDING_INITS: tuple[str, ...] = get_args(EmbeddingInit)


class TTEmbedding(TTModule):
    r"""An embedding table ``V x D`` stored as a TT-matrix; a lookup never builds the table (TT-Rec).

    Row ``i`` is unravelled into modes ``(i_1, ..., i_d)`` of ``voc_dims`` and computed as the product of
    the core slices ``G_k[:, i_k]``. When ``V`` does not factor into balanced modes the table is padded to
    ``V' = prod(voc_dims) >= V`` rows; the padding rows are never looked up (indices ``>= V`` are errors).

    ``padding_idx`` follows ``nn.Embedding`` where it can: its output rows are zero and padding positions
    pass no gradient to the cores. What differs: the TT table itself has no zero row (rows share the cores),
    so :meth:`to_embedding` zeroes that row explicitly and ``from_embedding`` ignores its values.
    ``max_norm`` and ``scale_grad_by_freq`` are not supported; gradients of the cores are dense.

    Args:
        num_embeddings: the vocabulary size ``V``.
        embedding_dim: the size ``D`` of each embedding vector.
        tt_rank: an int for every inner bond or the full ``d + 1`` tuple (``d - 1`` inner ranks only with dims
            given, as for :class:`TTLinear`); clipped to the largest useful ranks,
            as TT-SVD clips them (:func:`tensortrain.svd_tt_ranks`).
        voc_dims: row modes, multiplying to at least ``V`` (default: balanced, padded when needed).
        emb_dims: column modes, multiplying to ``D`` (default: factored automatically).
        padding_idx: an index whose output is always zero (negative values count from the end).
        init: ``"normal"`` (entries of variance 1, ``nn.Embedding``'s ``N(0, 1)``) or ``"glorot"``
            (variance ``2 / (V + D)``).
        device: the device of the parameters.
        dtype: the dtype of the parameters.

    Raises:
        ShapeError: bad dims or ranks below 1.
        ValueError: an unknown ``init`` or a ``padding_idx`` outside the vocabulary.

    Shape:
        - Input: ``(*)``, integer indices.
        - Output: ``(*, embedding_dim)``.

    Example:
        >>> import torch, tensortrain as tt
        >>> emb = tt.nn.TTEmbedding(1000, 64, tt_rank=8)
        >>> emb(torch.tensor([[1, 2, 3], [4, 5, 6]])).shape
        torch.Size([2, 3, 64])
    """

    num_embeddings: int
    embedding_dim: int
    voc_dims: tuple[int, ...]
    emb_dims: tuple[int, ...]
    padding_idx: int | None

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        tt_rank: int | Sequence[int],
        voc_dims: Sequence[int] | None = None,
        emb_dims: Sequence[int] | None = None,
        padding_idx: int | None = None,
        init: EmbeddingInit = "normal",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_factory_dtype(dtype, "TTEmbedding")
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_embeddings = check_features("num_embeddings", num_embeddings)
        self.embedding_dim = check_features("embedding_dim", embedding_dim)
        self.voc_dims, self.emb_dims = resolve_embedding_dims(
            num_embeddings, embedding_dim, voc_dims, emb_dims
        )
        auto = voc_dims is None and emb_dims is None
        dims = {"voc_dims": self.voc_dims, "emb_dims": self.emb_dims}
        tt_rank = check_rank_form(tt_rank, dims, auto, "TTEmbedding", "tt_rank")
        if init not in _EMBEDDING_INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, _EMBEDDING_INITS))}; got {init!r}")
        self.init = init
        self.padding_idx = F.padding_index("TTEmbedding", padding_idx, self.num_embeddings)
        d = len(self.voc_dims)
        ranks = svd_tt_ranks(tt_rank, [m * n for m, n in zip(self.voc_dims, self.emb_dims, strict=True)])
        self.cores = nn.ParameterList(
            nn.Parameter(
                torch.empty(ranks[k], self.voc_dims[k], self.emb_dims[k], ranks[k + 1], **factory_kwargs)
            )
            for k in range(d)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the cores so the table's entries have the ``init`` scheme's variance."""
        v, dim = self.num_embeddings, self.embedding_dim
        tt_normal_(list(self.cores), 1.0 if self.init == "normal" else 2.0 / (v + dim))

    def _sizes(self) -> dict[str, int]:
        """``{"num_embeddings": ..., "embedding_dim": ...}`` (see :meth:`TTModule._sizes`)."""
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}

    @property
    def weight(self) -> TensorTrain:
        """The table as a TT-matrix of shape ``V' x D`` (``V' >= V`` rows; a view of :attr:`cores`, as the
        forward uses them: pruned cores masked)."""
        return TensorTrain(self._current_cores())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Look up rows through :func:`tensortrain.nn.functional.tt_embedding`."""
        cores = self._current_cores()
        if cores[0].dtype not in CORE_DTYPES:  # (a layer cast to float8 by Module.to: said under its name)
            F.check_core_dtype("TTEmbedding", cores)
        return F._embedding(input, TensorTrain(cores), self.padding_idx, self.num_embeddings, self._cache)

    # ------------------------------------------------------------------------------------- conversions
    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        max_tt_rank: int | Sequence[int] | None = None,
        epsilon: float | None = None,
        voc_dims: Sequence[int] | None = None,
        emb_dims: Sequence[int] | None = None,
    ) -> TTEmbedding:
        """A TTEmbedding whose table is the TT-SVD of ``embedding.weight`` (zero-padded to ``V'`` rows).

        Args:
            embedding: an ``nn.Embedding`` (its device, dtype and ``padding_idx`` are kept).
            max_tt_rank: cap on the TT-ranks (an int, or one per bond as ``tt_rank`` in the constructor). With
                neither this nor ``epsilon`` the decomposition is exact.
            epsilon: relative Frobenius error target of the (padded) table.
            voc_dims: row modes (product ``>= V``); default: chosen automatically.
            emb_dims: column modes (product ``== D``); default: chosen automatically.

        Returns:
            A new TTEmbedding.

        Raises:
            TypeError: ``embedding`` is not an ``nn.Embedding``.
            ValueError: the embedding uses ``max_norm``, ``scale_grad_by_freq`` or ``sparse=True`` (the
                cores' gradients are dense, so an optimizer for sparse gradients such as ``SparseAdam``
                would fail on them).
            ShapeError: an empty table (a size of 0), or dims that do not fit the sizes.

        Complexity: the TT-SVD of the ``V' x D`` table.

        Example:
            >>> import torch, tensortrain as tt
            >>> emb = tt.nn.TTEmbedding.from_embedding(torch.nn.Embedding(1000, 64), max_tt_rank=16)
        """
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(
                f"TTEmbedding.from_embedding expects nn.Embedding, got {type(embedding).__name__}"
            )
        if embedding.max_norm is not None or embedding.scale_grad_by_freq:
            raise ValueError(
                "TTEmbedding.from_embedding: max_norm and scale_grad_by_freq are not supported "
                f"(got max_norm={embedding.max_norm}, scale_grad_by_freq={embedding.scale_grad_by_freq})"
            )
        if embedding.sparse:  # refused rather than converted: a training loop built on sparse grads breaks
            raise ValueError(
                "TTEmbedding.from_embedding: sparse=True is not supported: the TT cores' gradients are "
                "dense (an optimizer for sparse gradients, e.g. SparseAdam, would fail); got sparse=True"
            )
        from ..decompositions import check_budget, to_tt_matrix

        v, dim = embedding.num_embeddings, embedding.embedding_dim
        if tuple(embedding.weight.shape) != (v, dim):
            raise ValueError(
                f"TTEmbedding.from_embedding: the weight has shape {tuple(embedding.weight.shape)} but "
                f"num_embeddings={v}, embedding_dim={dim} (a weight replaced by hand?); set the sizes to the weight's"
            )
        if v < 1 or dim < 1:  # (legal in torch; no modes to factor it into)
            raise ShapeError(
                f"TTEmbedding.from_embedding: the nn.Embedding is empty (num_embeddings={v}, embedding_dim={dim}); "
                "a TT layer's sizes must be >= 1 (tt.compress keeps empty layers dense)"
            )
        voc, emb = resolve_embedding_dims(v, dim, voc_dims, emb_dims)
        table = embedding.weight.detach()
        if is_dtensor(table):  # (a sharded nn.Embedding: to_tt_matrix would name its own input)
            raise TypeError(dtensor_hint("TTEmbedding.from_embedding", "the weight"))
        modes = [m * n for m, n in zip(voc, emb, strict=True)]
        auto = voc_dims is None and emb_dims is None
        dims = {"voc_dims": voc, "emb_dims": emb}
        max_tt_rank = check_rank_form(max_tt_rank, dims, auto, "TTEmbedding.from_embedding", "max_tt_rank")
        check_budget(max_tt_rank, epsilon, modes, "TTEmbedding.from_embedding", table)
        if embedding.padding_idx is not None:
            table = table.clone()
            table[embedding.padding_idx] = 0  # its output is masked anyway: spend no rank on it
        table = torch.cat([table, table.new_zeros(math.prod(voc) - v, dim)])
        if max_tt_rank is None and epsilon is None:
            max_tt_rank = max(max_tt_ranks(modes))
        tt = F._check_tt_matrix(
            "TTEmbedding.from_embedding",
            to_tt_matrix(svd_ready(table), [list(voc), list(emb)], max_tt_rank=max_tt_rank, epsilon=epsilon),
        )
        tt = cast_back(tt, table.dtype, "TTEmbedding.from_embedding")
        layer = torch.nn.utils.skip_init(  # (every value is loaded: nothing drawn from the global generator)
            cls, v, dim, tt_rank=tt.tt_ranks, voc_dims=voc, emb_dims=emb, padding_idx=embedding.padding_idx,
            device=table.device, dtype=table.dtype,
        )  # fmt: skip
        layer.load_tt_(tt)
        layer.requires_grad_(embedding.weight.requires_grad)  # a frozen table stays frozen
        return layer

    def load_tt_(self, tt_matrix: TensorTrain) -> TTEmbedding:
        """Load a TT-matrix of shape ``V' x D`` (dims ``voc_dims x emb_dims``) into this layer, in place.

        Ranks may differ from the current ones: the cores are then replaced by new parameters (create the
        optimizer afterwards). Values are cast to the layer's dtype and device.

        Raises:
            TypeError: not a TT-matrix.
            ShapeError: dims other than ``voc_dims x emb_dims``.
            ValueError: a core is pruned or parametrized (``prune.remove`` it first).
        """
        tt_matrix = F._check_tt_matrix("TTEmbedding.load_tt_", tt_matrix)
        rows, cols = tt_matrix.get_raw_shape()
        if (tuple(rows), tuple(cols)) != (self.voc_dims, self.emb_dims):
            raise ShapeError(
                f"TTEmbedding.load_tt_: the TT-matrix has dims {tuple(rows)} x {tuple(cols)}, expected "
                f"{self.voc_dims} x {self.emb_dims}"
            )
        assign_cores_(self.cores, tt_matrix.tt_cores, "TTEmbedding.load_tt_")
        # cores of new ranks are new Parameters: merges cached from the old ones would keep them alive
        self._cache.clear()
        return self

    def to_embedding(self) -> nn.Embedding:
        """The exact dense equivalent: an ``nn.Embedding`` with the first ``V`` rows (padding row zero).

        Complexity: O(V d r^2 D); memory O(V D).
        """
        like = self.cores[0]
        # the lookup itself, not self(...): forward hooks and overrides stay out of the table
        with torch.no_grad():
            every = torch.arange(self.num_embeddings, device=like.device)
            table = F._embedding(every, self.weight, self.padding_idx, self.num_embeddings, None)
        dense = nn.Embedding(
            self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx, _weight=table.clone(),
            device=like.device, dtype=like.dtype,
        )  # fmt: skip
        # a frozen layer stays frozen, as from_embedding keeps it
        return dense.requires_grad_(any(c.requires_grad for c in self.cores))

    # ------------------------------------------------------------------------------------ bookkeeping
    def compression_factor(self) -> float:
        """Dense table size over TT size: ``V * D / core parameters``."""
        return self.num_embeddings * self.embedding_dim / self.num_tt_parameters()

    def extra_repr(self) -> str:
        s = (
            f"{self.num_embeddings}, {self.embedding_dim}, voc_dims={self.voc_dims}, emb_dims={self.emb_dims}, "
            f"tt_ranks={self.tt_ranks}"
        )
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s + f", params={self.num_tt_parameters():,}, compression={self.compression_factor():,.1f}x"
