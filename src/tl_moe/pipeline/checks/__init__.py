"""Checks of a run's inputs that need the model or the corpus, to call BEFORE any pass starts.

Each check raises an :class:`~tl_moe.errors.InputError` (a ``ValueError``) whose message is one line
that names the input (``--seq-len``, ``--device``, ...; pass ``input_name=`` to name it otherwise)
and says what is accepted, so that a front end can print it without a traceback; its ``.input`` is
that name. The single exception is :func:`domain_coverage`, which returns a flag and a warning
instead of raising: a corpus with one domain is a valid input for every analysis except the domain
ones, which then have nothing to compare (the caller skips them, or stops, as it prefers).

One module per input; their errors are in :mod:`~tl_moe.pipeline.checks.errors`.

===================================  =====================================================
check (module)                       refuses
===================================  =====================================================
:func:`check_seq_len` (seq_len)      a length < 2, above the model's positions, or whose
                                     forward pass would not fit in the device's free memory
                                     (:mod:`tl_moe.pipeline.memory` estimates and probes it)
:func:`resolve_device` (device)      ``banana``; ``cuda`` without CUDA; ``cuda:3`` of 1 GPU
:func:`check_model_source`           a missing local path; a name that is neither a folder
(model_source)                       nor a hub id; a hub id not cached while offline; an
                                     unknown or untrained toy; an MoE where a dense model is
                                     expected (and the reverse)
:func:`check_output_dir`             a file; a folder (or parent) that cannot be written
(output_dir)
:func:`check_corpus_split` (corpus)  a missing split; a split with no non-empty document
:func:`check_layers` (model_limits)  layers that are not sparse layers of the model
:func:`check_n_token_groups`         more vocabulary clusters than the model has tokens
(model_limits)
:func:`check_n_drivers`              more driver experts than half the experts (no distinct
(model_limits)                       control left for each)
:func:`check_driver_budget`          a budget whose edited forwards reach fewer documents on
(budgets)                            a half than the drivers need (names the flag that helps)
:func:`check_reweight_budget`        a domain with no held-out document (names the flag)
(budgets)
===================================  =====================================================

:func:`check_driver_budget` and :func:`check_reweight_budget` also warn (one line, naming the flag
that helps) when the report documents fall short of ``MIN_DOCUMENTS``: the run goes on and its
intervals are reported unavailable.
"""

from tl_moe.pipeline.checks.budgets import (
    DocumentBudget,
    check_driver_budget,
    check_reweight_budget,
    driver_documents,
    reweight_documents,
)
from tl_moe.pipeline.checks.corpus import (
    SMALL_CORPUS_SHARE,
    TOKENIZER_PROBE_TEXT,
    DomainCoverage,
    check_corpus_split,
    check_tokenizer,
    corpus_tokens_up_to,
    domain_coverage,
    few_documents_warning,
    warn_few_documents,
    warn_small_corpus,
)
from tl_moe.pipeline.checks.device import resolve_device
from tl_moe.pipeline.checks.errors import (
    BudgetError,
    CorpusSplitError,
    DeviceError,
    LayersError,
    ModelSourceError,
    OutputDirError,
    ProbeSizeError,
    SeqLenError,
)
from tl_moe.pipeline.checks.model_limits import (
    check_layers,
    check_n_drivers,
    check_n_token_groups,
    check_probe_ks,
    check_removable_experts,
)
from tl_moe.pipeline.checks.model_source import (
    check_hub_reachable,
    check_model_folder_source,
    check_model_path,
    check_model_source,
)
from tl_moe.pipeline.checks.output_dir import check_output_dir
from tl_moe.pipeline.checks.seq_len import check_seq_len, check_seq_len_positions, max_positions

__all__ = [
    "SMALL_CORPUS_SHARE",
    "TOKENIZER_PROBE_TEXT",
    "BudgetError",
    "CorpusSplitError",
    "DeviceError",
    "DocumentBudget",
    "DomainCoverage",
    "LayersError",
    "ModelSourceError",
    "OutputDirError",
    "ProbeSizeError",
    "SeqLenError",
    "check_corpus_split",
    "check_driver_budget",
    "check_hub_reachable",
    "check_layers",
    "check_model_folder_source",
    "check_model_path",
    "check_model_source",
    "check_n_drivers",
    "check_n_token_groups",
    "check_output_dir",
    "check_probe_ks",
    "check_removable_experts",
    "check_reweight_budget",
    "check_seq_len",
    "check_seq_len_positions",
    "check_tokenizer",
    "corpus_tokens_up_to",
    "domain_coverage",
    "driver_documents",
    "max_positions",
    "resolve_device",
    "reweight_documents",
    "few_documents_warning",
    "warn_few_documents",
    "warn_small_corpus",
]
