"""Stochastic network generators g(theta, s) (Xie et al., ICCV 2019, Sec. 3.3 and the
supplement's DAG rule): random graphs turned into stage wirings.

A generator samples an undirected graph on nodes 0..N-1 whose labels already are the DAG order
(ER: a random permutation; BA: order of addition; WS: ring order); every edge points from the
smaller label to the larger. The input and output nodes are implicit (`input_nodes`,
`output_nodes`). Sampling uses only `numpy.random.default_rng`, so g(theta, s) is the same on any
machine and networkx release.

Deliberate deviations from the text: WS has N*K/2 edges ("N*K" is an erratum), and BA starts
from M isolated nodes as the text says (networkx >= 2.6 starts from a star).
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import networkx as nx
import numpy as np

from .trust.files import LIMITS, read_bounded

__all__ = ["GENERATORS", "register_generator", "sample", "sample_stages"]
__all__ += ["parse_seeds", "StageWiring", "NetworkWiring", "graph_statistics"]

Edge = Tuple[int, int]

# Name -> function(num_nodes, rng, **params) -> edges: see `register_generator`.
GENERATORS: Dict[str, Callable[..., Sequence[Edge]]] = {}


def register_generator(name: str):
    """Decorator: make `fn(num_nodes, rng, **params) -> undirected edges` generator `name`.
    Labels must be the DAG order; `fn` samples only from `rng` and raises ValueError for invalid
    params."""

    def deco(fn):
        if name in GENERATORS:
            raise ValueError(f"generator {name!r} is already registered")
        GENERATORS[name] = fn
        return fn

    return deco


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is invalid: expected a probability in [0, 1]")
    return float(value)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value, low: int, high: int, high_inclusive: bool = False) -> int:
    ok_range = _is_int(value) and (low <= value <= high if high_inclusive else low <= value < high)
    if not ok_range:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(
            f"{name}={value!r} is invalid: expected an integer in [{low}, {high}{bracket}"
        )
    return int(value)


# Bounds on what a wiring may hold, whether sampled or read from a file: the paper's stages have
# N = 32 nodes and ~64 edges; a model of MAX_NODES nodes per stage already takes seconds to build,
# and a file asking for 10^9 nodes must be refused before anything is allocated.
MAX_NODES = 2048
MAX_EDGES = 100_000


def _parse_json(text: str, where: str) -> dict:
    if len(text) > LIMITS["wiring"]:  # e.g. the wiring a checkpoint carries
        raise ValueError(f"{where}: {len(text)} characters, more than a wiring file may hold")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return data


@register_generator("er")
def erdos_renyi(num_nodes: int, rng: np.random.Generator, P: float) -> List[Edge]:
    """ER(P): each of the N(N-1)/2 pairs is an edge with probability P; labels permuted."""
    p = _check_probability("P", P)
    u, v = np.triu_indices(num_nodes, k=1)
    keep = rng.random(u.shape[0]) < p
    perm = rng.permutation(num_nodes)
    return [(int(perm[a]), int(perm[b])) for a, b in zip(u[keep], v[keep])]


@register_generator("ba")
def barabasi_albert(num_nodes: int, rng: np.random.Generator, M: int) -> List[Edge]:
    """BA(M): M isolated nodes, then each new node links to M distinct nodes chosen with
    probability proportional to their degree (uniformly while every degree is zero)."""
    m = _check_int("M", M, 1, num_nodes)
    degree = np.zeros(num_nodes, dtype=np.float64)
    edges: List[Edge] = []
    for new in range(m, num_nodes):
        targets: set = set()
        while len(targets) < m:
            allowed = np.ones(new)
            allowed[list(targets)] = 0.0
            weights = degree[:new] * allowed
            if not weights.any():  # only zero-degree candidates left: uniform among them
                weights = allowed
            targets.add(int(rng.choice(new, p=weights / weights.sum())))
        for t in sorted(targets):
            edges.append((t, new))
            degree[t] += 1
            degree[new] += 1
    return edges


@register_generator("ws")
def watts_strogatz(num_nodes: int, rng: np.random.Generator, K: int, P: float) -> List[Edge]:
    """WS(K, P): ring lattice linking each node to K/2 neighbours per side; then, for
    i = 1..K/2 and each node v clockwise, the edge v -> (v+i) is rewired with probability P to
    a uniformly chosen node that is not v and not already a neighbour of v."""
    k = _check_int("K", K, 2, num_nodes)
    if k % 2:
        raise ValueError(f"K={K!r} is invalid: expected an even integer in [2, {num_nodes})")
    p = _check_probability("P", P)
    n, half = num_nodes, k // 2
    adj = [{(v + i) % n for i in range(-half, half + 1) if i} for v in range(n)]
    for i in range(1, half + 1):
        for v in range(n):
            w = (v + i) % n
            if w not in adj[v] or rng.random() >= p:
                continue
            candidates = [c for c in range(n) if c != v and c not in adj[v]]
            if not candidates:
                continue
            new = candidates[int(rng.integers(len(candidates)))]
            adj[v].discard(w)
            adj[w].discard(v)
            adj[v].add(new)
            adj[new].add(v)
    return [(v, w) for v in range(n) for w in adj[v] if v < w]


@dataclass(frozen=True)
class StageWiring:
    """The DAG of one stage: N nodes, edges u -> v with u < v, plus implicit input/output nodes.
    The network (and `fingerprint()`) depends only on `num_nodes` and `edges`; the other fields
    are provenance."""

    num_nodes: int
    edges: Tuple[Edge, ...]
    generator: str = ""
    params: Dict[str, float] = field(default_factory=dict)
    seed: int = -1
    stage: int = 0

    def __post_init__(self):
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ValueError(f"num_nodes={self.num_nodes!r} is invalid: expected an integer >= 1")
        # Generators give undirected pairs in any order: orient them u < v (from_dict is strict).
        edges = tuple(sorted({(int(min(u, v)), int(max(u, v))) for u, v in self.edges}))
        for u, v in edges:
            if u == v or u < 0 or v >= self.num_nodes:
                raise ValueError(
                    f"edge ({u}, {v}) is invalid: expected distinct nodes in [0, {self.num_nodes})"
                )
        object.__setattr__(self, "edges", edges)

    def predecessors(self, node: int) -> List[int]:
        return [u for u, v in self.edges if v == node]

    @property
    def input_nodes(self) -> List[int]:
        """Nodes without input: the unique input node feeds them (with stride 2)."""
        has_input = {v for _, v in self.edges}
        return [n for n in range(self.num_nodes) if n not in has_input]

    @property
    def output_nodes(self) -> List[int]:
        """Nodes without output: the unique output node averages them."""
        has_output = {u for u, _ in self.edges}
        return [n for n in range(self.num_nodes) if n not in has_output]

    def to_networkx(self, with_io: bool = False) -> nx.DiGraph:
        """The DAG; with `with_io`, also the extra nodes "input" and "output"."""
        g = nx.DiGraph()
        g.add_nodes_from(range(self.num_nodes))
        g.add_edges_from(self.edges)
        if with_io:
            g.add_edges_from(("input", n) for n in self.input_nodes)
            g.add_edges_from((n, "output") for n in self.output_nodes)
        return g

    def to_dict(self) -> dict:
        return {**asdict(self), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_dict(cls, d: dict, where: str = "stage wiring") -> "StageWiring":
        """Strict inverse of `to_dict`: integer num_nodes >= 2 and distinct edges [u, v] with
        0 <= u < v < num_nodes. Errors start with `where` (the file and stage)."""
        for key in ("num_nodes", "edges"):
            if not isinstance(d, dict) or key not in d:
                got = f"missing {key!r}" if isinstance(d, dict) else f"got {d!r:.60}"
                raise ValueError(f"{where}: {got}: expected a dict with 'num_nodes' and 'edges'")
        n, edges, seen = d["num_nodes"], d["edges"], set()
        if not _is_int(n) or not 2 <= n <= MAX_NODES:
            raise ValueError(
                f"{where}: num_nodes={n!r} is invalid: expected an integer in [2, {MAX_NODES}] "
                "(graphs.MAX_NODES)"
            )
        if not isinstance(edges, (list, tuple)):
            raise ValueError(f"{where}: edges={edges!r:.60} is invalid: expected a list of [u, v]")
        if len(edges) > MAX_EDGES:
            raise ValueError(
                f"{where}: {len(edges)} edges is too many: at most {MAX_EDGES} (graphs.MAX_EDGES)"
            )
        for e in edges:
            if not (isinstance(e, (list, tuple)) and len(e) == 2 and all(map(_is_int, e))):
                raise ValueError(
                    f"{where}: edge {e!r} is invalid: expected a pair [u, v] of integers"
                )
            if not 0 <= e[0] < e[1] < n:
                raise ValueError(
                    f"{where}: edge {e!r} is invalid: expected 0 <= u < v < {n} "
                    "(an edge points from the smaller node to the larger)"
                )
            if tuple(e) in seen:
                raise ValueError(f"{where}: edge {e!r} appears twice: expected distinct edges")
            seen.add(tuple(e))
        return cls(
            num_nodes=int(n),
            edges=tuple(tuple(e) for e in edges),
            generator=d.get("generator", ""),
            params=dict(d.get("params", {})),
            seed=int(d.get("seed", -1)),
            stage=int(d.get("stage", 0)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "stage wiring") -> "StageWiring":
        return cls.from_dict(_parse_json(text, where), where)

    def fingerprint(self) -> str:
        """Hash of the structure (num_nodes, edges): equal iff the networks are wired alike."""
        canon = json.dumps({"num_nodes": self.num_nodes, "edges": self.edges}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def sample(generator: str, num_nodes: int, seed: int, stage: int = 0, **params) -> StageWiring:
    """g(theta, s) for one stage: the wiring sampled by `generator` with `params` (theta),
    seed `seed` (s) and stage index `stage` (so stages of one network differ)."""
    if generator not in GENERATORS:
        raise ValueError(
            f"generator={generator!r} is unknown: expected one of {sorted(GENERATORS)}"
        )
    n = _check_int("num_nodes", num_nodes, 2, MAX_NODES, high_inclusive=True)
    s = _check_int("seed", seed, 0, 2**63)
    st = _check_int("stage", stage, 0, 2**31)
    rng = np.random.default_rng(np.random.SeedSequence([s, st]))
    try:
        edges = GENERATORS[generator](n, rng, **params)
    except TypeError as e:  # wrong parameter names for this generator
        raise ValueError(f"generator {generator!r} got invalid parameters {params}: {e}") from e
    edges = tuple(edges)
    if len(edges) > MAX_EDGES:
        raise ValueError(
            f"generator {generator!r} with {params} on {n} nodes gave {len(edges)} edges: at most "
            f"{MAX_EDGES} (graphs.MAX_EDGES); use fewer nodes or sparser parameters"
        )
    return StageWiring(n, edges, generator, dict(params), s, st)  # acyclic: edges are u < v


# Most generator seeds one command takes (the paper averages 5).
MAX_SEEDS = 10_000


def parse_seeds(text: str, max_count: int = MAX_SEEDS, flag: str = "--seeds") -> List[int]:
    """Generator seeds from the command line: "1-5" -> [1, 2, 3, 4, 5], "1,3" -> [1, 3]. At most
    `max_count` distinct seeds, each in [0, 2**31) (a run's data-order SEED too), counted before
    any list is built: "1-1000000000" is refused, not expanded."""
    bad, high = f"{flag} {text!r} are invalid", 2**31
    form = f"expected a range like 1-5 or a list like 1,3, at most {max_count} seeds in [0, {high})"
    parts = text.split("-") if "-" in text else text.split(",")
    if len(parts) > max_count:
        raise ValueError(f"{bad}: {len(parts)} seeds, at most {max_count} are allowed")
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{bad}: {form}") from None
    if "-" in text:
        if len(seeds) != 2:
            raise ValueError(f"{bad}: {form}")
        lo, hi = seeds
        if lo > hi:
            raise ValueError(f"{bad}: the range is empty ({lo} > {hi}): expected LO-HI, LO <= HI")
        if hi - lo + 1 > max_count:
            raise ValueError(f"{bad}: {hi - lo + 1} seeds, at most {max_count} are allowed")
        seeds = list(range(lo, hi + 1))
    seen = set()
    for s in seeds:
        if not 0 <= s < high:
            raise ValueError(f"{bad}: seed {s} is outside [0, {high})")
        if s in seen:
            raise ValueError(f"{bad}: they give seed {s} twice")
        seen.add(s)
    return seeds


def sample_stages(
    generator: str, stage_nodes: Dict[str, int], seed: int, **params
) -> "NetworkWiring":
    """One wiring per stage name, stage index = position in `stage_nodes` (ordered)."""
    return NetworkWiring(
        {
            name: sample(generator, n, seed, stage=i, **params)
            for i, (name, n) in enumerate(stage_nodes.items())
        }
    )


class NetworkWiring:
    """The wirings of all random stages of one network, keyed by stage name (e.g. "conv3")."""

    def __init__(self, stages: Dict[str, StageWiring]):
        self.stages = dict(stages)

    def __getitem__(self, name: str) -> StageWiring:
        return self.stages[name]

    def __contains__(self, name: str) -> bool:
        return name in self.stages

    def __eq__(self, other) -> bool:
        return isinstance(other, NetworkWiring) and self.fingerprint() == other.fingerprint()

    def items(self):
        return self.stages.items()

    def to_json(self) -> str:
        return json.dumps({k: w.to_dict() for k, w in self.stages.items()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "wiring") -> "NetworkWiring":
        """Strict, as `StageWiring.from_dict`; errors name `where` and the stage."""
        data = _parse_json(text, where)
        return cls({k: StageWiring.from_dict(v, f"{where}, stage {k!r}") for k, v in data.items()})

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str, what: str = "wiring file") -> "NetworkWiring":
        """A saved wiring: a regular file of at most trust.LIMITS["wiring"] bytes."""
        return cls.from_json(read_bounded(path, what, "wiring", text=True), f"{what} {path!r}")

    def fingerprint(self) -> str:
        canon = json.dumps({k: w.fingerprint() for k, w in self.stages.items()}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: N={w.num_nodes} E={len(w.edges)}" for k, w in self.stages.items())
        return f"NetworkWiring({parts}; fingerprint={self.fingerprint()})"


def graph_statistics(w: StageWiring) -> Dict[str, float]:
    """Statistics of one stage's graph (undirected where the measure is undirected)."""
    dag = w.to_networkx()
    und = dag.to_undirected()
    connected = nx.is_connected(und)
    return {
        "edges": len(w.edges),
        "input_nodes": len(w.input_nodes),
        "output_nodes": len(w.output_nodes),
        "mean_degree": 2 * len(w.edges) / w.num_nodes,
        "max_in_degree": max(d for _, d in dag.in_degree()),
        "clustering": nx.average_clustering(und),
        "avg_path_length": nx.average_shortest_path_length(und) if connected else float("nan"),
        "components": nx.number_connected_components(und),
        "depth": nx.dag_longest_path_length(w.to_networkx(with_io=True)),
    }
