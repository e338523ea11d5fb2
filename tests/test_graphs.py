"""randwire_d2/graphs.py: the generators, wirings (files read strictly, sizes bounded), statistics."""

import json
import time

import networkx as nx
import numpy as np
import pytest
from common import tiny_cfg
from detectron2.modeling import build_model

from randwire_d2 import graphs
from randwire_d2.complexity import wiring_stats
from randwire_d2.graphs import (
    MAX_EDGES,
    MAX_NODES,
    NetworkWiring,
    StageWiring,
    graph_statistics,
    register_generator,
    sample,
    sample_stages,
)
from randwire_d2.modeling import network_wiring

PAPER_SETTINGS = [
    ("er", {"P": 0.1}),
    ("er", {"P": 0.2}),
    ("er", {"P": 0.6}),
    ("ba", {"M": 1}),
    ("ba", {"M": 5}),
    ("ws", {"K": 4, "P": 0.75}),
    ("ws", {"K": 8, "P": 0.25}),
    ("ws", {"K": 4, "P": 0.0}),
]


@pytest.mark.parametrize("gen,params", PAPER_SETTINGS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dag_and_every_node_on_an_input_output_path(gen, params, seed):
    w = sample(gen, 32, seed, **params)
    assert all(u < v for u, v in w.edges)
    assert list(w.edges) == sorted(set(w.edges))
    g = w.to_networkx(with_io=True)
    assert nx.is_directed_acyclic_graph(g)
    reach_from_input = nx.descendants(g, "input")
    reach_output = nx.ancestors(g, "output")
    for v in range(w.num_nodes):
        assert v in reach_from_input and v in reach_output
    # The extra nodes connect exactly to the nodes without input / without output.
    dag = w.to_networkx()
    assert set(w.input_nodes) == {v for v in dag if dag.in_degree(v) == 0}
    assert set(w.output_nodes) == {v for v in dag if dag.out_degree(v) == 0}


@pytest.mark.parametrize("m", [1, 2, 5, 7])
@pytest.mark.parametrize("n", [8, 32])
def test_ba_edge_count_and_initial_nodes(m, n):
    for seed in range(1, 4):
        w = sample("ba", n, seed, M=m)
        assert len(w.edges) == m * (n - m)
        # Each added node v >= M links to exactly M earlier nodes; the M initial nodes to none.
        for v in range(n):
            assert len(w.predecessors(v)) == (0 if v < m else m)
        assert w.input_nodes == list(range(m))


@pytest.mark.parametrize("k", [2, 4, 6, 8])
@pytest.mark.parametrize("p", [0.0, 0.25, 0.75, 1.0])
def test_ws_edge_count(k, p):
    for seed in range(1, 4):
        assert len(sample("ws", 32, seed, K=k, P=p).edges) == 32 * k // 2


def test_ws_p0_is_ring_lattice():
    n, k = 16, 4
    w = sample("ws", n, 7, K=k, P=0.0)
    ring = {tuple(sorted((v, (v + i) % n))) for v in range(n) for i in range(1, k // 2 + 1)}
    assert set(w.edges) == ring
    # Ring order is the DAG order: node 0 is the only input, the last node the only output.
    assert w.input_nodes == [0]
    assert w.output_nodes == [n - 1]


def test_ws_rewiring_changes_edges_and_p1_rewires_all_but_few():
    lattice = set(sample("ws", 32, 1, K=4, P=0.0).edges)
    rewired = set(sample("ws", 32, 1, K=4, P=0.75).edges)
    assert rewired != lattice
    # With P=1, every edge is drawn away unless no candidate exists; lattice edges survive only
    # by being chosen again at random, so well under half of them remain.
    full = set(sample("ws", 32, 1, K=4, P=1.0).edges)
    assert len(full & lattice) < len(lattice) // 2


def test_er_mean_edge_count_matches_p():
    n, p, seeds = 32, 0.2, range(200)
    counts = [len(sample("er", n, s, P=p).edges) for s in seeds]
    expected = p * n * (n - 1) / 2
    # Binomial(496, 0.2): std 8.9 per graph, std of the mean over 200 graphs ~0.63.
    assert abs(np.mean(counts) - expected) < 3.0
    assert 0 <= min(counts) and max(counts) <= n * (n - 1) / 2


def test_er_extremes():
    assert len(sample("er", 10, 1, P=0.0).edges) == 0
    assert len(sample("er", 10, 1, P=1.0).edges) == 45


@pytest.mark.parametrize("gen,params", PAPER_SETTINGS[:6])
def test_same_seed_same_graph_other_seed_other_graph(gen, params):
    a = sample(gen, 32, 3, **params)
    assert a == sample(gen, 32, 3, **params)
    assert a.fingerprint() == sample(gen, 32, 3, **params).fingerprint()
    others = {sample(gen, 32, s, **params).fingerprint() for s in (4, 5, 6)}
    assert a.fingerprint() not in others
    # Stages of one network differ.
    assert sample(gen, 32, 3, stage=1, **params).fingerprint() != a.fingerprint()


def test_sampling_is_frozen():
    """g(theta, s) must not change across machines or releases: freeze a few fingerprints."""
    got = {
        "ws": sample("ws", 32, 1, K=4, P=0.75).fingerprint(),
        "er": sample("er", 32, 1, P=0.2).fingerprint(),
        "ba": sample("ba", 32, 1, M=5).fingerprint(),
    }
    assert got == FROZEN_FINGERPRINTS


# Recorded with numpy's PCG64 + SeedSequence (stable across numpy releases by numpy's policy).
FROZEN_FINGERPRINTS = {"ws": "15a711d6f09e54ba", "er": "d96ef7e8f0008e49", "ba": "45ea1dc519eef645"}


def test_global_random_state_is_not_used():
    np.random.seed(0)
    a = sample("ws", 32, 1, K=4, P=0.75)
    np.random.seed(123)
    assert sample("ws", 32, 1, K=4, P=0.75) == a


@pytest.mark.parametrize(
    "gen,n,params,match",
    [
        ("ws", 32, {"K": 3, "P": 0.5}, r"K=3 .*even integer in \[2, 32\)"),
        ("ws", 32, {"K": 32, "P": 0.5}, r"K=32 .*\[2, 32\)"),
        ("ws", 32, {"K": 34, "P": 0.5}, r"K=34 .*\[2, 32\)"),
        ("ws", 32, {"K": 0, "P": 0.5}, r"K=0 .*\[2, 32\)"),
        ("ws", 32, {"K": 4.0, "P": 0.5}, r"K=4.0 .*integer"),
        ("ws", 32, {"K": 4, "P": 1.5}, r"P=1.5 .*\[0, 1\]"),
        ("ws", 32, {"K": 4, "P": -0.1}, r"P=-0.1 .*\[0, 1\]"),
        ("er", 32, {"P": 2}, r"P=2 .*\[0, 1\]"),
        ("er", 32, {"P": -1e-3}, r"P=-0.001 .*\[0, 1\]"),
        ("er", 32, {"P": "0.2"}, r"P='0.2' .*\[0, 1\]"),
        ("ba", 32, {"M": 0}, r"M=0 .*\[1, 32\)"),
        ("ba", 32, {"M": 32}, r"M=32 .*\[1, 32\)"),
        ("ba", 32, {"M": 40}, r"M=40 .*\[1, 32\)"),
        ("ba", 32, {"M": 2.5}, r"M=2.5 .*integer"),
        ("ws", 1, {"K": 2, "P": 0.5}, r"num_nodes=1 .*\[2, "),
        ("er", 0, {"P": 0.5}, r"num_nodes=0 .*\[2, "),
        ("nope", 32, {}, r"generator='nope' is unknown: expected one of \[.*'ba'.*'er'.*'ws'"),
        ("ws", 32, {"K": 4}, r"generator 'ws' got invalid parameters"),
        ("er", 32, {"P": 0.2, "Q": 1}, r"generator 'er' got invalid parameters"),
    ],
)
def test_bad_parameters_name_value_and_range(gen, n, params, match):
    with pytest.raises(ValueError, match=match):
        sample(gen, n, 1, **params)


def test_bad_seed():
    with pytest.raises(ValueError, match=r"seed=-1 .*\[0, "):
        sample("ws", 32, -1, K=4, P=0.5)


def test_json_round_trip():
    w = sample("ws", 32, 2, stage=3, K=4, P=0.75)
    back = StageWiring.from_json(w.to_json())
    assert back == w and back.fingerprint() == w.fingerprint()
    assert (back.generator, back.params, back.seed, back.stage) == ("ws", {"K": 4, "P": 0.75}, 2, 3)
    net = sample_stages("er", {"conv3": 8, "conv4": 16}, 1, P=0.3)
    net2 = NetworkWiring.from_json(net.to_json())
    assert net2 == net and net2.fingerprint() == net.fingerprint()
    assert net2["conv4"].num_nodes == 16 and net2["conv3"].stage == 0 and net2["conv4"].stage == 1


def test_fingerprint_depends_on_structure_only():
    a = StageWiring(4, ((0, 1), (1, 3)), generator="x", seed=1)
    b = StageWiring(4, ((1, 3), (0, 1)), generator="y", seed=9)
    c = StageWiring(4, ((0, 1), (2, 3)))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    net_a = NetworkWiring({"conv3": a})
    assert net_a.fingerprint() != NetworkWiring({"conv3": c}).fingerprint()


def test_wiring_rejects_bad_edges():
    with pytest.raises(ValueError, match=r"edge \(2, 2\)"):
        StageWiring(4, ((2, 2),))
    with pytest.raises(ValueError, match=r"edge \(1, 4\) .*\[0, 4\)"):
        StageWiring(4, ((1, 4),))


def test_user_generator_by_name():
    name = "chain_for_test"
    if name not in graphs.GENERATORS:

        @register_generator(name)
        def chain(num_nodes, rng, skip):
            return [(v, v + 1) for v in range(num_nodes - 1)] + [(0, skip)]

    w = sample(name, 6, 1, skip=3)
    assert w.edges == ((0, 1), (0, 3), (1, 2), (2, 3), (3, 4), (4, 5))
    assert w.input_nodes == [0] and w.output_nodes == [5]
    with pytest.raises(ValueError, match="already registered"):
        register_generator(name)(lambda n, rng: [])


def test_seeds_from_the_command_line():
    from randwire_d2.graphs import parse_seeds

    assert parse_seeds("1-5") == [1, 2, 3, 4, 5] and parse_seeds("1,3") == [1, 3]
    with pytest.raises(ValueError, match="seeds 'a-b' are invalid"):
        parse_seeds("a-b")


GOOD = {"num_nodes": 4, "edges": [[0, 1], [0, 2], [1, 3]]}


@pytest.mark.parametrize(
    "stage,match",
    [
        ({"num_nodes": 4, "edges": [[0, 1], [3, 1]]}, r"edge \[3, 1\].*0 <= u < v < 4"),
        ({"num_nodes": 3, "edges": [[0, 1], [1, 2], [2, 0]]}, r"edge \[2, 0\]"),  # a cycle
        ({"num_nodes": 4, "edges": [[2, 2]]}, r"edge \[2, 2\]"),
        ({"num_nodes": 4, "edges": [[0, 4]]}, r"edge \[0, 4\]"),
        ({"num_nodes": 4, "edges": [[0, 1, 2]]}, r"edge \[0, 1, 2\].*pair"),
        ({"num_nodes": 4, "edges": [[0, "1"]]}, r"edge \[0, '1'\]"),
        ({"num_nodes": 4, "edges": [[0, 1], [0, 1]]}, r"edge \[0, 1\] appears twice"),
        ({"num_nodes": 5.5, "edges": []}, r"num_nodes=5.5 .*integer in \[2, 2048\]"),
        ({"num_nodes": "5", "edges": []}, r"num_nodes='5' .*integer in \[2, 2048\]"),
        ({"num_nodes": True, "edges": []}, r"num_nodes=True .*integer in \[2, 2048\]"),
        ({"num_nodes": 1, "edges": []}, r"num_nodes=1 .*integer in \[2, 2048\]"),
        ({"num_nodes": 4}, r"missing 'edges'"),
        ({"edges": []}, r"missing 'num_nodes'"),
        ({"num_nodes": 4, "edges": {"0": 1}}, r"edges=.*list"),
        ([4, [[0, 1]]], r"expected a dict"),
    ],
)
def test_wiring_file_is_strict(tmp_path, stage, match):
    path = tmp_path / "bad_wiring.json"
    path.write_text(json.dumps({"conv3": GOOD, "conv4": stage}))
    with pytest.raises(ValueError, match=r"bad_wiring\.json.*stage 'conv4'.*" + match):
        NetworkWiring.load(str(path))
    with pytest.raises(ValueError, match=r"stage 'conv4'.*" + match):
        NetworkWiring.from_json(path.read_text())


@pytest.mark.parametrize(
    "text,match", [("{", "invalid JSON"), ("[1, 2]", "expected a JSON object")]
)
def test_wiring_file_not_a_wiring(tmp_path, text, match):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"broken\.json.*" + match):
        NetworkWiring.load(str(path))


def test_wiring_file_round_trip_keeps_fingerprint(tmp_path):
    net = network_wiring("ws", 16, 3, "regular", K=4, P=0.75)
    net.save(str(tmp_path / "w.json"))
    back = NetworkWiring.load(str(tmp_path / "w.json"))
    assert back.fingerprint() == net.fingerprint()
    # The generator path still takes undirected pairs in any order.
    assert StageWiring(3, ((2, 0), (1, 0))).edges == ((0, 1), (0, 2))


@pytest.mark.parametrize("num_nodes", [10**9, 200_000, MAX_NODES + 1])
def test_a_wiring_file_with_too_many_nodes_is_refused_at_once(tmp_path, num_nodes):
    path = tmp_path / "wiring.json"
    stage = {"num_nodes": num_nodes, "edges": [[0, 1]]}
    path.write_text(json.dumps({"conv3": stage, "conv4": stage, "conv5": stage}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"num_nodes={num_nodes} is invalid.*\[2, {MAX_NODES}\]"):
        build_model(tiny_cfg("MODEL.RANDWIRE.WIRING_FILE", str(path)))
    assert time.perf_counter() - start < 5


@pytest.mark.slow
def test_wiring_edges_files_and_sampled_graphs_are_bounded(tmp_path):
    edges = [[u, v] for u in range(MAX_NODES) for v in range(u + 1, MAX_NODES)][: MAX_EDGES + 1]
    path = tmp_path / "dense.json"
    path.write_text(json.dumps({"conv3": {"num_nodes": MAX_NODES, "edges": edges}}))
    with pytest.raises(
        ValueError, match=rf"{MAX_EDGES + 1} edges is too many: at most {MAX_EDGES}"
    ):
        NetworkWiring.load(str(path))
    with pytest.raises(ValueError, match=rf"num_nodes=1000000 is invalid.*{MAX_NODES}\]"):
        sample("ws", num_nodes=10**6, seed=1, K=4, P=0.75)
    with pytest.raises(ValueError, match=rf"gave \d+ edges: at most {MAX_EDGES}"):
        sample("er", num_nodes=MAX_NODES, seed=1, P=1.0)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(65 * 2**20)  # sparse: no disk used
    with pytest.raises(ValueError, match=r"is 68157440 bytes, more than the 67108864 bytes"):
        NetworkWiring.load(str(big))


def test_a_wiring_text_beyond_the_wiring_bound_is_refused(monkeypatch):
    from randwire_d2.trust import files

    monkeypatch.setitem(files.LIMITS, "wiring", 10)
    with pytest.raises(ValueError, match="checkpoint: 11 characters, more than a wiring file"):
        NetworkWiring.from_json('{"a": "bc"}', "checkpoint")


def test_wiring_stats_are_graph_statistics():
    w = StageWiring(5, ((0, 2), (1, 2), (2, 3), (1, 4)))
    stats = wiring_stats(NetworkWiring({"conv3": w}))
    assert stats == {"conv3": {"nodes": 5, **graph_statistics(w)}}
