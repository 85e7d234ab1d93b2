"""Data specs: the contract between a dataset and the pipeline (sources, variables, grid,
splits, observation operator, conditioning)."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import cftime
import numpy as np
import yaml
from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    NonNegativeInt,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sgm.config.base import (
    DATE_PATTERN,
    NAME_PATTERN,
    SpecError,
    StrictModel,
    read_yaml,
    validate,
)


class PackageFile(StrictModel):
    """A file shipped inside an installed Python package (found without a machine's path)."""

    package: str = Field(
        pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$",
        description="Name of an installed package, e.g. iris_sample_data (found from the "
        "installed distributions, never imported).",
    )
    path: str = Field(description="Relative path of the file inside the package (no '..').")

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        if not v or v.startswith("/") or ".." in v.replace("\\", "/").split("/"):
            raise ValueError("must be a relative path inside the package, without '..'")
        return v


class GaussianFieldSource(StrictModel):
    """A synthetic stationary Gaussian random field (the exact-posterior oracle)."""

    kind: Literal["gaussian_random_field"] = "gaussian_random_field"
    shape: tuple[int, int] = Field((32, 32), description="Grid size (ny, nx); periodic.")
    length_scale: float = Field(4.0, gt=0, description="Correlation length in pixels.")
    nu: float = Field(1.5, gt=0, description="Matern smoothness.")
    variance: float = Field(1.0, gt=0, description="Marginal variance (physical units squared).")
    mean: float = Field(0.0, description="Mean (physical units).")
    n_times: int = Field(2000, ge=3, description="Number of independent fields to generate.")
    seed: int = Field(0, description="Seed of the generator.")
    units: str = Field("1", description="Units written on the generated variable.")


class CensoredPowerSource(GaussianFieldSource):
    """A synthetic heavy-tailed field with a known marginal (the extremes oracle):
    P = scale · max(0, z + offset)^exponent, z a unit-variance Gaussian random field;
    dry with probability Φ(−offset) (``sgm.core.heavy_tailed``)."""

    kind: Literal["censored_power_field"] = "censored_power_field"
    scale: float = Field(4.0, gt=0, description="s in mm/day.")
    offset: float = Field(-0.3, description="c: the dry fraction is Φ(−c).")
    exponent: float = Field(3.0, gt=0, description="γ: the tail's heaviness.")
    units: str = Field("mm/day", description="Units written on the generated variable.")


class Source(StrictModel):
    """Where fields come from: exactly one of paths, package_file or synthetic."""

    paths: Annotated[
        list[str] | None,
        BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {
            "type": "string"}}, {"type": "null"}]}),
    ] = Field(
        None,
        description="A NetCDF file, glob pattern or Zarr store (folder), or a list of them, "
        "relative to the spec file; all files are concatenated along time, in time order.",
    )
    package_file: PackageFile | None = None
    synthetic: Annotated[
        Annotated[GaussianFieldSource, Tag("gaussian_random_field")]
        | Annotated[CensoredPowerSource, Tag("censored_power_field")],
        Discriminator(lambda v: (v.get("kind") if isinstance(v, dict) else v.kind)
                      or "gaussian_random_field"),
    ] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [k for k in ("paths", "package_file", "synthetic") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of paths, package_file, synthetic (got {given or 'none'})"
            )
        return self


