"""``aaq run | validate | list | schema | report``: argument parsing, printing and exit codes, no logic.

Exit codes: 0 done and every accuracy target met; 2 bad input (spec, model, data,
plugin); 3 finished but a target was not met (the best model is still written);
128 + N interrupted by signal N (SIGINT 130, SIGTERM 143, SIGHUP 129; the best model
so far is published as a pair when an algorithm has one); 1 anything else. A failure
prints one line (and, for ``run``, where its log is); the traceback only at debug level.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from aaq.errors import AaqError, Interrupted

logger = logging.getLogger("aaq.cli")

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_TARGET_MISSED = 0, 1, 2, 3
LOG_FILE = "aaq.log"
HTML_FILE = "report.html"
HISTORY_FILE = "tuning_history.jsonl"  # written by Tuning as its trials end (aaq.tuning.history)
KEPT_FILES = (HISTORY_FILE, "tuning_rankings.jsonl", "tuning_spec.json")
"""What a later ``--resume`` reads (``aaq.resume.FILES``): published with the pair, kept when nothing is."""


def _cmd_run(args: argparse.Namespace) -> int:
    """Quantize the spec's model; write the model, report.json, report.html and the log."""
    from aaq.pipeline import Pipeline
    from aaq.resume import SPEC_FILE, keeps_history, previous_run, spec_record

    pipeline = Pipeline(args.spec, progress=not args.no_progress, evaluate=False if args.no_evaluate else None)
    out_dir = Path(args.output_dir) if args.output_dir else _default_output_dir(pipeline.spec)
    previous = previous_run(out_dir, pipeline.spec.resolved, args.spec) if args.resume else None
    run, protect = _open_run_folder(out_dir, pipeline.spec, args.spec, html=not args.no_html)
    file_handler = logging.FileHandler(run.file(LOG_FILE), mode="w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("aaq").addHandler(file_handler)
    interrupted = None
    try:
        if keeps_history(pipeline.spec.resolved):  # what a later --resume checks the spec against
            run.write(SPEC_FILE, spec_record(pipeline.spec.resolved))
        try:
            result = pipeline.run(output_dir=run.path, resume_from=previous)  # files written as it goes join the pair
        except Interrupted as exc:
            if exc.result is None:
                raise
            result, interrupted = exc.result, exc
            _log_interrupted(exc)
        for name in KEPT_FILES:
            run.file(name)  # published when Tuning wrote them
        extra = {} if args.no_html else _report_html(result)
        model_path = result.save(run, protect=protect, extra_files=extra)
    except BaseException as exc:  # nothing is published; the run's log says why and stays (and what resumes)
        _log_failure(file_handler, exc)
        _detach(file_handler)
        exc.aaq_log = run.abandon(keep=(LOG_FILE, *KEPT_FILES)) / LOG_FILE  # type: ignore[attr-defined]
        raise
    finally:
        _detach(file_handler)
    from aaq.accuracy.summary import latency_clause

    for record in result.algorithms:
        if record.summary.get("headline"):
            latency = record.summary.get("latency")
            speed = f"; {latency_clause(latency)}" if isinstance(latency, dict) and "ratio" in latency else ""
            print(f"{record.name}: {record.summary['headline']}{speed}")
    for name, m in result.metrics.items():
        print(m.describe(name))
    if not result.evaluated and interrupted is None:
        print("metrics: not measured (quantize-only run: --no-evaluate / evaluate: false)")
    print(f"model: {model_path}")
    print(f"report: {out_dir / 'report.json'}")
    if HTML_FILE in extra:
        print(f"html: {out_dir / HTML_FILE}")
    if interrupted is not None:
        more = "; continue with --resume" if keeps_history(pipeline.spec.resolved) else ""
        print(f"aaq: interrupted by {interrupted.signal_name}: wrote the best model so far and its report "
              f"(\"interrupted\": true) as one pair{more}", file=sys.stderr)
        return 128 + interrupted.signum
    if not result.target_met:
        print("accuracy target NOT met: the best model found was written (see report.json)")
        return EXIT_TARGET_MISSED
    return EXIT_OK


def _log_interrupted(exc: Interrupted) -> None:
    logger.warning("interrupted by %s: writing the best model so far and its report (not measured again)",
                   exc.signal_name)


def _open_run_folder(out_dir: Path, spec, spec_path: str, *, html: bool):
    """This run's private folder in ``out_dir``, refused before any work if it would replace an input."""
    from aaq.output import RunFolder
    from aaq.report import input_paths, output_filename

    protect = [*input_paths(spec.resolved), spec_path]
    names = [output_filename(spec.model_name), "report.json", LOG_FILE, *KEPT_FILES] + ([HTML_FILE] if html else [])
    return RunFolder.create(out_dir, names=names, protect=protect), protect


def _detach(handler: logging.Handler) -> None:
    logging.getLogger("aaq").removeHandler(handler)
    handler.close()


def _log_failure(handler: logging.Handler, exc: BaseException) -> None:
    """The run's own log says how it ended (the console gets its one line from ``main``)."""
    if isinstance(exc, KeyboardInterrupt):
        message, exc_info = f"run interrupted by {_signal_name(exc)}; nothing was published", None
    elif isinstance(exc, AaqError):
        message, exc_info = f"run failed: {exc}; nothing was published", None
    else:
        message = f"run failed: internal error: {type(exc).__name__}: {exc}; nothing was published"
        exc_info = (type(exc), exc, exc.__traceback__)
    record = logging.LogRecord("aaq.cli", logging.ERROR, __file__, 0, "%s", (message,), exc_info)
    try:
        handler.handle(record)
    except Exception:  # the log is information, never a reason to hide the real error
        pass


def _report_html(result) -> dict[str, bytes]:
    """report.html, published with report.json; failing to draw it is logged, never the run's failure."""
    from aaq.report_html import render_report

    try:
        return {HTML_FILE: render_report(json.loads(result.report_bytes())).encode("utf-8")}
    except Exception as exc:
        logger.debug("traceback", exc_info=True)
        logger.warning("report.html was NOT written (%s: %s); report.json is complete; draw it later with "
                       "python -m aaq report OUTPUT_DIR/report.json", type(exc).__name__, exc)
        return {}


def _cmd_report(args: argparse.Namespace) -> int:
    """Draw a report.json as one self-contained HTML page (default: report.html beside it)."""
    from aaq.report_html import write_report_html

    print(f"html: {write_report_html(args.report, args.output)}")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    """Check a spec (schema, plugin names, files, cross-references) without running a model."""
    from aaq.spec.validate import load_spec

    spec = load_spec(args.spec)  # the same checks as ``run``
    print(f"{args.spec}: valid ({len(spec.resolved['compression']['algorithms'])} algorithms)")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    """List registered algorithms, metrics, datasets, tuning strategies and objectives, where each comes from
    (and broken plugins, why)."""
    from aaq.algorithms.base import algorithms
    from aaq.engine.datasets import datasets
    from aaq.engine.metrics import metrics
    from aaq.tuning.objectives import objectives
    from aaq.tuning.strategies import strategies

    for title, registry in (("algorithms", algorithms), ("metrics", metrics), ("datasets", datasets),
                            ("strategies", strategies), ("objectives", objectives)):
        print(f"{title}:")
        for name in registry.names():
            print(f"  {name:<32} {registry.source(name)}")
        for name, error in sorted(registry.broken().items()):
            print(f"  {name:<32} {error.source or 'unknown origin'}  BROKEN: {error.reason}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of the spec, or of one algorithm's params."""
    from aaq.algorithms.base import algorithms
    from aaq.schemas import load_schema

    schema = algorithms.get(args.name).schema if args.name else load_schema("spec")
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def _default_output_dir(spec) -> Path:
    configured = spec.resolved.get("output", {}).get("dir")
    return Path(configured) if configured else Path("aaq-results") / spec.model_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aaq", description="Accuracy-aware post-training quantization "
                                                             "for ONNX models.")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run, "validate": _cmd_validate, "list": _cmd_list, "schema": _cmd_schema,
        "report": _cmd_report}
    for name, handler in commands.items():
        cmd = sub.add_parser(name, help=handler.__doc__, description=handler.__doc__)
        cmd.set_defaults(handler=handler)
        cmd.add_argument("--log-level", default=argparse.SUPPRESS,
                         choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
        if name in ("run", "validate"):
            cmd.add_argument("spec", help="the JSON spec file")
        if name == "run":
            cmd.add_argument("--resume", action="store_true",
                             help="continue the Tuning run interrupted (or finished) in the output directory from "
                                  "its tuning_history.jsonl: finished trials are not evaluated again; the spec "
                                  "must be the same but for Tuning's exit_policy")
            cmd.add_argument("--output-dir", help="where to write the model, report.json and the log "
                                                  "(default: the spec's output.dir, else aaq-results/NAME)")
            cmd.add_argument("--no-progress", action="store_true", help="no progress bars")
            cmd.add_argument("--no-html", action="store_true", help="do not write report.html beside report.json")
            cmd.add_argument("--no-evaluate", action="store_true",
                             help="quantize only: do not measure the float and final models on the dataset "
                                  "afterwards (the spec's evaluate: false); the report says so")
        if name == "report":
            cmd.add_argument("report", help="a report.json written by aaq run")
            cmd.add_argument("-o", "--output", help="the HTML file to write (default: report.html beside it)")
        if name == "schema":
            cmd.add_argument("name", nargs="?", help="an algorithm name; omit for the spec's envelope")
    return parser


class _TqdmHandler(logging.StreamHandler):
    """Log lines through ``tqdm.write`` so they do not shred an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _configure_logging(level: str) -> None:
    root = logging.getLogger("aaq")
    root.setLevel(level)
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(handler)


def _signal_name(exc: BaseException) -> str:
    signum = getattr(exc, "signum", signal.SIGINT)
    try:
        return signal.Signals(signum).name
    except ValueError:  # pragma: no cover
        return f"signal {signum}"


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` (a KeyboardInterrupt naming the signal) where the run is,
    while the command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum, frame):
        raise Interrupted(signum)

    previous = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signum = getattr(signal, name)
            previous[signum] = signal.signal(signum, raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        with _signals_interrupt():
            return args.handler(args)
    except AaqError as exc:
        logger.debug("traceback", exc_info=True)
        print(f"aaq: error: {exc}", file=sys.stderr)
        _print_log_note(exc)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (``aaq list | head``): nothing left to say
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP with no best model yet: 128 + the signal's number
        print(f"aaq: interrupted by {_signal_name(exc)}; nothing half-written was left (no best model yet: "
              f"nothing was published)", file=sys.stderr)
        _print_log_note(exc)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except Exception as exc:  # the promise: one line, traceback only at debug level
        logger.debug("traceback", exc_info=True)
        print(f"aaq: internal error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for the "
              f"traceback)", file=sys.stderr)
        _print_log_note(exc)
        return EXIT_ERROR


def _print_log_note(exc: BaseException) -> None:
    log = getattr(exc, "aaq_log", None)
    if log is not None:
        print(f"aaq: the previous results (if any) are untouched; this run's log: {log}", file=sys.stderr)
