"""Parse and write Prometheus text exposition (0.0.4; OpenMetrics' `# EOF` and exemplars skipped).

Small on purpose: the bench reads vLLM's counters with it; the control plane writes its /metrics
page with it and passes the engines' series on through `relabel`, which keeps them as written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\\n]|\\.)*)"\s*')
_UNESCAPE = re.compile(r"\\(.)")
# A well-formed sample line without spaces in its braces, exemplar or fractional timestamp: name,
# the label pairs as written, value, timestamp. `relabel` splices such lines without parsing them.
_PLAIN_PAIR = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
_PLAIN_SAMPLE = re.compile(
    rf"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{((?:{_PLAIN_PAIR}(?:,{_PLAIN_PAIR})*,?)?)\}})?"
    r"[ \t]+(\S+)(?:[ \t]+(-?\d+))?$"
)
_UNESCAPES = {"n": "\n", "\\": "\\", '"': '"'}
# Suffixes a sample may add to its family's name (histograms, summaries, OpenMetrics counters).
_CREATED = "_created"
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", _CREATED, "_gsum", "_gcount", "_info")


class PromTextError(ValueError):
    """A line of exposition text that does not follow the format."""

    def __init__(self, line_no: int, line: str, why: str) -> None:
        super().__init__(f"line {line_no}: {why}: {line[:200]!r}")
        self.line_no = line_no


@dataclass(frozen=True)
class Sample:
    """One sample line: `name{labels} value [timestamp]`."""

    name: str
    labels: Mapping[str, str]
    value: float
    timestamp_ms: int | None = None

    def matches(self, match: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in match.items())


@dataclass
class Family:
    """A metric family: the `# TYPE`/`# HELP` header and the samples that belong to it."""

    name: str
    type: str = "untyped"
    help: str = ""
    samples: list[Sample] = field(default_factory=list)

    def lines(self) -> list[str]:
        """HELP, TYPE, then the samples, as exposition text lines."""
        head = []
        if self.help:
            help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
            head.append(f"# HELP {self.name} {help_text}")
        if self.type != "untyped":
            head.append(f"# TYPE {self.name} {self.type}")
        return head + [format_sample(s) for s in self.samples]


@dataclass
class TextFamily:
    """A family passed on as written: its HELP/TYPE lines and its sample lines."""

    name: str
    header: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.header + self.samples


@dataclass(frozen=True)
class Histogram:
    """A histogram summed over label sets: cumulative counts by upper bound, sum and count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    def since(self, earlier: Histogram) -> Histogram:
        """What was observed after `earlier`, a reading of the same counters taken before."""
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.sum - earlier.sum,
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear within the bucket; None with no observations."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.buckets[-1][1]
        lower_le, lower_n = 0.0, 0.0
        for le, n in self.buckets:
            if n >= rank:
                if math.isinf(le):  # beyond the last finite bound: that bound is all we know
                    return lower_le
                if n == lower_n:
                    return le
                return lower_le + (le - lower_le) * (rank - lower_n) / (n - lower_n)
            lower_le, lower_n = le, n
        return lower_le


@dataclass
class Exposition:
    """Parsed exposition text; families keep the order in which they appeared."""

    families: dict[str, Family] = field(default_factory=dict)

    def samples(self) -> Iterator[Sample]:
        for family in self.families.values():
            yield from family.samples

    def find(self, name: str, match: Mapping[str, str] | None = None) -> list[Sample]:
        """Samples named `name` whose labels include every pair of `match`."""
        want = match or {}
        return [s for s in self.samples() if s.name == name and s.matches(want)]

    def total(self, name: str, match: Mapping[str, str] | None = None) -> float | None:
        """Sum of `name` over its (optionally filtered) label sets; None when no sample matches."""
        found = self.find(name, match)
        return math.fsum(s.value for s in found) if found else None

    def histogram(self, name: str, match: Mapping[str, str] | None = None) -> Histogram | None:
        """Histogram `name` (without suffix) summed over label sets; None when absent."""
        buckets: dict[float, float] = {}
        for s in self.find(f"{name}_bucket", match):
            le = float(s.labels.get("le", "+Inf"))
            buckets[le] = buckets.get(le, 0.0) + s.value
        total_sum, count = self.total(f"{name}_sum", match), self.total(f"{name}_count", match)
        if not buckets and count is None:
            return None
        return Histogram(tuple(sorted(buckets.items())), total_sum or 0.0, count or 0.0)


def parse(text: str) -> Exposition:
    """Parse exposition text; raises PromTextError naming the first bad line."""
    expo = Exposition()
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            _parse_comment(expo, line)
            continue
        sample = _parse_sample(line_no, line)
        _family_for(expo, sample.name).samples.append(sample)
    return expo


def _parse_comment(expo: Exposition, line: str) -> None:
    parts = line[1:].strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in ("HELP", "TYPE"):
        return  # a plain comment, or OpenMetrics' `# EOF`
    family = expo.families.setdefault(parts[1], Family(parts[1]))
    rest = parts[2] if len(parts) > 2 else ""
    if parts[0] == "TYPE":
        family.type = rest.strip() or "untyped"
    else:
        family.help = _unescape(rest)


def _unescape(text: str) -> str:
    # Unknown escapes are kept as written rather than rejected.
    return _UNESCAPE.sub(lambda m: _UNESCAPES.get(m[1], m[0]), text)


