"""Checks of a saved model folder, read from its files before any weight is loaded.

:func:`check_model_folder` refuses, in one line that names the folder, what would otherwise end in
a traceback deep inside transformers or TransformerLens, or load silently wrong:

- a ``config.json`` that is missing, truncated, binary or not a JSON object;
- a ``model_type`` that is missing or that the installed transformers does not know;
- an architecture the installed TransformerLens bridge cannot boot (e.g. ``phimoe``);
- ``num_experts_per_tok`` that is not a positive integer (``1.5``, ``"2"``) or is larger than the
  number of experts;
- no weight file, a truncated or corrupt ``.safetensors`` file, or weights holding another number
  of experts or layers than the config says;
- weights that do not fit the model ``config.json`` describes: a parameter with no tensor in the
  weight files, or a tensor of another shape (e.g. ``hidden_size`` or ``vocab_size`` edited);
- no tokenizer files, when the caller gives no tokenizer (a bridge would otherwise boot with a
  placeholder vocabulary), or a tokenizer file that cannot be read (truncated ``tokenizer.json``).
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

from tl_moe.errors import InputError

__all__ = [
    "SUPPORTED_TABLE_HINT",
    "TOKENIZER_FILES",
    "check_model_folder",
    "check_model_type",
    "read_config",
    "expert_counts_in_weights",
    "layer_counts_in_weights",
    "unbootable_message",
]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tiktoken.model",
)
"""Files of which at least one makes a folder's tokenizer loadable by ``AutoTokenizer``."""

SUPPORTED_TABLE_HINT = (
    "`tl-moe hooks --architectures` lists the architectures tl_moe boots (README, 'Supported architectures')"
)

NUM_EXPERTS_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
"""Config keys that hold the number of routed experts, by architecture."""
TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "experts_per_token", "moe_topk")
"""Config keys that hold the number of experts each token is routed to."""
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
"""Config keys that hold the number of transformer blocks."""
EXTRA_LAYER_KEYS = ("num_nextn_predict_layers", "num_mtp_layers", "mtp_num_hidden_layers")
"""Config keys of blocks the weights may hold beyond the transformer's (multi-token prediction)."""
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "added_tokens.json")
"""JSON tokenizer files that must parse when present (``tokenizer.json`` is read by ``tokenizers``)."""

_SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024
_EXPERT_INDEX = re.compile(r"^(.*)\.experts\.(\d+)\.")
_FUSED_EXPERTS = re.compile(r"^(.*)\.experts\.[A-Za-z_]+$")
_LAYER_INDEX = re.compile(r"^(.*?(?:^|\.)(?:layers|h|blocks))\.(\d+)\.")
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _refuse(label: str, what: str, accepted: str) -> InputError:
    return InputError(f"{label} {what}; accepted: {accepted}.")


def read_config(directory: Path, label: str) -> dict:
    """``config.json`` of ``directory`` as a dict; a missing, unreadable or non-object file is refused."""
    path = directory / "config.json"
    accepted = "a folder written by save_pretrained (a UTF-8 JSON config.json beside its weights)"
    if not path.is_file():
        raise _refuse(label, "is a folder without config.json", accepted)
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _refuse(label, "has a config.json that is not UTF-8 text (a binary file?)", accepted) from None
    except json.JSONDecodeError as error:
        raise _refuse(
            label,
            f"has a config.json that is not valid JSON ({error.msg} at line {error.lineno}; truncated?)",
            accepted,
        ) from None
    if not isinstance(config, dict):
        raise _refuse(label, f"has a config.json holding a {type(config).__name__}, not an object", accepted)
    return config


def unbootable_message(label: str, model_type: str, architecture: str) -> str:
    """The one line for an architecture TransformerLens has no bridge adapter for."""
    return (
        f"{label} is a {model_type!r} model ({architecture}), which the installed TransformerLens cannot boot "
        f"(no bridge adapter); accepted: a supported architecture — {SUPPORTED_TABLE_HINT}."
    )


