"""Spherical k-means in torch, and vocabulary groups from the unembedding.

Specialization scores compare distributions over *groups of vocabulary tokens*. The groups come from
clustering the unembedding: each token is represented by its column of ``W_U`` (a row of ``W_U.T``),
mean-centred over the vocabulary and scaled to unit norm, and tokens are clustered by cosine similarity.

Memory stays ``O((n_samples + n_clusters) · n_features)``: similarities are computed in row chunks, so
``K = 5000`` clusters over a 150k-token vocabulary never materializes a ``[vocab, K, d_model]`` tensor
nor even a full ``[vocab, K]`` similarity matrix.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from jaxtyping import Float, Int

__all__ = ["SphericalKMeans", "cluster_vocabulary"]

# Upper bound on the entries of one chunk of the [rows, clusters] similarity matrix.
_SIMILARITY_CHUNK_ELEMENTS = 1 << 24


def _as_float_matrix(X, device: torch.device | str | None, name: str = "X") -> Float[torch.Tensor, "n d"]:
    """``X`` as a 2-D floating tensor on ``device`` (float32 unless it already is a float tensor)."""
    X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_features]; got shape {tuple(X.shape)}.")
    if not X.is_floating_point():
        X = X.to(torch.float32)
    if device is not None:
        X = X.to(device)
    if not torch.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return X


def _unit_rows(X: Float[torch.Tensor, "n d"], name: str = "X") -> Float[torch.Tensor, "n d"]:
    """Rows of ``X`` scaled to unit Euclidean norm; zero rows have no direction and are rejected."""
    norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(
            f"{name} has {int((norms == 0).sum())} all-zero row(s); spherical k-means needs a direction "
            "for every sample. Remove them or add a small offset before clustering."
        )
    return X / norms


def _nearest_centers(
    X: Float[torch.Tensor, "n d"], centers: Float[torch.Tensor, "k d"], chunk_rows: int
) -> tuple[Int[torch.Tensor, " n"], Float[torch.Tensor, " n"]]:
    """Index and cosine similarity of the most similar center for every unit row of ``X``, in chunks."""
    labels = torch.empty(X.shape[0], dtype=torch.long, device=X.device)
    similarities = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for start in range(0, X.shape[0], chunk_rows):
        block = X[start : start + chunk_rows] @ centers.T
        similarities[start : start + chunk_rows], labels[start : start + chunk_rows] = block.max(dim=1)
    return labels, similarities


class SphericalKMeans:
    """K-means on the unit sphere: cosine-similarity assignment, centers = normalized member means.

    Configured like a scikit-learn estimator; inputs and fitted attributes are torch tensors.

    Args:
        n_clusters: number of clusters K.
        n_init: number of k-means++ initializations; the run with the lowest ``inertia_`` is kept.
        max_iter: maximum Lloyd iterations per run.
        tol: stop when no center moves by more than ``tol`` in cosine distance (``1 − cos``).
        random_state: seed of the initializations; equal seeds give equal results on a device.
        device: where to compute (``"cuda"`` for large vocabularies); default: the input's device.
        chunk_rows: rows per similarity chunk; default keeps each ``[chunk, K]`` block near 16M entries.

    Fitted attributes:
        cluster_centers_: unit-norm centers, ``[n_clusters, n_features]``.
        labels_: the center each sample is most similar to, ``[n_samples]`` (int64).
        inertia_: ``Σ_i (1 − cos(x_i, center of x_i))`` of the kept run.
        n_iter_: Lloyd iterations of the kept run.
        n_features_in_: number of features seen in ``fit``.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        n_init: int = 1,
        max_iter: int = 100,
        tol: float = 1e-6,
        random_state: int = 0,
        device: torch.device | str | None = None,
        chunk_rows: int | None = None,
    ):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.chunk_rows = chunk_rows

    def _validate_parameters(self, n_samples: int) -> None:
        if not isinstance(self.n_clusters, numbers.Integral) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive int; got {self.n_clusters!r}.")
        if self.n_clusters > n_samples:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of samples ({n_samples}).")
        if not isinstance(self.n_init, numbers.Integral) or self.n_init < 1:
            raise ValueError(f"n_init must be a positive int; got {self.n_init!r}.")
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive int; got {self.max_iter!r}.")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive int or None; got {self.chunk_rows!r}.")

    def _chunk_rows(self) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        return max(1, _SIMILARITY_CHUNK_ELEMENTS // self.n_clusters)

    def _init_centers(
        self, X: Float[torch.Tensor, "n d"], generator: torch.Generator
    ) -> Float[torch.Tensor, "k d"]:
        """Greedy k-means++ on the sphere.

        Each step draws ``2 + ln K`` candidates with probability ∝ cosine distance to the nearest chosen
        center (``1 − cos`` is half the squared chordal distance between unit vectors: D² sampling) and
        keeps the candidate that lowers the total distance most. Only ``[n, candidates]`` similarities
        are held at a time, never ``[n, K]``.
        """
        n_samples = X.shape[0]
        n_candidates = 2 + int(math.log(self.n_clusters))
        chosen = torch.empty(self.n_clusters, dtype=torch.long, device=X.device)
        chosen[0] = torch.randint(n_samples, (1,), generator=generator, device=X.device)
        closest_similarity = X @ X[chosen[0]]
        for k in range(1, self.n_clusters):
            distance = (1.0 - closest_similarity).clamp_min(0.0)
            if distance.sum() <= 0:  # every sample coincides with a chosen center: any other one will do
                distance = torch.ones_like(distance)
                distance[chosen[:k]] = 0.0
            candidates = torch.multinomial(distance, n_candidates, replacement=True, generator=generator)
            candidate_closest = X @ X[candidates].T
            torch.maximum(candidate_closest, closest_similarity[:, None], out=candidate_closest)
            best = torch.argmax(candidate_closest.sum(dim=0))  # = argmin of the total distance Σ(1 − cos)
            chosen[k] = candidates[best]
            closest_similarity = candidate_closest[:, best]
        return X[chosen].clone()

    def _lloyd(
        self, X: Float[torch.Tensor, "n d"], centers: Float[torch.Tensor, "k d"]
    ) -> tuple[Float[torch.Tensor, "k d"], int]:
        """Alternate assignment and center updates until centers stop moving; returns centers, iterations."""
        chunk_rows = self._chunk_rows()
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - n_iter is reported after the loop
            labels, similarities = _nearest_centers(X, centers, chunk_rows)
            sums = torch.zeros_like(centers).index_add_(0, labels, X)
            sizes = torch.bincount(labels, minlength=self.n_clusters)
            empty = sizes == 0
            if empty.any():
                # Re-seed each empty cluster at a sample farthest from its own center.
                farthest = torch.argsort(similarities)[: int(empty.sum())]
                sums[empty] = X[farthest]
            new_centers = _unit_rows(sums, "cluster sums")
            shift = (1.0 - (new_centers * centers).sum(dim=1)).max()
            centers = new_centers
            if shift <= self.tol:
                break
        return centers, n_iter

    def fit(self, X: Float[torch.Tensor, "n_samples n_features"]) -> SphericalKMeans:
        """Cluster the directions of the rows of ``X`` (rows are normalized; their norms are ignored)."""
        X = _unit_rows(_as_float_matrix(X, self.device))
        self._validate_parameters(X.shape[0])
        generator = torch.Generator(device=X.device).manual_seed(self.random_state)
        best = None
        for _ in range(self.n_init):
            centers, n_iter = self._lloyd(X, self._init_centers(X, generator))
            labels, similarities = _nearest_centers(X, centers, self._chunk_rows())
            inertia = float((1.0 - similarities).sum())
            if best is None or inertia < best[0]:
                best = (inertia, centers, labels, n_iter)
        self.inertia_, self.cluster_centers_, self.labels_, self.n_iter_ = best
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: Float[torch.Tensor, "n_samples n_features"]) -> Int[torch.Tensor, " n_samples"]:
        """Index of the most cosine-similar fitted center for every row of ``X``."""
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("This SphericalKMeans is not fitted yet; call fit(X) first.")
        X = _unit_rows(_as_float_matrix(X, self.cluster_centers_.device))
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; the model was fitted on {self.n_features_in_}.")
        labels, _ = _nearest_centers(
            X.to(self.cluster_centers_.dtype), self.cluster_centers_, self._chunk_rows()
        )
        return labels

    def fit_predict(self, X: Float[torch.Tensor, "n_samples n_features"]) -> Int[torch.Tensor, " n_samples"]:
        """``fit(X)`` and return ``labels_``."""
        return self.fit(X).labels_


