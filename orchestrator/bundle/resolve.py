"""The dependency closure an offline target needs, read from the wheels' own metadata.

Starting from the root requirements, every Requires-Dist whose marker holds on the *target*
(its Python, platform and the extras asked for) is followed. A package the target already has
ends the walk there: its version is checked, never replaced unless asked. What is left is
fetched one breadth of the graph at a time, and a version is fetched again when a requirement
found later excludes it, until nothing changes.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from orchestrator.bundle.target import (
    Requirement,
    SpecifierSet,
    Target,
    Version,
    canonicalize_name,
)
from orchestrator.bundle.wheel import Wheel

# Each round fetches what the last one found; real graphs (vLLM: ~150 packages) settle in <10.
MAX_ROUNDS = 25

# Fetch the best wheel for each requirement string ("name<spec"); same order, one wheel each.
Fetch = Callable[[list[str]], list[Wheel]]


class ResolveError(RuntimeError):
    """The closure cannot be built; the message names the package and who asked for it."""


@dataclass(frozen=True)
class Edge:
    """One requirement on a package, and which package (with extra) asked for it."""

    requirement: Requirement
    parent: str

    def describe(self) -> str:
        spec = str(self.requirement.specifier) or "any version"
        return f"{self.parent} wants {spec}"


@dataclass(frozen=True)
class Policy:
    """The sysadmin's decisions: what to leave out, force, or ship despite the target."""

    # name -> requirement that replaces every requirement on that name (known-bad pairs)
    overrides: Mapping[str, Requirement] = field(default_factory=dict)
    # name -> why it is left out (imported lazily and not needed for the models served)
    exclude: Mapping[str, str] = field(default_factory=dict)
    # names shipped even though the target has them (the bundle's copy then shadows the target's)
    replace: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Mismatch:
    name: str
    target_version: Version
    wanted: str
    edges: tuple[Edge, ...]

    def describe(self) -> str:
        asks = "; ".join(e.describe() for e in self.edges)
        return f"{self.name}: the target has {self.target_version}, but {asks}"


@dataclass
class Resolution:
    """What to ship, what the target provides, and why each package is there."""

    roots: list[Requirement]
    ship: dict[str, Wheel] = field(default_factory=dict)
    provided: dict[str, Version | None] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    edges: dict[str, list[Edge]] = field(default_factory=dict)
    rounds: int = 0

    def required_by(self, name: str) -> list[str]:
        return sorted({e.parent for e in self.edges.get(name, [])})

    def wants(self, name: str) -> str:
        """Every requirement on `name`, combined (empty: any version)."""
        return str(_combined(self.edges.get(name, [])))


def _combined(edges: Iterable[Edge]) -> SpecifierSet:
    spec = SpecifierSet()
    for edge in edges:
        spec &= edge.requirement.specifier
    return spec