class FieldRef(StrictModel):
    """A variable in a source: found by name or CF standard_name, at one level, in given units."""

    name: str = Field(pattern=NAME_PATTERN, description="Name in sgm's stores.")
    source_name: str | None = Field(
        None, description="Variable name in the source files (default: name, unless "
        "standard_name is given)."
    )
    standard_name: str | None = Field(
        None, description="CF standard_name to find the variable by when source_name is unset."
    )
    source: Source | None = Field(
        None, description="Where this variable is, when not in the spec's source."
    )
    units: str | None = Field(
        None, description="Units of the source variable: checked against its units attribute, "
        "or declared when it has none."
    )
    convert_to: str | None = Field(
        None, description="Convert to these units, e.g. degC from K, mm/day from kg m-2 s-1."
    )
    level: float | None = Field(
        None, description="Select this value of the vertical coordinate, e.g. 500."
    )
    level_units: str | None = Field(
        None, description="Units of level (e.g. hPa); the coordinate's own units when unset."
    )

    @model_validator(mode="after")
    def _consistent(self) -> FieldRef:
        if self.level_units is not None and self.level is None:
            raise ValueError("level_units needs level")
        if self.source is not None and self.source.synthetic is not None:
            raise ValueError("source: a variable's own source must be files (paths or "
                             "package_file), not synthetic")
        return self


class Variable(FieldRef):
    """One target variable (a channel of the model)."""

    name: str = Field(pattern=NAME_PATTERN, description="Name in sgm's stores, e.g. tas.")
    transform: Literal["none", "censored_power"] = Field(
        "none", description="Train in a transformed space: censored_power fits P = s·max(0, "
        "z + c)^γ on the training split (precipitation: zeros and a heavy tail; members are "
        "never negative). none: the variable itself (temperature)."
    )
    dry_threshold: float = Field(
        0.0, ge=0, description="With censored_power: values at or below this are dry."
    )
    max_missing_fraction: float = Field(
        0.0, ge=0, le=1, description="Largest fraction of missing values allowed in the "
        "selected fields; they are filled with the training split's mean at that pixel."
    )


class StaticField(FieldRef):
    """A time-invariant covariate (orography, land mask) on the target grid."""

    name: str = Field(
        pattern=NAME_PATTERN, description="Short name; stored as the variable static_<name>."
    )
    optional: bool = Field(
        False, description="Skip this covariate (with a warning) if its file or variable is absent."
    )
    fill_value: float | None = Field(
        None, description="Replace missing values by this (e.g. 0 for a land fraction over sea)."
    )


class PairedVariable(FieldRef):
    """Where a target variable's low-resolution counterpart is in the paired source."""

    name: str = Field(pattern=NAME_PATTERN, description="The target variable it pairs with.")


class Paired(StrictModel):
    """A low-resolution source aligned in time with the targets (real downscaling pairs).

    Its grid must be the targets' grid averaged over factor x factor blocks (operator.factor):
    every coarse cell centred on one block. It is written to a separate store beside fields.zarr.
    """

    source: Source
    variables: list[PairedVariable] | None = Field(
        None, description="Per target variable: how to find it in the paired source "
        "(default: as the target is found in its own source)."
    )

    @model_validator(mode="after")
    def _files(self) -> Paired:
        if self.source.synthetic is not None:
            raise ValueError("source: a paired source must be files (paths or package_file)")
        return self