def cluster_vocabulary(
    W_U: Float[torch.Tensor, "d_model d_vocab"],
    n_clusters: int,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 100,
    device: torch.device | str | None = None,
) -> Int[torch.Tensor, " d_vocab"]:
    """Group the vocabulary by spherical k-means on mean-centred, normalized unembedding directions.

    Args:
        W_U: the unembedding matrix in TransformerLens layout; column ``t`` maps the residual stream to
            the logit of token ``t``.
        n_clusters: number of token groups K.
        seed: random state of the k-means++ initialization.
        n_init, max_iter, device: passed to :class:`SphericalKMeans`.

    Returns:
        The group (``0 .. n_clusters − 1``) of every vocabulary token, on ``W_U``'s device.
    """
    W_U = torch.as_tensor(W_U).detach()  # a model's parameter: the clustering needs no gradient
    if W_U.ndim != 2:
        raise ValueError(f"W_U must be 2-D [d_model, d_vocab]; got shape {tuple(W_U.shape)}.")
    # Half-precision unembeddings are clustered in float32; float64 stays float64.
    token_directions = W_U.T.double() if W_U.dtype == torch.float64 else W_U.T.float()
    centred = token_directions - token_directions.mean(dim=0, keepdim=True)
    model = SphericalKMeans(
        n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed, device=device
    )
    return model.fit(centred).labels_.to(W_U.device)
