"""The shipped toy checkpoints: where they are, and what they scored."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tl_moe.errors import InputError
from tl_moe.zoo.family import TOY_FAMILY, UnknownToyModelError

CHECKPOINT_ROOT = Path(__file__).with_name("checkpoints")


class MissingToyCheckpointError(InputError, FileNotFoundError):
    """A toy model is known but its checkpoint is not on disk (train it with ``tl-moe zoo train``)."""


def checkpoint_dir(name: str) -> Path:
    """Directory of toy model ``name`` (``"toy/moe-16x2"`` -> ``.../checkpoints/moe-16x2``)."""
    if name not in TOY_FAMILY:
        raise UnknownToyModelError(f"Unknown toy model {name!r}. Toy models: {', '.join(TOY_FAMILY)}.")
    return CHECKPOINT_ROOT / name.removeprefix("toy/")


def checkpoint_path(name: str) -> Path:
    """Directory of a trained, shipped toy model, or a clear error saying how to train it."""
    directory = checkpoint_dir(name)
    if not (directory / "metadata.json").exists():
        raise MissingToyCheckpointError(
            f"Toy model {name!r} has no checkpoint at {directory}. Train it with `tl-moe zoo train {name}`."
        )
    return directory


def metadata(name: str) -> dict:
    """The ``metadata.json`` of a shipped toy model (config, training, validation losses)."""
    return json.loads((checkpoint_path(name) / "metadata.json").read_text())


MEAN_VAL_LOSS_NOTE = (
    "validation loss (nats/token) averaged over the corpus domains with equal weight (the unweighted "
    "mean of the per-domain losses of `tl-moe zoo losses`, not a mean over tokens)"
)


def list_models() -> pd.DataFrame:
    """One row per toy model: experts, top-k, parameters, whether a checkpoint ships, and
    ``mean_val_loss`` (:data:`MEAN_VAL_LOSS_NOTE`)."""
    rows = []
    for name, cfg in TOY_FAMILY.items():
        directory = checkpoint_dir(name)
        trained = (directory / "metadata.json").exists()
        meta = json.loads((directory / "metadata.json").read_text()) if trained else {}
        losses = meta.get("validation_loss", {})
        rows.append(
            {
                "name": name,
                "architecture": cfg.architecture,
                "experts": cfg.num_experts or "-",
                "top_k": cfg.experts_per_token or "-",
                "d_expert": cfg.d_expert or "-",
                "d_mlp": cfg.d_mlp or "-",
                "parameters": meta.get("n_parameters"),
                "mean_val_loss": round(sum(losses.values()) / len(losses), 3) if losses else None,
                "shipped": trained,
            }
        )
    return pd.DataFrame(rows)


def loss_table() -> pd.DataFrame:
    """Validation loss (nats/token) per domain of every shipped toy model and the unigram baseline."""
    columns, unigram = {}, None
    for name in TOY_FAMILY:
        if not (checkpoint_dir(name) / "metadata.json").exists():
            continue
        meta = metadata(name)
        columns[name] = meta["validation_loss"]
        unigram = meta["unigram_validation_loss"]
    if unigram is not None:
        columns["unigram baseline"] = unigram
    return pd.DataFrame(columns)