def check_model_type(config: dict, label: str) -> str:
    """``config``'s model type, refused when missing or unknown to the installed transformers."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise _refuse(
            label,
            "has a config.json without a model_type",
            f"a transformers model type; {SUPPORTED_TABLE_HINT}",
        )
    if model_type not in CONFIG_MAPPING_NAMES:
        raise _refuse(
            label,
            f"has model_type {model_type!r}, which the installed transformers does not know",
            f"a transformers model type; {SUPPORTED_TABLE_HINT}",
        )
    return model_type


def _check_architecture(config: dict, label: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = check_model_type(config, label)
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    named = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    candidates = named or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) or model_type]
    if not any(architecture in SUPPORTED_ARCHITECTURES for architecture in candidates):
        raise InputError(unbootable_message(label, model_type, candidates[0]))


def _config_value(config: dict, keys: tuple[str, ...]) -> tuple[str, int] | None:
    for source in (config, config.get("text_config") or {}):
        for key in keys:
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                return key, value
    return None


def _check_integer_fields(config: dict, label: str) -> None:
    """Expert counts and top-k must be integers: ``1.5`` or ``"2"`` would fail inside transformers."""
    experts = _config_value(config, NUM_EXPERTS_KEYS)
    bound = f" <= {experts[0]} ({experts[1]})" if experts else ""
    for source in (config, config.get("text_config") or {}):
        for key in NUM_EXPERTS_KEYS + TOP_K_KEYS:
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, (bool, float, str)):
                accepted = "a positive integer" + (bound if key in TOP_K_KEYS else "")
                raise _refuse(label, f"has {key}={value!r} ({type(value).__name__}) in config.json", accepted)


def _check_routing_sizes(config: dict, label: str) -> None:
    _check_integer_fields(config, label)
    experts = _config_value(config, NUM_EXPERTS_KEYS)
    top_k = _config_value(config, TOP_K_KEYS)
    if experts is None or top_k is None:
        return
    (experts_key, n_experts), (top_k_key, k) = experts, top_k
    if n_experts >= 1 and not 1 <= k <= n_experts:
        raise _refuse(
            label,
            f"has {top_k_key}={k} but {experts_key}={n_experts} in config.json",
            f"1 <= {top_k_key} <= {experts_key}",
        )


def _safetensors_header(path: Path, label: str) -> dict:
    """The header of a ``.safetensors`` file (tensor name -> dtype, shape, offsets); truncation is refused."""
    accepted = "complete weight files, as save_pretrained writes them (download or copy them again)"
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _refuse(label, f"has a truncated weight file {path.name} ({size} bytes)", accepted)
        (header_bytes,) = struct.unpack("<Q", head)
        if header_bytes > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
            raise _refuse(
                label, f"has a truncated or corrupt weight file {path.name} (header past its end)", accepted
            )
        try:
            header = json.loads(handle.read(header_bytes).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _refuse(
                label, f"has a corrupt weight file {path.name} (unreadable header)", accepted
            ) from None
    if not isinstance(header, dict):
        raise _refuse(label, f"has a corrupt weight file {path.name} (unreadable header)", accepted)
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2
    ]
    if ends and 8 + header_bytes + max(ends) > size:
        raise _refuse(
            label,
            f"has a truncated weight file {path.name} ({size:,} bytes of {8 + header_bytes + max(ends):,})",
            accepted,
        )
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def _weight_files(directory: Path, label: str) -> list[Path]:
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        return safetensors
    if any(directory.glob("pytorch_model*.bin")):
        return []  # pickled weights: transformers checks them itself
    raise _refuse(
        label,
        "holds a config.json but no weights (no *.safetensors or pytorch_model*.bin)",
        "a folder written by save_pretrained, weights included",
    )


def expert_counts_in_weights(header: dict) -> dict[str, int]:
    """Experts per MoE block (its name prefix) found in a weight header, by expert index or fused shape."""
    counts: dict[str, int] = {}
    for name, entry in header.items():
        indexed = _EXPERT_INDEX.match(name)
        if indexed:
            prefix, index = indexed.group(1), int(indexed.group(2))
            counts[prefix] = max(counts.get(prefix, 0), index + 1)
            continue
        fused = _FUSED_EXPERTS.match(name)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if fused and isinstance(shape, list) and len(shape) == 3:
            counts[fused.group(1)] = max(counts.get(fused.group(1), 0), int(shape[0]))
    return counts


def layer_counts_in_weights(header: dict) -> dict[str, int]:
    """Blocks per stack (its name prefix, e.g. ``model.layers``) found in a weight header, by block index."""
    counts: dict[str, int] = {}
    for name in header:
        found = _LAYER_INDEX.match(name)
        if found:
            prefix, index = found.group(1), int(found.group(2))
            counts[prefix] = max(counts.get(prefix, 0), index + 1)
    return counts


def _check_layer_count(header: dict, config: dict, label: str) -> None:
    """Refuse weights holding fewer blocks than ``config.json`` says, or more (beyond MTP blocks)."""
    layers = _config_value(config, LAYER_KEYS)
    counts = layer_counts_in_weights(header)
    if layers is None or not counts:
        return
    key, n_layers = layers
    extra = _config_value(config, EXTRA_LAYER_KEYS)
    allowed = range(n_layers, n_layers + (extra[1] if extra else 0) + 1)
    if any(count in allowed for count in counts.values()):
        return
    stack = max(counts, key=lambda prefix: sum(name.startswith(prefix + ".") for name in header))
    raise _refuse(
        label,
        f"has {key}={n_layers} in config.json but its weights hold {counts[stack]} layers "
        f"({stack}.0 to {stack}.{counts[stack] - 1})",
        "a config.json whose layer count matches its weights",
    )


def _meta_model(directory: Path):
    """The model ``config.json`` describes, built on the meta device (no memory); None if it cannot be."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config)
    except Exception:  # a model transformers cannot build from its config alone: the load reports it
        return None


