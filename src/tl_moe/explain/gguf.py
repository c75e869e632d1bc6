"""A plain saved copy of a GGUF chat model, for servers that need one (``transformers serve``).

transformers reads GGUF weights (``gguf_file=``, with the ``gguf`` package), but the config it
builds from a GGUF file names no architecture, so ``transformers serve`` cannot load the file itself.
:func:`servable_copy` loads the file once (dequantizing it), and saves model and tokenizer as a
plain transformers directory (no quantization config, ``architectures`` set) in a cache directory
keyed by the file's SHA-256 and the transformers version: the copy is made once per machine and is
deterministic (the same file gives the same tensors). The copy is written to a temporary sibling and
renamed into place, so an interrupted or concurrent conversion never leaves a half-written copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tl_moe.errors import InputError

__all__ = ["cache_root", "file_sha256", "servable_copy"]


def cache_root() -> Path:
    """``$TL_MOE_CACHE_DIR``, else ``$XDG_CACHE_HOME/tl_moe``, else ``~/.cache/tl_moe``."""
    if os.environ.get("TL_MOE_CACHE_DIR"):
        return Path(os.environ["TL_MOE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tl_moe"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def servable_copy(gguf: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of a plain saved copy of the GGUF model ``gguf`` (made on first use).

    Args:
        gguf: a ``.gguf`` file of a causal language model transformers can read.
        cache_dir: where copies live (default :func:`cache_root` ``/ "gguf"``).

    Returns:
        ``cache_dir / "<file stem>-<sha256[:16]>-transformers<version>"``, holding ``config.json``,
        the weights (the dtype transformers dequantizes the file to), the tokenizer and its chat template.
    """
    import transformers

    path = Path(gguf)
    if path.suffix != ".gguf" or not path.is_file():
        raise InputError(f"gguf: {str(path)!r} is not a .gguf file; pass the path of a GGUF model file.")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "gguf"
    target = root / f"{path.stem}-{file_sha256(path)[:16]}-transformers{transformers.__version__}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    _convert(path, scratch)
    try:
        os.replace(scratch, target)
    except OSError:  # another process renamed its copy into place first: the same tensors
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _convert(path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the copy is plain weights, not a GGUF checkpoint
    config.architectures = [type(loaded).__name__]
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