def _family_for(expo: Exposition, sample_name: str) -> Family:
    name = _owner(sample_name, expo.families)
    return expo.families.setdefault(name, Family(name))


def _owner(sample_name: str, families: Collection[str]) -> str:
    """The family a sample belongs to: its own name if that is one, else its name less a suffix."""
    if sample_name in families:
        return sample_name
    for suffix in _SUFFIXES:
        base = sample_name.removesuffix(suffix)
        if base != sample_name and base in families:
            return base
    return sample_name


def _parse_sample(line_no: int, line: str) -> Sample:
    m = _NAME.match(line)
    if m is None:
        raise PromTextError(line_no, line, "expected a metric name")
    name, pos = m[0], m.end()
    labels: dict[str, str] = {}
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    if pos < len(line) and line[pos] == "{":
        pos += 1
        while True:
            while pos < len(line) and line[pos] in " \t":
                pos += 1
            if pos < len(line) and line[pos] == "}":
                pos += 1
                break
            lm = _LABEL.match(line, pos)
            if lm is None:
                raise PromTextError(line_no, line, 'bad label (want name="value")')
            labels[lm[1]] = _unescape(lm[2])
            pos = lm.end()
            if pos < len(line) and line[pos] == ",":
                pos += 1
            elif pos >= len(line) or line[pos] != "}":
                raise PromTextError(line_no, line, "expected ',' or '}' after a label")
    # An OpenMetrics exemplar (` # {...} v`) may follow the value; it is not part of the sample.
    fields = line[pos:].split("#", 1)[0].split()
    if not fields or len(fields) > 2:
        raise PromTextError(line_no, line, "expected a value and an optional timestamp")
    try:
        # float() takes "+Inf", "-Inf" and "NaN" in any case, as the format allows.
        value = float(fields[0])
        timestamp = int(float(fields[1])) if len(fields) == 2 else None
    except ValueError:
        raise PromTextError(line_no, line, "value or timestamp is not a number") from None
    return Sample(name, labels, value, timestamp)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    """Format like prometheus_client: `+Inf`, `-Inf`, `NaN`, otherwise Python's repr."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def format_sample(sample: Sample) -> str:
    labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sample.labels.items())
    text = f"{sample.name}{{{labels}}} " if labels else f"{sample.name} "
    text += format_value(sample.value)
    return text if sample.timestamp_ms is None else f"{text} {sample.timestamp_ms}"


def render(families: Iterable[Family | TextFamily]) -> str:
    """Write families as exposition text (HELP, TYPE, then samples), newline-terminated."""
    lines = [line for family in families for line in family.lines()]
    return "\n".join(lines) + "\n" if lines else ""


def relabel(text: str, only: Collection[str], labels: Mapping[str, str]) -> dict[str, TextFamily]:
    """The families of `text` named in `only` (less their `_created` gauges), each sample with
    `labels` put first.

    Values, timestamps and a sample's own labels pass as written; where a sample has a label of
    the same name as one of `labels`, ours replaces it. Raises PromTextError on a line that is
    neither a comment nor starts with a metric name, and on a bad sample of a kept family.
    """
    # Every name a wanted family's header or sample may carry: one set lookup per line. Not the
    # `_created` gauges prometheus_client writes beside each counter and histogram: a creation
    # time as a separate gauge family that Prometheus stores as one more series per engine.
    wanted = {f + s for f in only for s in ("", *_SUFFIXES) if s != _CREATED}
    ours = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
    clash = re.compile("(?:^|,)(?:" + "|".join(map(re.escape, labels)) + ')="') if labels else None
    known = set(only)
    out: dict[str, TextFamily] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            parts = line[1:].split(None, 2)
            if len(parts) >= 2 and parts[0] in ("HELP", "TYPE") and parts[1] in wanted:
                known.add(parts[1])
                family = out.get(parts[1]) or out.setdefault(parts[1], TextFamily(parts[1]))
                family.header.append(line)
            continue
        name = _NAME.match(line)
        if name is None or name[0] not in wanted:
            if line and name is None:
                raise PromTextError(line_no, line, "expected a metric name")
            continue
        m = _PLAIN_SAMPLE.match(line)
        if m is not None and not (clash and m[2] and clash.search(m[2])) and _is_number(m[3]):
            inner = f"{ours},{m[2]}" if ours and m[2] else ours or m[2] or ""
            spliced = f"{m[1]}{{{inner}}} {m[3]}" if inner else f"{m[1]} {m[3]}"
            written = spliced if m[4] is None else f"{spliced} {m[4]}"
        else:
            s = _parse_sample(line_no, line)
            merged = {**labels, **s.labels, **labels}  # ours first, and ours on a clash
            written = format_sample(Sample(s.name, merged, s.value, s.timestamp_ms))
        owner = _owner(name[0], known)
        family = out.get(owner) or out.setdefault(owner, TextFamily(owner))
        family.samples.append(written)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def merge(pages: Iterable[Mapping[str, TextFamily]]) -> list[TextFamily]:
    """One family per name across pages, samples in page order; the first header seen is kept."""
    merged: dict[str, TextFamily] = {}
    for page in pages:
        for name, family in page.items():
            into = merged.setdefault(name, TextFamily(name, list(family.header)))
            into.samples.extend(family.samples)
    return list(merged.values())