class Region(StrictModel):
    """A lat/lon box in degrees; longitude bounds in either convention (−180..180 or 0..360)."""

    lat: tuple[float, float] | None = Field(None, description="(south, north), south < north.")
    lon: tuple[float, float] | None = Field(
        None, description="(west, east); west > east crosses 180° (or 0° with longitudes 0..360)."
    )

    @field_validator("lat")
    @classmethod
    def _lat(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not -90 <= v[0] < v[1] <= 90:
            raise ValueError("lat must be (south, north) with -90 <= south < north <= 90")
        return v

    @field_validator("lon")
    @classmethod
    def _lon(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (all(-180 <= b <= 360 for b in v) and v[0] != v[1]):
            raise ValueError("lon must be (west, east), two different values in -180..360")
        return v


def date_fields(text: str) -> tuple[int, ...]:
    """(year, month, day[, hour, minute[, second]]) of a YYYY-MM-DD[THH:MM[:SS]] text."""
    match = re.fullmatch(r"(-?\d+)-(\d+)-(\d+)(?:[ T](\d+):(\d+)(?::(\d+))?)?", text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a date YYYY-MM-DD[THH:MM[:SS]]")
    return tuple(int(g) for g in match.groups() if g is not None)


class DateRange(StrictModel):
    """Times from start to end, both included (a date without a time includes the whole day)."""

    start: str = Field(pattern=DATE_PATTERN, description="YYYY-MM-DD[THH:MM[:SS]]")
    end: str = Field(pattern=DATE_PATTERN, description="YYYY-MM-DD[THH:MM[:SS]]")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value.isoformat() if isinstance(value, dt.date) else value

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if date_fields(self.start) > date_fields(self.end):
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self

    def mask(self, times: np.ndarray) -> np.ndarray:
        """Which of ``times`` (cftime datetimes of one calendar) fall in the range."""

        def at(text: str) -> cftime.datetime:
            try:
                return cftime.datetime(*date_fields(text), calendar=times[0].calendar,
                                       has_year_zero=times[0].has_year_zero)
            except ValueError:
                raise ValueError(f"{text} is not a date of the {times[0].calendar} "
                                 "calendar") from None

        start, end = at(self.start), at(self.end)
        if len(date_fields(self.end)) == 3:
            return (times >= start) & (times < end + dt.timedelta(days=1))
        return (times >= start) & (times <= end)


SplitSize = Annotated[
    Annotated[float, Tag("count"), Field(gt=0)] | Annotated[DateRange, Tag("dates")],
    Discriminator(lambda v: "dates" if isinstance(v, dict | DateRange) else "count"),
]
SPLITS = ("train", "val", "test")


class Splits(StrictModel):
    """Time splits as counts (consecutive train → val → test), fractions, or date ranges."""

    train: SplitSize = Field(
        description="Count (≥ 1), fraction (< 1) or {start, end} of the training time steps."
    )
    val: SplitSize = Field(description="Count, fraction or {start, end} of validation steps.")
    test: SplitSize = Field(description="Count, fraction or {start, end} of test steps.")

    @model_validator(mode="after")
    def _one_kind(self) -> Splits:
        values = [getattr(self, s) for s in SPLITS]
        ranges = [v for v in values if isinstance(v, DateRange)]
        if ranges and len(ranges) != 3:
            raise ValueError("give all three splits as counts/fractions or all as date ranges")
        if ranges:
            spans = sorted((date_fields(r.start), date_fields(r.end), s)
                           for r, s in zip(ranges, SPLITS, strict=True))
            for (_, end, a), (start, _, b) in zip(spans[:-1], spans[1:], strict=True):
                if start <= end:
                    raise ValueError(f"the date ranges of {a} and {b} overlap")
        else:
            for s, v in zip(SPLITS, values, strict=True):
                if v >= 1 and v != int(v):
                    raise ValueError(f"{s}: {v} is neither a whole count nor a fraction < 1")
            if sum(v for v in values if v < 1) > 1:
                raise ValueError("the fractions add up to more than 1")
        return self

    def labels(self, times: np.ndarray) -> np.ndarray:
        """The split of every time step ('' for unused ones); ValueError if a split is empty."""
        n = len(times)
        labels = np.full(n, "", dtype=object)
        if isinstance(self.train, DateRange):
            if n == 0 or not isinstance(times[0], cftime.datetime):
                raise ValueError("date-range splits need a time axis decoded as dates")
            for s in SPLITS:
                rng = getattr(self, s)
                try:
                    chosen = rng.mask(times)
                except ValueError as exc:
                    raise ValueError(f"split {s} ({rng.start} to {rng.end}): {exc}") from None
                if not chosen.any():
                    raise ValueError(
                        f"split {s} ({rng.start} to {rng.end}) selects no time step; the "
                        f"source covers {times[0]} to {times[-1]}"
                    )
                labels[chosen] = s
            return labels
        counts = [int(round(v * n)) if v < 1 else int(v) for v in (self.train, self.val,
                                                                    self.test)]
        if min(counts) < 1 or sum(counts) > n:
            raise ValueError(
                "has {} time steps but the splits need {} + {} + {} (each ≥ 1)".format(n, *counts)
            )
        edges = np.cumsum([0, *counts])
        for s, a, b in zip(SPLITS, edges[:-1], edges[1:], strict=True):
            labels[a:b] = s
        return labels


NoiseStd = Annotated[
    float | dict[str, Annotated[float, Field(ge=0)]],
    Field(description="Observation noise std in the variable's physical units: one number for "
          "every variable, or a mapping {variable: std}."),
]


class OperatorSpec(StrictModel):
    """What every observation operator states: its noise (the operator itself is noise-free)."""

    noise_std: NoiseStd = 0.0

    @field_validator("noise_std")
    @classmethod
    def _non_negative(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        if isinstance(v, float | int) and v < 0:
            raise ValueError("must be ≥ 0")
        return v

    @property
    def grid_multiple(self) -> int:
        """Both grid sizes must be multiples of this (ingest crops the grid to them)."""
        return 1

    def params(self) -> dict[str, Any]:
        """The operator's parameters as ``sgm.core.operators.build_operator`` takes them."""
        return self.model_dump(exclude={"noise_std", "file"}, exclude_none=True)


class Coarsen(OperatorSpec):
    """Block averages over factor × factor cells."""

    kind: Literal["coarsen"] = "coarsen"
    factor: int = Field(ge=2, description="Block-average factor; the grid is cropped to divide.")

    @property
    def grid_multiple(self) -> int:
        return self.factor


class Sparse(OperatorSpec):
    """Values at a fixed set of grid pixels."""

    kind: Literal["sparse"] = "sparse"
    fraction: float | None = Field(None, gt=0, le=1, description="Fraction of pixels observed.")
    seed: int = Field(0, description="Seed for choosing the observed pixels (with fraction).")
    points: list[tuple[NonNegativeInt, NonNegativeInt]] | None = Field(
        None, min_length=1, description="Observed pixels [[row, column], ...] of the final grid."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Sparse:
        if (self.fraction is None) == (self.points is None):
            raise ValueError("give exactly one of fraction or points")
        return self


class Station(StrictModel):
    """A station at a latitude and longitude (degrees; either longitude convention)."""

    id: str = Field(min_length=1, description="Station identifier (unique).")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=360)


class Stations(OperatorSpec):
    """Station values, interpolated bilinearly from the grid at each station's coordinates."""

    kind: Literal["stations"] = "stations"
    stations: list[Station] | None = Field(
        None, min_length=1, description="The stations inline: [{id, lat, lon}, ...]."
    )
    file: str | None = Field(
        None, description="A CSV file with columns id, lat, lon (one station per line), "
        "relative to the spec file."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Stations:
        if (self.stations is None) == (self.file is None):
            raise ValueError("give exactly one of stations or file")
        return self

    def params(self) -> dict[str, Any]:
        if self.stations is None:
            raise ValueError("the station file has not been read (load the spec with load_spec)")
        return {"kind": "stations", "stations": [s.model_dump() for s in self.stations]}


class Blur(OperatorSpec):
    """A Gaussian blur of the field."""

    kind: Literal["blur"] = "blur"
    sigma_pixels: float = Field(gt=0, description="Gaussian blur standard deviation (pixels).")
    boundary: Literal["periodic", "reflect"] = Field("periodic", description="Edge handling.")


class Gaps(OperatorSpec):
    """Every grid value except inside lat/lon boxes: a field with missing data to infill."""

    kind: Literal["gaps"] = "gaps"
    boxes: list[tuple[float, float, float, float]] = Field(
        min_length=1, description="Boxes of missing data [[south, north, west, east], ...] in "
        "degrees of the stored grid's coordinates."
    )

    @field_validator("boxes")
    @classmethod
    def _ordered(cls, v: list[tuple[float, float, float, float]]) -> list:
        for box in v:
            if box[0] > box[1] or box[2] > box[3]:
                raise ValueError(f"box {list(box)} is not [south, north, west, east]")
        return v


LinearOperator = Annotated[Coarsen | Sparse | Stations | Blur | Gaps,
                           Field(discriminator="kind")]


class Saturating(OperatorSpec):
    """A nonlinear sensor: y = center + scale · tanh((A(x) − center) / scale), A linear."""

    kind: Literal["saturating"] = "saturating"
    of: LinearOperator = Field(description="The linear operator whose values saturate "
                               "(its own noise_std is ignored: give noise_std here).")
    center: float = Field(description="Reading where the sensor is linear (physical units).")
    scale: float = Field(gt=0, description="Readings approach center ± scale but never pass.")

    @property
    def grid_multiple(self) -> int:
        return self.of.grid_multiple

    def params(self) -> dict[str, Any]:
        return {"kind": "saturating", "of": self.of.params(), "center": self.center,
                "scale": self.scale}


class PythonOp(OperatorSpec):
    """An operator written in Python: ``def f(x, lat, lon)`` on Tensor[..., H, W], in a file
    next to the spec. This runs your own code: it needs ``trust_code: true``."""

    kind: Literal["python"] = "python"
    function: str = Field(pattern=r"^[A-Za-z_]\w*:[A-Za-z_]\w*$",
                          description="file:function, e.g. my_operators:tower_readings for "
                          "the function tower_readings in my_operators.py beside the spec.")
    trust_code: Literal[True] = Field(description="Must be true: sgm imports and runs the "
                                      "file (specs are otherwise data, never code).")
    folder: str | None = Field(None, description="Folder of the file, relative to the spec's "
                               "folder (default: the spec's folder); made absolute when the "
                               "spec is read.")

    def params(self) -> dict[str, Any]:
        if self.folder is None:
            raise ValueError("the operator's folder is unknown (load the spec with load_spec)")
        return {"kind": "python", "function": self.function, "folder": self.folder,
                "trust_code": True}


Operator = Annotated[Coarsen | Sparse | Stations | Blur | Gaps | Saturating | PythonOp,
                     Field(discriminator="kind")]


class Conditioning(StrictModel):
    """Extra conditioning channels besides the observation."""

    climatology: bool = Field(
        False, description="Add the training split's per-pixel mean of each variable as a channel."
    )


class DataSpec(StrictModel):
    """A dataset and its inverse problem: the contract between a dataset and the pipeline."""

    name: str = Field(pattern=NAME_PATTERN, description="Spec name (results folder).")
    description: str = ""
    source: Source
    variables: list[Variable] = Field(min_length=1)
    static: list[StaticField] = Field(
        [], description="Static covariates written as static_<name> (lat, lon) in fields.zarr."
    )
    region: Region | None = None
    longitudes: Literal["-180..180", "0..360"] = Field(
        "-180..180", description="Longitude convention of the stored grid (sorted ascending)."
    )
    splits: Splits
    operator: Operator
    paired: Paired | None = Field(
        None, description="Observed low-resolution fields instead of operator(x) + noise."
    )
    observation_seed: int = Field(
        1234, description="Seed of the observation noise drawn for the val/test observations."
    )
    conditioning: Conditioning = Conditioning()

    @model_validator(mode="after")
    def _consistent(self) -> DataSpec:
        names = [v.name for v in self.variables]
        for kind, group in (("variables", names), ("static", [s.name for s in self.static])):
            twice = sorted({n for n in group if group.count(n) > 1})
            if twice:
                raise ValueError(f"{kind}: names must be unique (repeated: {', '.join(twice)})")
        if self.source.synthetic is not None and (self.static or self.paired):
            raise ValueError("a synthetic source has no static covariates or paired source")
        eta = self.operator.noise_std
        if isinstance(eta, dict) and sorted(eta) != sorted(names):
            raise ValueError(f"operator.noise_std: give one value per variable ({', '.join(names)}"
                             f"), got {', '.join(sorted(eta)) or 'none'}")
        if self.paired is not None:
            if self.operator.kind != "coarsen":
                raise ValueError("paired: needs operator kind coarsen (its factor relates the "
                                 "grids)")
            unknown = [v.name for v in self.paired.variables or [] if v.name not in names]
            if unknown:
                raise ValueError(f"paired.variables: {', '.join(unknown)} not among the "
                                 f"target variables ({', '.join(names)})")
        return self

    def noise_std(self) -> dict[str, float]:
        """The observation noise std of every variable."""
        eta = self.operator.noise_std
        return {v.name: float(eta[v.name] if isinstance(eta, dict) else eta)
                for v in self.variables}

    def observation(self) -> dict[str, Any]:
        """The observation model's description (``sgm.core.observation.ObservationModel``),
        all but the grid, which ingest determines."""
        return {"operator": self.operator.params(), "variables": [v.name for v in self.variables],
                "noise_std": self.noise_std()}


class _SpecLoader(yaml.SafeLoader):
    """Safe YAML that keeps dates as text: model calendars have dates Python lacks (360_day)."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_station_file(path: Path) -> list[Station]:
    """Stations from a CSV file with a header line naming (at least) id, lat and lon.

    Every problem is a :class:`SpecError` naming the file and the line.
    """
    if not path.is_file():
        raise SpecError(f"{path}: station file does not exist")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: station file cannot be read ({exc})") from None
    rows = list(csv.reader(lines))
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in ("id", "lat", "lon") if c not in header]
    if missing:
        raise SpecError(f"{path}: line 1: the header lacks column(s) {', '.join(missing)} "
                        f"(it has: {', '.join(header) or 'nothing'})")
    where = {c: header.index(c) for c in ("id", "lat", "lon")}
    stations = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {c: row[i].strip() if i < len(row) else "" for c, i in where.items()}
        empty = [c for c, v in cells.items() if not v]
        if empty:
            raise SpecError(f"{path}: line {number}: missing value(s) for {', '.join(empty)}")
        try:
            stations.append(Station(id=cells["id"], lat=float(cells["lat"]),
                                    lon=float(cells["lon"])))
        except ValueError as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise SpecError(f"{path}: line {number}: station {cells['id']!r}: {detail}") from None
    if not stations:
        raise SpecError(f"{path}: the station file lists no station")
    return stations


def _resolve_files(spec: DataSpec, base: Path) -> DataSpec:
    """The spec with what its operator names beside it resolved (relative to ``base``): a
    station file read, a Python operator's folder made absolute."""
    op = spec.operator
    inner = op.of if isinstance(op, Saturating) else op
    update: dict[str, Any] | None = None
    if isinstance(inner, Stations) and inner.file is not None:
        update = {"stations": read_station_file(base / inner.file)}
    elif isinstance(inner, PythonOp) and not (inner.folder and Path(inner.folder).is_absolute()):
        update = {"folder": str((base / (inner.folder or ".")).resolve())}
    if update is None:
        return spec
    inner = inner.model_copy(update=update)
    op = op.model_copy(update={"of": inner}) if isinstance(op, Saturating) else inner
    return spec.model_copy(update={"operator": op})


def with_operator(spec: DataSpec, operator: dict[str, Any], origin: str, base: Path) -> DataSpec:
    """The spec with another observation operator (an inversion's, stated in the workflow
    config): validated like the spec's own, errors naming ``origin``; a station file is read
    relative to ``base``."""
    data = spec.model_dump(exclude_none=True)
    data["operator"] = operator
    return _resolve_files(validate(DataSpec, data, origin), base)


def load_spec(path: str | Path) -> DataSpec:
    """Read and validate a data spec file (dates stay text, to be read in the data's calendar).

    A station file named by the operator is read here, relative to the spec file, so that the
    returned spec states every station inline.
    """
    path = Path(path)
    return _resolve_files(validate(DataSpec, read_yaml(path, loader=_SpecLoader), path),
                             path.parent)


