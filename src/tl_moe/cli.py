"""``tl-moe``: the command line. The main job is ``tl-moe analyze``.

Commands (each may follow ``--plugin MODULE``, repeatable, which imports a module that registers
analyses of its own before the flags are built; ``TL_MOE_PLUGINS=mod1,mod2`` does the same):
    tl-moe analyze [MODEL] [--dense-baseline MODEL] [--corpus SPEC] [--out DIR] ...
    tl-moe plan [MODEL] [the flags of analyze]
    tl-moe explain [MODEL] [--explainer offline|openai:URL|local:PATH] ...
    tl-moe zoo list | train [NAMES ...|--all] | losses | evaluate
    tl-moe hooks [MODEL] | --architectures
    tl-moe corpus stats [--corpus SPEC]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tl_moe.errors import InputError


def _cmd_zoo_list(args) -> None:
    from tl_moe.zoo.registry import MEAN_VAL_LOSS_NOTE, list_models

    print(list_models().to_string(index=False))
    print(f"mean_val_loss: {MEAN_VAL_LOSS_NOTE}")


def _cmd_zoo_train(args) -> None:
    from tl_moe.zoo.family import TOY_FAMILY, family_config
    from tl_moe.zoo.registry import checkpoint_dir
    from tl_moe.zoo.train import TrainConfig, train_model

    names = list(TOY_FAMILY) if args.all else args.names
    if not names:
        raise SystemExit(f"Name the toy models to train ({', '.join(TOY_FAMILY)}) or pass --all.")
    overrides = {
        key: value for key, value in (("steps", args.steps), ("batch_size", args.batch_size)) if value
    }
    train_cfg = TrainConfig(**overrides)
    for name in names:
        shipped = args.out_root is None  # shipped checkpoints share the package's tokenizer file
        out = checkpoint_dir(name) if shipped else args.out_root / name.removeprefix("toy/")
        print(f"training {name} -> {out}")
        train_model(family_config(name), out, train_cfg, device=args.device, save_tokenizer=not shipped)


def _cmd_zoo_losses(args) -> None:
    from tl_moe.zoo.registry import loss_table

    table = loss_table()
    if table.empty:
        raise SystemExit("No toy checkpoints are shipped yet: run `tl-moe zoo train --all`.")
    print(table.round(3).to_markdown())


def _cmd_zoo_evaluate(args) -> None:
    from tl_moe.zoo.evaluate import main as evaluate

    evaluate(["--out", str(args.out)])


def _cmd_hooks(args) -> None:
    from tl_moe.models.hook_names import hook_table_markdown

    if args.architectures:
        _print_architectures()
        return
    if args.model is None:
        print(hook_table_markdown())
        return
    import tl_moe
    from tl_moe.pipeline.checks import check_model_source

    check_model_source(args.model)  # what analyze says of a file, a missing path or an unreachable hub
    model = tl_moe.load(args.model, device=args.device)
    print(f"{model.moe_cfg}\n")
    for name, kind in tl_moe.hook_names(model).items():
        print(f"{name:45s} {kind}")


def _print_architectures() -> None:
    """The MoE architectures tl_moe loads and hooks (model type, causal LM class), one a line, then
    those the bridge boots but tl_moe refuses, with why: each is attached to a tiny random model."""
    from tl_moe.models.catalog import architecture_status, registry_architectures

    statuses = [architecture_status(architecture) for architecture in registry_architectures()]
    print(
        "MoE architectures tl_moe loads and hooks (model_type  class); see README 'Supported architectures':"
    )
    for status in statuses:
        if status.supported:
            print(f"{status.model_type:24s} {status.hf_class}")
    refused = [status for status in statuses if not status.supported]
    if refused:
        print("Refused (the TransformerLens bridge boots them, tl_moe cannot hook their experts):")
        for status in refused:
            print(f"{status.model_type:24s} {status.hf_class}: {status.detail}")


def _cmd_corpus_stats(args) -> None:
    from tl_moe.data.corpus import corpus_stats, load_corpus
    from tl_moe.zoo.tokenizer import load_tokenizer

    print(corpus_stats(load_corpus(args.corpus), load_tokenizer()).to_string(index=False))


def _cmd_analyze(args) -> None:
    from tl_moe.pipeline import run
    from tl_moe.pipeline.options import options_from_arguments
    from tl_moe.runtime import set_threads

    options = options_from_arguments(args)
    set_threads(options.threads)  # one budget for torch and BLAS, below the cores other processes use
    results = run(options)
    if results.report is None:  # a torchrun rank other than 0: rank 0 reports
        return
    if results.findings:
        print("\nWhat this run found:")
        for finding in results.findings:
            print(f"- {finding.replace('**', '')}")
    else:
        print(
            "\nWhat this run found: no findings (the analyses that ran state none; see the report's tables)."
        )
    print("\nAccumulator memory after each pass (final / peak MiB):")
    for model_name, sizes in results.accumulator_bytes.items():
        for name, size in sizes.items():
            print(f"- {model_name}: {name}: {size['final'] / 2**20:.3g} / {size['peak'] / 2**20:.3g}")
    print(f"\nReport: {results.report.resolve()}")


def _cmd_plan(args) -> None:
    from tl_moe.pipeline.options import options_from_arguments
    from tl_moe.pipeline.plan import check_fits, plan_run

    json_path = None if args.json is None else _writable_json(args.json, getattr(args, "out", None))
    plan = plan_run(options_from_arguments(args))
    print(plan.summary())
    check_fits(plan)
    print("It fits in the memory available.")
    estimate = None
    if not args.no_calibration:  # after every check: a refused run loads nothing
        from tl_moe.pipeline.calibration import calibrate

        estimate = calibrate(plan)
        print(estimate.summary())
    if json_path is not None:
        import json

        record = {"memory": plan.to_dict(), "time": None if estimate is None else estimate.to_dict()}
        json_path.write_text(json.dumps(record, indent=2))
        print(f"Plan written to {json_path.resolve()}")


def _writable_json(name: str, out: Path | None) -> Path:
    """``--json``'s path, refused in one line when it is empty, names a folder (an existing one or with a
    trailing separator), lies in a folder that does not exist or cannot be written (a file cannot be
    created and removed in it), or is the run's ``--out`` folder."""
    path = Path(name)
    problem = None
    if not name.strip():
        problem = "empty"
    elif path.is_dir() or name.endswith(("/", "\\")):
        problem = "a folder"
    elif not path.parent.is_dir():
        problem = "in a folder that does not exist"
    elif not _can_write_in(path.parent):
        problem = "in a folder that cannot be written"
    elif out is not None and path.resolve() == Path(out).resolve():
        problem = "the run's --out folder"
    if problem is not None:
        raise InputError(f"--json {name!r} is {problem}; accepted: a file path in an existing folder.")
    return path


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created (and removed) in ``folder``: tried, not guessed from permissions."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _cmd_explain(args) -> None:
    from tl_moe.pipeline import run
    from tl_moe.pipeline.options import options_from_arguments

    if "analyses" in vars(args):
        raise InputError(
            f"tl-moe explain runs only the 'explain' analysis, so --analyses {args.analyses} is not accepted "
            "here; to run it beside others: tl-moe analyze --analyses explain,NAME,..."
        )
    results = run(options_from_arguments(args).replace(analyses=("explain",)))
    print(results["explain"].labeling.summary.round(3).to_string(index=False))
    print(f"Report: {results.report.resolve()}")


