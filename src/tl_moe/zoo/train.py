"""Training recipe of the toy zoo: the same data, steps and seed for every member of the family.

``tl-moe zoo train toy/moe-16x2`` (or ``--all``) trains on the train split of the embedded corpus v2,
checkpoints its state every few steps (an interrupted run resumes where it stopped), then
saves the model in float16 with the tokenizer and a ``metadata.json`` holding the validation
loss per domain of the saved weights and of a unigram baseline.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from tl_moe.models.build import build_model, save_model
from tl_moe.models.config import MoEConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by the whole family.

    Attributes:
        steps: Optimizer steps.
        batch_size: Sequences per step.
        seq_len: Tokens per sequence.
        lr: Peak AdamW learning rate (linear warm-up, cosine decay to ``lr / 10``).
        warmup: Warm-up steps.
        weight_decay: AdamW weight decay on matrices.
        aux_loss_coef: Weight of the router load-balancing loss (MoE only).
        seed: Seed of the initialisation and of the batch order.
        checkpoint_every: Steps between saved training states.
        corpus: Corpus spec (see :func:`tl_moe.data.corpus.load_corpus`) whose train split is read.
    """

    steps: int = 2500
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    aux_loss_coef: float = 0.01
    seed: int = 0
    checkpoint_every: int = 100
    corpus: str = "embedded:v2"


