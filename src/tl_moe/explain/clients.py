"""Chat clients the LM explainers and scorers talk to, and the on-disk cache in front of them.

- :class:`OpenAIChatClient`: any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server,
  ``transformers serve``, hosted APIs) through the ``openai`` client. Base URL, model and key come
  from the arguments or the environment (``TL_MOE_OPENAI_BASE_URL`` / ``OPENAI_BASE_URL``,
  ``TL_MOE_OPENAI_MODEL``, ``TL_MOE_OPENAI_API_KEY`` / ``OPENAI_API_KEY``). Timeouts, and retries of
  rate limits (429), timeouts and server errors with capped exponential backoff (honouring
  ``Retry-After``), are the ``openai`` client's own machinery: ``max_retries`` bounds them.
- :class:`TransformersChatClient`: a local transformers chat model from any path (a saved model
  directory, or a GGUF file through transformers' ``gguf_file=``), greedy decoding.
- :class:`CachedChatClient`: an sqlite cache of every request and its answer in front of either, so a
  rerun after a crash or Ctrl-C pays for nothing twice. Only answers are cached; a request that
  failed (timeout, retries exhausted) is asked again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

__all__ = ["CachedChatClient", "ChatClient", "OpenAIChatClient", "TransformersChatClient", "client_from_spec"]

Messages = list[dict[str, str]]


class ChatClient(Protocol):
    """What explainers and scorers need: one chat completion, as text."""

    name: str

    def complete(self, messages: Messages, *, max_tokens: int = 256) -> str: ...


def _env(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


class OpenAIChatClient:
    """An OpenAI-compatible chat endpoint.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (default: ``TL_MOE_OPENAI_BASE_URL`` or
            ``OPENAI_BASE_URL``).
        model: model name the server knows (default: ``TL_MOE_OPENAI_MODEL``, else the server's
            first listed model).
        api_key: default ``TL_MOE_OPENAI_API_KEY`` or ``OPENAI_API_KEY`` (a placeholder for local
            servers that need none).
        timeout: seconds per request attempt.
        max_retries: retries of 429 / 408 / 5xx / connection errors (exponential backoff, capped by
            the ``openai`` client at 8 s, ``Retry-After`` honoured); 0 disables them.
        temperature: sampling temperature (0: as deterministic as the server allows).
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 4,
        temperature: float = 0.0,
    ) -> None:
        import openai

        self.base_url = base_url or _env("TL_MOE_OPENAI_BASE_URL", "OPENAI_BASE_URL")
        if not self.base_url:
            raise ValueError("no endpoint: pass base_url or set TL_MOE_OPENAI_BASE_URL / OPENAI_BASE_URL.")
        key = api_key or _env("TL_MOE_OPENAI_API_KEY", "OPENAI_API_KEY") or "not-needed"
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries
        )
        self.model = model or _env("TL_MOE_OPENAI_MODEL")
        self.temperature = temperature
        self.timeout, self.max_retries = timeout, max_retries

    @property
    def name(self) -> str:
        return f"openai:{self.base_url}#{self.model}"

    @property
    def identity(self) -> str:
        """What the cache keys answers by: the model, not the URL (a restarted server on another port
        serving the same model answers the same requests)."""
        return f"openai#{self._model()}#t={self.temperature}"

    def _model(self) -> str:
        if self.model is None:
            listed = self._client.models.list()
            self.model = listed.data[0].id
        return self.model

    def complete(self, messages: Messages, *, max_tokens: int = 256) -> str:
        answer = self._client.chat.completions.create(
            model=self._model(), messages=messages, max_tokens=max_tokens, temperature=self.temperature
        )
        content = answer.choices[0].message.content if answer.choices else None
        if content is None:
            raise ValueError("the endpoint returned no message content")
        return content


class TransformersChatClient:
    """A local transformers chat model (greedy decoding; one generation at a time).

    Args:
        path: a saved model directory or hub-style id available offline, or a ``.gguf`` file (read
            through transformers ``gguf_file=``; needs the ``gguf`` package).
        tokenizer_path: where the tokenizer is, when not next to the weights.
        device: torch device (default: CPU).
    """

    def __init__(self, path: str | os.PathLike, tokenizer_path: str | None = None, device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        kwargs: dict[str, Any] = {}
        if path.suffix == ".gguf":
            kwargs["gguf_file"] = path.name
            source = str(path.parent)
        else:
            source = str(path)
        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_path or source, **({} if tokenizer_path else kwargs)
        )
        self.model = AutoModelForCausalLM.from_pretrained(source, **kwargs).eval()
        if device:
            self.model.to(device)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"local:{self.path}"

    @property
    def identity(self) -> str:
        return self.name

    def complete(self, messages: Messages, *, max_tokens: int = 256) -> str:
        import torch

        with self._lock:
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.model.device)
            with torch.no_grad():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.eos_token_id,
                )
            return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class CachedChatClient:
    """Every request and its answer in an sqlite file, in front of another client (thread-safe).

    A request is keyed by the client's identity (its model, not its URL), the messages and ``max_tokens``; a cached answer is
    returned without asking. ``hits`` and ``misses`` count this process's lookups.
    """

    def __init__(self, client: ChatClient, path: str | os.PathLike) -> None:
        self.client = client
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, request TEXT, answer TEXT)"
        )
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def name(self) -> str:
        return self.client.name

    def _key(self, request: str) -> str:
        return hashlib.sha256(request.encode()).hexdigest()

    def complete(self, messages: Messages, *, max_tokens: int = 256) -> str:
        request = json.dumps(
            {
                "client": getattr(self.client, "identity", self.client.name),
                "messages": messages,
                "max_tokens": max_tokens,
            },
            sort_keys=True,
        )
        key = self._key(request)
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self.hits += 1
            return row[0]
        self.misses += 1
        answer = self.client.complete(messages, max_tokens=max_tokens)
        with self._lock:  # committed at once (autocommit): a crash after this line loses nothing
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, request, answer))
        return answer

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def client_from_spec(
    spec: str, *, model: str | None = None, timeout: float = 60.0, max_retries: int = 4
) -> ChatClient:
    """``openai:URL`` -> :class:`OpenAIChatClient`; ``local:PATH`` -> :class:`TransformersChatClient`."""
    kind, _, target = spec.partition(":")
    if kind == "openai":
        return OpenAIChatClient(target or None, model, timeout=timeout, max_retries=max_retries)
    if kind == "local":
        if not target:
            raise ValueError("local: needs a path, e.g. local:/models/SmolLM2-135M-Instruct")
        return TransformersChatClient(target)
    raise ValueError(f"unknown explainer {spec!r}: use offline, openai:URL or local:PATH.")
