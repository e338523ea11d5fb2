"""Every size read from a file or a flag is bounded, and the error names the value and the limit
before anything large is allocated; iteration counts are checked once for both config systems."""

import json
import os
import time

import pytest
from common import (
    DET_CONFIG,
    LAZY_DET_CONFIG,
    TINY_LAZY,
    coco_dict,
    load_tool,
    tiny_cfg,
    write_image,
)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from randwire_d2.config import load_lazy_config
from randwire_d2.data import dataset_checks
from randwire_d2.engine import check_iterations
from randwire_d2.engine.launch import argument_parser
from randwire_d2.engine.lazy import setup_lazy
from randwire_d2.graphs import MAX_EDGES, MAX_NODES, NetworkWiring, sample


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


@pytest.fixture
def dense_coco(tmp_path):
    """A COCO dataset whose first image holds MAX_INSTANCES_PER_IMAGE + 1 annotations."""
    images = tmp_path / "images"
    for i in range(2):
        write_image(images / f"{i}.jpg", seed=i)
    content = coco_dict(num_categories=1)
    ann = content["annotations"][0]
    count = dataset_checks.MAX_INSTANCES_PER_IMAGE + 1
    content["annotations"] = [dict(ann, id=k + 1, image_id=1) for k in range(count)]
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(content))
    yield "test_bounds_dense", str(path), str(images), count
    for name in ("test_bounds_dense",):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_an_image_with_too_many_annotations_fails_setup_in_both_tools(dense_coco, tmp_path):
    name, path, images, count = dense_coco
    train_net = load_tool("train_net")
    args = train_net.build_parser().parse_args(
        ["--config-file", DET_CONFIG, "--dataset", name, path, images]
        + ["DATASETS.TRAIN", f"('{name}',)", "MODEL.ROI_HEADS.NUM_CLASSES", "1"]
        + ["OUTPUT_DIR", str(tmp_path / "yaml"), "MODEL.DEVICE", "cpu"]
    )
    limit = dataset_checks.MAX_INSTANCES_PER_IMAGE
    message = rf"{name}.*0\.jpg \(image_id 1\) with {count}; at most {limit} per image"
    with pytest.raises(ValueError, match=message):
        train_net.setup(args)
    assert not os.path.exists(tmp_path / "yaml")  # refused before OUTPUT_DIR was claimed
    lazy = load_lazy_config(
        LAZY_DET_CONFIG,
        TINY_LAZY
        + [f"dataloader.train.dataset.names={name}", f"train.output_dir={tmp_path / 'lazy'}"],
    )
    with pytest.raises(ValueError, match=message):
        setup_lazy(lazy, argument_parser().parse_args([]))


@pytest.mark.parametrize("value", [-5, 0, "abc"])
@pytest.mark.slow
def test_iteration_counts_are_checked_for_both_config_systems(value, tmp_path):
    lazy = load_lazy_config(LAZY_DET_CONFIG, [f"train.max_iter={value}"])
    with pytest.raises(ValueError, match=rf"train.max_iter={value!r} is invalid: .*integer >= 1"):
        setup_lazy(lazy, argument_parser().parse_args([]))
    if value != "abc":  # yacs refuses a string for an int key itself, naming it
        cfg = tiny_cfg("SOLVER.MAX_ITER", value)
        with pytest.raises(ValueError, match=rf"SOLVER.MAX_ITER={value} is invalid"):
            check_iterations(cfg)
    lazy = load_lazy_config(LAZY_DET_CONFIG, ["train.checkpointer.period=0"])
    with pytest.raises(ValueError, match=r"train.checkpointer.period=0 is invalid"):
        check_iterations(lazy)
    check_iterations(load_lazy_config(LAZY_DET_CONFIG))
    check_iterations(tiny_cfg())
