"""The ``sgm`` command: one sub-command per stage (also ``python -m sgm``).

Each sub-command runs the stage of the same name in ``sgm.stages`` (``coarsen-file`` is
``sgm.stages.coarsen_file``; a test keeps the two lists equal). Each Snakemake rule calls one of
these and redirects its output to the rule's log, so an analyst can rerun any stage by hand with
the same arguments. Bad input ends with one line on stderr
naming the file, the variable and the problem, and exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
from collections.abc import Callable

from sgm import __version__

log = logging.getLogger("sgm")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, ``sgm <command>: error: <problem>``, and exit status 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    """A positive whole number (threads, shards)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not ≥ 1")
    return value


def _index(text: str) -> int:
    """A whole number ≥ 0 (a shard's index)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _ingest(a: argparse.Namespace) -> None:
    from sgm.stages.ingest import ingest

    ingest(a.spec, a.out)


def _observe(a: argparse.Namespace) -> None:
    from sgm.stages.observe import observe

    observe(a.spec, a.fields, a.out, operator=a.operator)


def _set_threads(n: int | None) -> None:
    """Cap torch's intra-op threads at the job's share of cores (no oversubscription)."""
    if n:
        import torch

        torch.set_num_threads(n)


def _train(a: argparse.Namespace) -> None:
    from sgm.stages.train import train_stage

    _set_threads(a.threads)
    train_stage(a.spec, a.fields, a.obs, a.out, a.settings, workdir=a.workdir,
                progress=not a.no_progress)


def _sample(a: argparse.Namespace) -> None:
    from sgm.stages.sample import sample_stage

    _set_threads(a.threads)
    sample_stage(a.model, a.obs, a.out, a.settings, shard=(a.shard, a.shards),
                 split=a.split, progress=not a.no_progress, tuning=a.tuning)


def _tune_sampler(a: argparse.Namespace) -> None:
    from sgm.stages.tune_sampler import tune_sampler

    _set_threads(a.threads)
    tune_sampler(a.model, a.fields, a.obs, a.out, a.settings, progress=not a.no_progress)


def _distill(a: argparse.Namespace) -> None:
    from sgm.stages.distill import distill_stage

    _set_threads(a.threads)
    distill_stage(a.model, a.fields, a.obs, a.out, a.settings, workdir=a.workdir,
                  progress=not a.no_progress)


def _export(a: argparse.Namespace) -> None:
    from sgm.stages.export import export

    export(a.posterior, a.out, chunks=a.chunks)


def _products(a: argparse.Namespace) -> None:
    from sgm.stages.products import products

    products(a.posterior, a.out, quantiles=a.quantiles, thresholds=a.thresholds,
             chunks=a.chunks)


def _gather(a: argparse.Namespace) -> None:
    from sgm.stages.gather import gather_shards

    gather_shards(a.shards, a.out)


def _evaluate(a: argparse.Namespace) -> None:
    from sgm.stages.evaluate import evaluate

    evaluate(a.fields, a.obs, a.posterior, a.metrics, a.maps, seed=a.seed,
             thresholds=a.thresholds)


def _report(a: argparse.Namespace) -> None:
    from sgm.stages.report import report

    report(a.fields, a.obs, a.posterior, a.metrics, a.loss, a.out,
           n_maps=a.n_maps, threshold=a.threshold, title=a.title, tuning=a.tuning)


def _compare(a: argparse.Namespace) -> None:
    from sgm.stages.compare import compare

    compare(a.run, a.out, a.csv)


def _coarsen_file(a: argparse.Namespace) -> None:
    from sgm.stages.coarsen_file import coarsen_file

    coarsen_file(a.spec, a.source, a.variable, a.out, time_slice=a.time_slice,
                 fields_path=a.fields)


def _observe_external(a: argparse.Namespace) -> None:
    from sgm.stages.observe_external import observe_external

    observe_external(a.obs, a.file, a.variables, a.out, time_slice=a.time_slice)


def _report_external(a: argparse.Namespace) -> None:
    from sgm.stages.report_external import report_external

    report_external(a.obs, a.posterior, a.out, n_maps=a.n_maps, threshold=a.threshold,
                    title=a.title)


def _validate_spec(a: argparse.Namespace) -> None:
    from sgm.stages.validate_spec import validate_specs

    validate_specs(a.files)


def _export_schemas(a: argparse.Namespace) -> None:
    from sgm.stages.export_schemas import export_schemas

    export_schemas(a.out)


def _required(sp: argparse.ArgumentParser, *names: str) -> None:
    """Required path options ``--NAME``."""
    for name in names:
        sp.add_argument(f"--{name}", required=True)


def _report_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--n-maps", type=int, default=3, help="times shown as maps")
    sp.add_argument("--threshold", type=float, default=None, help="exceedance threshold")
    sp.add_argument("--title", default=None)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sgm", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"sgm {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    sp = add("ingest", _ingest, "data spec sources → fields.zarr")
    sp.add_argument("--spec", required=True)
    sp.add_argument("--out", required=True)

    sp = add("observe", _observe, "fields.zarr + operator → obs.zarr (val and test times)")
    sp.add_argument("--spec", required=True)
    sp.add_argument("--fields", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--operator", type=_json, default=None,
                    help="JSON: another operator than the spec's (an inversion), e.g. "
                    '{"kind": "stations", "file": "stations.csv", "noise_std": 0.1}')

    sp = add("train", _train, "train the conditional score model → model.pt")
    sp.add_argument("--spec", required=True)
    sp.add_argument("--fields", required=True)
    sp.add_argument("--obs", default=None,
                    help="obs.zarr: the observation model a conditional model learns for")
    sp.add_argument("--out", required=True)
    sp.add_argument("--settings", type=_json, default={}, help="JSON: {model: {...}, train: {...}}")
    sp.add_argument("--workdir", default=None, help="checkpoints, loss.csv (default: beside out)")
    sp.add_argument("--threads", type=_count, default=None, help="torch threads (default: all)")
    sp.add_argument("--no-progress", action="store_true")

    sp = add("sample", _sample, "model + obs.zarr → posterior.zarr")
    sp.add_argument("--model", required=True)
    sp.add_argument("--obs", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--settings", type=_json, default={}, help="JSON sampler settings")
    sp.add_argument("--split", default="test", help="split to sample; 'all': every time")
    sp.add_argument("--tuning", default=None,
                    help="tuning.json of sgm tune-sampler (needed with steps: auto)")
    sp.add_argument("--shard", type=_index, default=0, help="this job's shard, 0..shards-1")
    sp.add_argument("--shards", type=_count, default=1, help="number of shards of the times")
    sp.add_argument("--threads", type=_count, default=None, help="torch threads (default: all)")
    sp.add_argument("--no-progress", action="store_true")

    sp = add("tune-sampler", _tune_sampler,
             "model + validation split → tuning.json: the cheapest solver and step count that "
             "matches a high-NFE reference")
    _required(sp, "model", "fields", "obs", "out")
    sp.add_argument("--settings", type=_json, default={},
                    help="JSON: sampler settings with a tune section")
    sp.add_argument("--threads", type=_count, default=None, help="torch threads (default: all)")
    sp.add_argument("--no-progress", action="store_true")

    sp = add("distill", _distill,
             "conditional model.pt → onestep.pt: a one-step posterior sampler (score-of-mixture "
             "distillation; one network call per member)")
    _required(sp, "model", "fields", "obs", "out")
    sp.add_argument("--settings", type=_json, default={}, help="JSON distillation settings")
    sp.add_argument("--workdir", default=None,
                    help="checkpoints, distill_loss.csv (default: beside out)")
    sp.add_argument("--threads", type=_count, default=None, help="torch threads (default: all)")
    sp.add_argument("--no-progress", action="store_true")

    sp = add("gather", _gather, "posterior shards → one posterior.zarr")
    sp.add_argument("shards", nargs="+")
    sp.add_argument("--out", required=True)

    sp = add("evaluate", _evaluate, "posterior + truth + obs → metrics.json and maps.zarr")
    _required(sp, "fields", "obs", "posterior", "metrics", "maps")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--thresholds", type=_json, default={},
                    help='JSON: variable → tail thresholds in its units, e.g. {"pr": [10, 50]} '
                    "(default: the training fields' 90th, 99th and 99.9th percentiles)")

    sp = add("report", _report, "everything above → a self-contained HTML report")
    _required(sp, "fields", "obs", "posterior", "metrics", "loss", "out")
    _report_options(sp)
    sp.add_argument("--tuning", default=None, help="tuning.json of sgm tune-sampler")

    sp = add("compare", _compare, "metrics.json of several posteriors of one spec → one HTML "
             "page and a CSV that show them side by side")
    sp.add_argument("--run", action="append", required=True, metavar="LABEL=METRICS",
                    help="a posterior's label and its metrics.json (repeat, in display order)")
    _required(sp, "out", "csv")

    chunks = {"choices": ["time", "pixel"], "default": "time",
              "help": "chunk layout: time (a few whole maps per chunk, fast maps; default) or "
                      "pixel (every time of a block of pixels, fast time series)"}
    sp = add("export", _export, "posterior.zarr → a CF-1.10 NetCDF4 file for analysts' tools")
    _required(sp, "posterior", "out")
    sp.add_argument("--chunks", **chunks)

    sp = add("products", _products, "posterior.zarr → products.zarr: ensemble mean, std, "
             "quantiles and exceedance probabilities per time step")
    _required(sp, "posterior", "out")
    sp.add_argument("--quantiles", type=float, nargs="*", default=[0.05, 0.5, 0.95],
                    metavar="Q", help="quantile levels in [0, 1] (default: 0.05 0.5 0.95)")
    sp.add_argument("--thresholds", type=_json, default={},
                    help='JSON: variable → thresholds in its units, e.g. {"tas": [273.15]}')
    sp.add_argument("--chunks", **chunks)

    time_slice = {"nargs": 2, "metavar": ("START", "END"), "default": None,
                  "help": "only the times from START to END (YYYY-MM-DD, both included)"}
    sp = add("coarsen-file", _coarsen_file,
             "block-average a fine NetCDF file on the spec's grid into a coarse file")
    sp.add_argument("--spec", required=True)
    sp.add_argument("--source", required=True, help="file, or package:<package>/<path in it>")
    sp.add_argument("--variable", required=True, action="append",
                    help="variable name in the file (repeat for several)")
    sp.add_argument("--out", required=True, help="the coarse NetCDF file to write")
    sp.add_argument("--fields", default=None, help="fields.zarr whose grid the crop must match")
    sp.add_argument("--time-slice", **time_slice)

    sp = add("observe-external", _observe_external,
             "coarse file the model never saw + its obs.zarr → an obs store (split external)")
    sp.add_argument("--obs", required=True, help="the spec's obs.zarr (layout, grid, units)")
    sp.add_argument("--file", required=True, help="file, or package:<package>/<path in it>")
    sp.add_argument("--variables", type=_json, required=True,
                    help='JSON: sgm variable → name in the file, e.g. {"tas": "air_temperature"}')
    sp.add_argument("--out", required=True)
    sp.add_argument("--time-slice", **time_slice)

    sp = add("report-external", _report_external,
             "external obs + posterior → a self-contained HTML report without truth")
    _required(sp, "obs", "posterior", "out")
    _report_options(sp)

    sp = add("validate-spec", _validate_spec, "check data spec files and print every error")
    sp.add_argument("files", nargs="+")

    sp = add("export-schemas", _export_schemas, "write the JSON schemas of specs and config")
    sp.add_argument("--out", default="workflow/schemas")
    return p


def describe_error(exc: BaseException) -> str:
    """The one line a failure is told in: the file or option and the problem.

    Errors sgm raises for bad input already read so; a full disk or another operating-system
    error is told with its file; anything else is named as unexpected.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = exc.filename or "the output folder"
        return f"{where}: no space left on device (disk full or quota exceeded); nothing was " \
               "written, free space and rerun"
    if isinstance(exc, FileNotFoundError):
        return str(exc) if exc.filename is None else f"{exc.filename}: does not exist"
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied"
    if isinstance(exc, OSError):
        return f"{exc.filename or 'file'}: {exc.strerror or exc}"
    if isinstance(exc, ValueError):
        return str(exc).strip() or exc.__class__.__name__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected {exc.__class__.__name__}: {first} (rerun with -v for the traceback)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (already printed)
        return int(done.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"sgm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends in one line and exit 1
        if args.verbose:
            traceback.print_exc()
        print(f"sgm {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