def _checkpoint_names(model, header: dict) -> dict[str, tuple[str, bool]]:
    """Each weight-file tensor's parameter name in ``model``, as transformers renames it on load,
    and whether it is renamed only (True) or converted (fused, split: its shape changes)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    state = model.state_dict()
    names = {}
    for name in header:
        target, converted = rename_source_key(name, renamings, converters, model.base_model_prefix, state)
        names[name] = (target, converted is None)
    return names


def _check_against_architecture(directory: Path, header: dict, config: dict, label: str) -> None:
    """Refuse a parameter without a tensor, or a tensor of another shape than ``config.json`` implies.

    transformers would otherwise initialise a missing parameter at random (silently) or end in a
    size-mismatch traceback. Skipped for quantized checkpoints (packed shapes) and where the
    installed transformers cannot build the model or rename its weights.
    """
    if "quantization_config" in config:
        return
    model = _meta_model(directory)
    if model is None:
        return
    try:
        names = _checkpoint_names(model, header)
    except Exception:  # transformers' renaming machinery changed: nothing to compare against
        return
    parameters = dict(model.named_parameters())
    sizes = ", ".join(
        f"{key}={value}"
        for key in ("hidden_size", "vocab_size")
        for value in [config.get(key, (config.get("text_config") or {}).get(key))]
        if value is not None
    )
    for name, (target, renamed_only) in names.items():
        entry = header[name]
        expected = parameters.get(target)
        if not renamed_only or expected is None or entry.get("dtype") not in _FLOAT_DTYPES:
            continue
        if list(entry.get("shape") or []) != list(expected.shape):
            raise _refuse(
                label,
                f"has weights that do not fit its config.json ({sizes}): {name} is {entry.get('shape')} in the "
                f"weights but {list(expected.shape)} from the config",
                "a config.json that matches its weights",
            )
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    found = {target for target, _ in names.values()}
    missing = [name for name in parameters if name not in found and name not in tied]
    if missing:
        raise _refuse(
            label,
            f"has no tensor for {missing[0]} in its weights ({len(missing)} of the {len(parameters)} parameters "
            "config.json describes are missing)",
            "weights holding every parameter of the model config.json describes",
        )


def _check_weights(directory: Path, config: dict, label: str) -> None:
    header: dict = {}
    for path in _weight_files(directory, label):
        header.update(_safetensors_header(path, label))
    _check_layer_count(header, config, label)
    _check_experts_in_weights(header, config, label)
    if header:
        _check_against_architecture(directory, header, config, label)


def _check_experts_in_weights(header: dict, config: dict, label: str) -> None:
    experts = _config_value(config, NUM_EXPERTS_KEYS)
    counts = expert_counts_in_weights(header)
    if experts is None or not counts:
        return
    key, n_experts = experts
    found = sorted(set(counts.values()))
    if n_experts not in found:  # no MoE block holds the configured number of experts
        raise _refuse(
            label,
            f"has {key}={n_experts} in config.json but its weights hold {' or '.join(map(str, found))} experts "
            "per layer",
            "a config.json that matches its weights",
        )


def _check_tokenizer_files(directory: Path, label: str) -> None:
    """Refuse a ``tokenizer.json`` that ``tokenizers`` cannot read, or a tokenizer JSON file that does not parse."""
    accepted = "tokenizer files as tokenizer.save_pretrained writes them (copy or download them again)"
    for name in TOKENIZER_JSON_FILES:
        path = directory / name
        if path.is_file():
            try:
                json.loads(path.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise _refuse(label, f"has a {name} that is not valid JSON (truncated?)", accepted) from None
    path = directory / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises plain Exceptions
            reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            raise _refuse(
                label, f"has a tokenizer.json that cannot be read ({reason}; truncated?)", accepted
            ) from None


def _check_tokenizer(directory: Path, label: str) -> None:
    if any((directory / name).is_file() for name in TOKENIZER_FILES) or any(directory.glob("*.tiktoken")):
        _check_tokenizer_files(directory, label)
        return
    raise _refuse(
        label,
        "has no tokenizer files (none of tokenizer.json, tokenizer.model, vocab.json, ...)",
        "a folder saved with its tokenizer (tokenizer.save_pretrained(folder)), or pass tokenizer= to tl_moe.load",
    )


def check_model_folder(directory: str | os.PathLike, label: str, *, needs_tokenizer: bool = True) -> dict:
    """Check a saved model folder from its files (no weight is loaded); returns its ``config.json``.

    Args:
        directory: the folder (``save_pretrained`` output).
        label: how messages name it, e.g. ``"--model '/data/m'"``.
        needs_tokenizer: refuse a folder without tokenizer files (False when the caller brings one).

    Raises:
        InputError: one line naming ``label``: see the module docstring for what is refused.
    """
    directory = Path(directory)
    config = read_config(directory, label)
    _check_architecture(config, label)
    _check_routing_sizes(config, label)
    _check_weights(directory, config, label)
    if needs_tokenizer:
        _check_tokenizer(directory, label)
    return config


def hub_endpoint() -> str:
    """Where a hub download connects first: the HTTPS proxy if one is set, else ``HF_ENDPOINT`` or huggingface.co."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    return proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` says the hub must not be reached."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def cached_on_hub(name: str) -> bool:
    """Whether the Hugging Face cache holds ``name``'s config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # a malformed id or an unreadable cache: not cached
        return False


def check_hub_model(name: str, label: str, *, offline: bool | None = None) -> None:
    """Refuse, in a few seconds at most, a hub id that is not cached while the hub cannot be reached.

    Offline (``HF_HUB_OFFLINE``) the id must be cached; online, an uncached id needs the hub endpoint
    (:func:`hub_endpoint`) to accept a TCP connection (:func:`tl_moe.network.unreachable_reason`).
    """
    if cached_on_hub(name):
        return
    accepted = "a local folder, a toy name, or a hub id in the Hugging Face cache"
    if hub_offline() if offline is None else offline:
        raise _refuse(
            label,
            "is not a local folder and not in the Hugging Face cache, and the hub is offline "
            "(HF_HUB_OFFLINE)",
            accepted,
        )
    from tl_moe.network import unreachable_reason

    endpoint = hub_endpoint()
    reason = unreachable_reason(endpoint)
    if reason is not None:
        raise _refuse(
            label,
            f"is not a local folder and not in the Hugging Face cache, and the hub cannot be reached "
            f"({endpoint}: {reason})",
            accepted + " (or connect to the network)",
        )