class Resolver:
    """Closure of `roots` for `target` under `policy`, fetching wheels through `fetch`."""

    def __init__(
        self,
        target: Target,
        policy: Policy,
        fetch: Fetch,
        *,
        local: Iterable[Wheel] = (),
        prefer: Iterable[Wheel] = (),
    ) -> None:
        self.target = target
        self.policy = policy
        self.fetch = fetch
        # Wheels built here (the daemon): never fetched, and they win over any index.
        self.local = {w.name: w for w in local}
        # Wheels another environment of the same bundle ships: reused when they fit, so one
        # file serves both environments.
        self.prefer = {w.name: w for w in prefer}

    def resolve(self, roots: list[Requirement]) -> Resolution:
        chosen: dict[str, Wheel] = dict(self.local)
        for rounds in range(1, MAX_ROUNDS + 1):
            edges = self._walk(roots, chosen)
            before = dict(chosen)
            wanted = self._wanted(edges, chosen)
            if wanted:
                self._fetch_into(chosen, wanted, edges)
            elif chosen == before:  # a reused wheel's own dependencies need another walk
                return self._result(roots, edges, chosen, rounds)
        raise ResolveError(
            f"the dependency closure did not settle after {MAX_ROUNDS} rounds; "
            "pin the packages that keep changing with --override"
        )

    def _ships(self, name: str) -> bool:
        if name in self.policy.exclude:
            return False
        return name not in self.target.installed or name in self.policy.replace

    def _walk(self, roots: list[Requirement], chosen: Mapping[str, Wheel]) -> dict[str, list[Edge]]:
        edges: dict[str, list[Edge]] = defaultdict(list)
        queue = deque(Edge(r, "(requested)") for r in roots if self.target.applies(r.marker))
        expanded: set[tuple[str, str]] = set()
        while queue:
            edge = queue.popleft()
            name = canonicalize_name(edge.requirement.name)
            edge = self._overridden(name, edge)
            edges[name].append(edge)
            wheel = chosen.get(name)
            if not self._ships(name) or wheel is None:
                continue
            if not edge.requirement.specifier.contains(wheel.version, prereleases=True):
                continue  # refetched this round; its dependencies are walked next round
            for extra in ("", *sorted(edge.requirement.extras)):
                if (name, extra) in expanded:
                    continue
                expanded.add((name, extra))
                label = f"{name} {wheel.version}" + (f" [{extra}]" if extra else "")
                for req in self._dependencies(wheel, extra):
                    queue.append(Edge(req, label))
        return edges

    def _overridden(self, name: str, edge: Edge) -> Edge:
        override = self.policy.overrides.get(name)
        if override is None:
            return edge
        # Keep the extras asked for: an override pins the version, not the features.
        replaced = Requirement(str(override))
        replaced.extras = set(replaced.extras) | set(edge.requirement.extras)
        return Edge(replaced, f"{edge.parent} (overridden: {edge.requirement})")

    def _dependencies(self, wheel: Wheel, extra: str) -> list[Requirement]:
        target = self.target
        if not extra:
            return [r for r in wheel.requires if target.applies(r.marker)]
        # An extra adds only the requirements that hold with it and not without it.
        return [
            r
            for r in wheel.requires
            if r.marker is not None
            and target.applies(r.marker, extra)
            and not target.applies(r.marker)
        ]

    def _wanted(
        self, edges: Mapping[str, list[Edge]], chosen: dict[str, Wheel]
    ) -> dict[str, SpecifierSet]:
        wanted: dict[str, SpecifierSet] = {}
        for name, found in edges.items():
            if not self._ships(name):
                continue
            spec = _combined(found)
            have = chosen.get(name)
            if have is not None and spec.contains(have.version, prereleases=True):
                continue
            if name in self.local:
                raise ResolveError(self._conflict(name, found, have, "the local build"))
            preferred = self.prefer.get(name)
            if preferred is not None and spec.contains(preferred.version, prereleases=True):
                chosen[name] = preferred
                continue
            wanted[name] = spec
        return wanted

    def _fetch_into(
        self,
        chosen: dict[str, Wheel],
        wanted: Mapping[str, SpecifierSet],
        edges: Mapping[str, list[Edge]],
    ) -> None:
        names = sorted(wanted)
        try:
            wheels = self.fetch([f"{name}{wanted[name]}" for name in names])
        except ResolveError as exc:
            detail = "\n".join(
                f"  {n}{wanted[n] or ''}: " + "; ".join(e.describe() for e in edges[n])
                for n in names
            )
            raise ResolveError(f"{exc}\nrequested in this round:\n{detail}") from None
        for name, wheel in zip(names, wheels, strict=True):
            if wheel.name != name or not wanted[name].contains(wheel.version, prereleases=True):
                raise ResolveError(self._conflict(name, edges[name], wheel, "the index"))
            if not wheel.fits(self.target):
                raise ResolveError(
                    f"{wheel.filename} does not run on the target ({self.target.describe()})"
                )
            chosen[name] = wheel

    @staticmethod
    def _conflict(name: str, edges: list[Edge], got: Wheel | None, where: str) -> str:
        version = got.version if got is not None else "nothing"
        asks = "; ".join(e.describe() for e in edges)
        return f"{name}: {where} gave {version}, which does not satisfy: {asks}"

    def _result(
        self,
        roots: list[Requirement],
        edges: dict[str, list[Edge]],
        chosen: Mapping[str, Wheel],
        rounds: int,
    ) -> Resolution:
        out = Resolution(roots=roots, edges=dict(edges), rounds=rounds)
        for name in sorted(edges):
            if name in self.policy.exclude:
                out.excluded[name] = self.policy.exclude[name]
            elif self._ships(name):
                out.ship[name] = chosen[name]
            else:
                have = self.target.installed[name]
                out.provided[name] = have
                spec = _combined(edges[name])
                if have is not None and not spec.contains(have, prereleases=True):
                    unmet = tuple(
                        e for e in edges[name] if not e.requirement.specifier.contains(have, True)
                    )
                    out.mismatches.append(Mismatch(name, have, str(spec), unmet))
        return out