def token_stream(texts, tokenizer) -> Int[torch.Tensor, " n_tokens"]:
    """All ``texts`` tokenized and concatenated, each followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def _learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _batch(stream: torch.Tensor, generator: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    starts = torch.randint(0, stream.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=generator)
    return torch.stack([stream[s : s + cfg.seq_len] for s in starts.tolist()])


def train_model(
    model_cfg: MoEConfig,
    out_dir: str | Path,
    train_cfg: TrainConfig = TrainConfig(),
    corpus=None,
    tokenizer=None,
    device: str | None = None,
    progress: bool = True,
    save_tokenizer: bool = True,
) -> Path:
    """Train one model of the family and save it (float16) with its evaluation metadata.

    Resumes from ``out_dir/train_state.pt`` when an earlier run was interrupted. That file is
    checksummed and loaded with ``weights_only=True``: a damaged or planted file is refused
    with one line (delete it to restart), and no code in it can run.

    Returns:
        ``out_dir``, loadable with ``tl_moe.load(out_dir)``.
    """
    from tl_moe.data.corpus import load_corpus
    from tl_moe.zoo.held_out_texts import held_out_text_losses
    from tl_moe.zoo.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else load_corpus(train_cfg.corpus)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stream = token_stream(corpus["train"]["text"], tokenizer)

    model = build_model(model_cfg, seed=train_cfg.seed).to(device).train()
    if model_cfg.is_moe:
        model.config.output_router_logits = True
        model.config.router_aux_loss_coef = train_cfg.aux_loss_coef
    optimizer = _optimizer(model, train_cfg)
    generator = torch.Generator().manual_seed(train_cfg.seed)
    start_step, elapsed = 0, 0.0
    state_path = out_dir / "train_state.pt"
    if state_path.exists():
        state = _load_state(state_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_step, elapsed = state["step"], state["elapsed"]

    bar = tqdm(
        range(start_step, train_cfg.steps),
        initial=start_step,
        total=train_cfg.steps,
        desc=f"train {model_cfg.architecture}",
        disable=not progress,
    )
    began = time.perf_counter() - elapsed
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, train_cfg)
        batch = _batch(stream, generator, train_cfg).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_per_s = (
            (step + 1 - start_step) * batch.numel() / max(1e-9, time.perf_counter() - began - elapsed)
        )
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_per_s:,.0f}")
        if (step + 1) % train_cfg.checkpoint_every == 0 and step + 1 < train_cfg.steps:
            _save_state(state_path, model, optimizer, generator, step + 1, time.perf_counter() - began)
    train_seconds = time.perf_counter() - began

    model.config.output_router_logits = False
    save_model(model.to("cpu").eval().half(), tokenizer, out_dir, include_tokenizer=save_tokenizer)
    saved = _reload_float32(out_dir)
    saved.config.output_router_logits = False
    metadata = {
        "config": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "train_tokens": train_cfg.steps * train_cfg.batch_size * train_cfg.seq_len,
        "train_seconds": round(train_seconds, 1),
        "device": device,
        "n_parameters": sum(p.numel() for p in saved.parameters()),
        "validation_loss": loss_by_domain(saved, tokenizer, corpus["validation"], train_cfg.seq_len),
        "unigram_validation_loss": unigram_loss_by_domain(stream, tokenizer, corpus["validation"]),
        "held_out_text_loss": held_out_text_losses(saved, tokenizer),
    }
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    state_path.unlink(missing_ok=True)
    return out_dir


def _save_state(path: Path, model, optimizer, generator, step: int, elapsed: float) -> None:
    """Atomic, checksummed training state (see :func:`tl_moe.collect.checkpoint.write_verified`)."""
    from tl_moe.collect.checkpoint import write_verified

    write_verified(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "step": step,
            "elapsed": elapsed,
        },
    )


def _load_state(path: Path, device: str) -> dict:
    """The training state at ``path``: checksum verified, loaded with ``weights_only=True`` (no code runs).

    Raises ``CheckpointCorruptError`` (a ValueError, one line) for an empty, truncated, damaged,
    foreign or code-carrying file; deleting it restarts training from step 0.
    """
    from tl_moe.collect.checkpoint import read_verified

    hint = f"delete {path} to restart training from step 0"
    state = read_verified(path, map_location=device, hint=hint)
    keys = set(state) if isinstance(state, dict) else set()
    missing = {"model", "optimizer", "generator", "step", "elapsed"} - keys
    if missing:
        raise ValueError(f"training state at {path} lacks {sorted(missing)}; {hint}.")
    return state


def _reload_float32(directory: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@torch.no_grad()
def loss_by_domain(model, tokenizer, dataset, seq_len: int = 128, batch_size: int = 16) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) per domain of ``dataset``, in windows of ``seq_len``.

    Each document is tokenized with an end-of-text token in front and cut into consecutive
    windows; every token after the first of a window is predicted once.
    """
    device = next(model.parameters()).device
    totals: dict[str, list[float]] = {}
    windows: list[tuple[str, torch.Tensor]] = []
    for text, domain in zip(dataset["text"], dataset["domain"], strict=True):
        ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - 1, seq_len):
            window = torch.tensor(ids[start : start + seq_len + 1])
            if window.numel() > 1:
                windows.append((domain, window))
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = max(w.numel() for _, w in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.bool)
        for row, (_, window) in enumerate(chunk):
            ids[row, : window.numel()] = window
            mask[row, : window.numel()] = True
        logits = model(input_ids=ids[:, :-1].to(device)).logits.float()
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), ids[:, 1:].to(device), reduction="none"
        ).cpu()
        valid = mask[:, 1:]
        for row, (domain, _) in enumerate(chunk):
            total = totals.setdefault(domain, [0.0, 0])
            total[0] += float(losses[row][valid[row]].sum())
            total[1] += int(valid[row].sum())
    return {domain: round(loss / count, 4) for domain, (loss, count) in sorted(totals.items())}


def unigram_loss_by_domain(stream: torch.Tensor, tokenizer, dataset) -> dict[str, float]:
    """Cross-entropy (nats) per domain of a unigram model fit on ``stream`` (add-one smoothing)."""
    counts = torch.bincount(stream, minlength=len(tokenizer)).double() + 1.0
    log_probs = torch.log(counts / counts.sum())
    totals: dict[str, list[float]] = {}
    for text, domain in zip(dataset["text"], dataset["domain"], strict=True):
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        total = totals.setdefault(domain, [0.0, 0])
        total[0] -= float(log_probs[ids].sum())
        total[1] += ids.numel()
    return {domain: round(loss / count, 4) for domain, (loss, count) in sorted(totals.items())}
