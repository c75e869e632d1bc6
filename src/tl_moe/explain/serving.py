"""Serving a local chat model on loopback: a plain copy of a GGUF file, and ``transformers serve`` on it.

transformers reads GGUF weights (``gguf_file=``, with the ``gguf`` package), but the config it
builds from a GGUF file names no architecture, so ``transformers serve`` cannot load the file itself.
:func:`servable_copy` loads the file once (dequantizing it), and saves model and tokenizer as a
plain transformers directory (no quantization config, ``architectures`` set) in a cache directory
keyed by the file's SHA-256 and the transformers version: the copy is made once per machine and is
deterministic (the same file gives the same tensors). The copy is written to a temporary sibling and
renamed into place, so an interrupted or concurrent conversion never leaves a half-written copy.

:class:`TransformersServer` starts ``transformers serve`` (the ``transformers[serving]`` extra) on a
free loopback port with a model preloaded, waits until it lists its models, and stops it on exit; its
``url`` and ``model`` go to :class:`~tl_moe.explain.clients.OpenAIChatClient`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tl_moe.errors import InputError

__all__ = ["TransformersServer", "cache_root", "file_sha256", "servable_copy", "serve_command"]


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


def serve_command() -> str | None:
    """The ``transformers`` command next to this Python (or on ``PATH``), None when there is none."""
    beside = Path(sys.executable).parent / "transformers"
    return str(beside) if beside.is_file() else shutil.which("transformers")


class TransformersServer:
    """``transformers serve MODEL`` on ``127.0.0.1`` as a context manager (see the module docstring).

    Args:
        model: a saved model directory (e.g. :func:`servable_copy`'s).
        device: ``--device`` of the server.
        dtype: ``--dtype`` of the server (default: the weights' own).
        startup_timeout: seconds to wait for the server to answer.
        log: file the server's output goes to (default: discarded).
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        startup_timeout: float = 300.0,
        log: str | os.PathLike | None = None,
    ) -> None:
        self.model, self.device, self.dtype = str(model), device, dtype
        self.startup_timeout, self.log = startup_timeout, Path(log) if log is not None else None
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.startup_s = float("nan")

    def __enter__(self) -> TransformersServer:
        command = serve_command()
        if command is None:
            raise RuntimeError("no `transformers` command: pip install 'transformers[serving]'")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        argv = [
            command,
            "serve",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            self.device,
        ]
        argv += ["--dtype", self.dtype] if self.dtype else []
        out = open(self.log, "w") if self.log is not None else subprocess.DEVNULL  # noqa: SIM115
        tic = time.perf_counter()
        self.process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        if out is not subprocess.DEVNULL:
            out.close()
        self.url = f"http://127.0.0.1:{port}/v1"
        while not self._answers():
            waited = time.perf_counter() - tic
            if self.process.poll() is not None or waited > self.startup_timeout:
                self.__exit__()
                tail = self.log.read_text()[-2000:] if self.log is not None else "(no log kept)"
                raise RuntimeError(f"transformers serve did not answer within {waited:.0f} s:\n{tail}")
            time.sleep(0.25)
        self.startup_s = time.perf_counter() - tic
        return self

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/models", timeout=2).close()
        except OSError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