#: The environment variable naming plugin modules to import before the flags are built (comma list).
PLUGINS_VARIABLE = "TL_MOE_PLUGINS"


class _Parser(argparse.ArgumentParser):
    """An argument parser that takes only whole flag names (``--above-share.t`` is not
    ``--above-share.threshold``): a setting is never set by a guess."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _plugin_names(argv: list[str]) -> tuple[list[str], list[str]]:
    """The plugin modules named by ``TL_MOE_PLUGINS`` and each ``--plugin MODULE`` of ``argv`` (in
    that order), and ``argv`` without those flags."""
    scanner = _Parser(add_help=False)
    scanner.add_argument("--plugin", action="append", default=[])
    given, rest = scanner.parse_known_args(argv)
    from_environment = [
        name.strip() for name in os.environ.get(PLUGINS_VARIABLE, "").split(",") if name.strip()
    ]
    return from_environment + given.plugin, rest


def import_plugin(name: str) -> None:
    """Import the plugin ``name`` (a module name, found from the current folder as ``python -m``
    does, or a path to a ``.py`` file), so that the analyses it registers exist; one line if it fails."""
    try:
        if name.endswith(".py"):
            path = Path(name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise FileNotFoundError(f"no such file {str(path)!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            importlib.import_module(name)
    except Exception as error:  # any failure of the user's module is named, in one line
        sys.modules.pop(Path(name).stem if name.endswith(".py") else name, None)
        detail = " ".join(str(error).split())
        raise InputError(
            f"the plugin {name!r} (from --plugin or {PLUGINS_VARIABLE}) could not be imported: "
            f"{type(error).__name__}: {detail}; give a module name importable from the current folder "
            "or PYTHONPATH, or a path to a .py file."
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tl-moe", description="Expert-level interpretability of MoE models.")
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE",
        help="import MODULE (a module name or a .py file) before anything else, so that the analyses "
        f"it registers and their --NAME.FIELD flags exist; repeatable; {PLUGINS_VARIABLE}=mod1,mod2 "
        "does the same",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    from tl_moe.pipeline import registry
    from tl_moe.pipeline.options import add_option_arguments

    analyze = commands.add_parser("analyze", help="run the analyses in one pass and write an HTML report")
    add_option_arguments(analyze, analysis_help=registry.help_text())
    analyze.set_defaults(func=_cmd_analyze)
    explain = commands.add_parser("explain", help="label every expert and score the labels against controls")
    add_option_arguments(
        explain,
        analysis_help="not accepted: this command runs only the 'explain' analysis (use tl-moe analyze)",
    )
    explain.set_defaults(func=_cmd_explain)

    plan = commands.add_parser(
        "plan",
        help="estimate a run's memory from the models' configs, and its wall time from a short calibration "
        "(a few forwards of each model and a probe fit, timed on this machine)",
    )
    add_option_arguments(plan, analysis_help=registry.help_text())
    plan.add_argument(
        "--no-calibration",
        "--no-calibrate",
        dest="no_calibration",
        action="store_true",
        help="configs alone: no weights loaded, no time estimate",
    )
    plan.add_argument(
        "--json",
        metavar="PATH",
        help="also write the plan (memory per pass; time per pass, probe fits and total, with the "
        "calibration they rest on) to PATH as JSON",
    )
    plan.set_defaults(func=_cmd_plan)

    zoo = commands.add_parser("zoo", help="the toy model zoo").add_subparsers(
        dest="zoo_command", required=True
    )
    zoo.add_parser("list", help="list toy models").set_defaults(func=_cmd_zoo_list)
    train = zoo.add_parser("train", help="train toy models (resumable)")
    train.add_argument("names", nargs="*")
    train.add_argument("--all", action="store_true")
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--device", default=None)
    train.add_argument(
        "--out-root", type=Path, default=None, help="write here instead of the package's checkpoints"
    )
    train.set_defaults(func=_cmd_zoo_train)
    zoo.add_parser("losses", help="validation loss per domain vs the unigram baseline").set_defaults(
        func=_cmd_zoo_losses
    )
    evaluate = zoo.add_parser(
        "evaluate", help="recompute the shipped family's losses from its weights (the README's zoo numbers)"
    )
    evaluate.add_argument("--out", type=Path, default=Path("docs/results/toy_zoo.json"))
    evaluate.set_defaults(func=_cmd_zoo_evaluate)

    hooks = commands.add_parser("hooks", help="the hook-point table, or a model's hook names")
    hooks.add_argument("model", nargs="?", default=None)
    hooks.add_argument("--device", default=None)
    hooks.add_argument(
        "--architectures",
        action="store_true",
        help="list the MoE architectures tl_moe loads and hooks, and those it refuses (with why)",
    )
    hooks.set_defaults(func=_cmd_hooks)

    corpus = commands.add_parser("corpus", help="the corpus").add_subparsers(
        dest="corpus_command", required=True
    )
    stats = corpus.add_parser("stats", help="documents, characters and tokens per domain and split")
    stats.add_argument("--corpus", default=None)
    stats.set_defaults(func=_cmd_corpus_stats)
    return parser


_SETTING_FLAG = re.compile(r"--([A-Za-z][\w-]*)\.([\w-]*)")


def _unknown_setting(flag: str) -> str | None:
    """Why ``flag`` (an unrecognized ``--NAME.key``) is refused, naming what NAME accepts; None when
    ``flag`` has not that shape."""
    import dataclasses

    from tl_moe.pipeline import catalog

    match = _SETTING_FLAG.fullmatch(flag.split("=", 1)[0])
    if match is None:
        return None
    analysis = match.group(1).replace("-", "_")
    if analysis not in catalog.TABLE:
        return (
            f"{flag}: there is no analysis {analysis!r}; choose from {', '.join(catalog.TABLE)} "
            "(an analysis of your own: tl-moe --plugin MODULE analyze ...)."
        )
    config_class = catalog.config_class(analysis)
    specs = dataclasses.fields(config_class) if config_class is not None else ()
    fields = [spec.name for spec in specs if spec.metadata.get("cli", True)]  # those that are flags
    accepted = ", ".join(f"--{match.group(1)}.{name.replace('_', '-')}" for name in fields) or "none"
    return f"{flag} is not a setting of the {analysis} analysis; accepted: {accepted}."


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Inside, the package's own warnings print as one line, ``tl-moe: warning: MESSAGE`` (as errors print
    ``tl-moe: error: ...``), not as Python's ``path:line: UserWarning:`` and the source line; warnings of
    other packages keep Python's format."""
    import warnings

    package = Path(__file__).resolve().parent
    python_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        if issubclass(category, UserWarning) and package in Path(filename).resolve().parents:
            return f"tl-moe: warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = python_format


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tl-moe`` command."""
    plugins, argv = _plugin_names(sys.argv[1:] if argv is None else list(argv))
    try:
        for plugin in plugins:
            import_plugin(plugin)
    except InputError as error:
        _Parser(prog="tl-moe").exit(2, f"tl-moe: error: {error}\n")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        reason = next((r for r in map(_unknown_setting, unknown) if r is not None), None)
        if reason is None:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.exit(2, f"tl-moe: error: {reason}\n")
    try:
        with one_line_warnings():
            args.func(args)
    except InputError as error:
        # Known bad input: the message names the input and what is accepted; no traceback.
        # Anything else is a bug and keeps its traceback.
        parser.exit(2, f"tl-moe: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, "tl-moe: interrupted; rerun the same command to resume.\n")


if __name__ == "__main__":
    main(sys.argv[1:])
