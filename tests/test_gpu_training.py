"""The GPU trainer's keys on CPU: CUDA graphs (an emulated capture), regional compile, edge
removal through device masks, stacked batches, and the refusals of what cannot run here."""

import copy

import pytest
import torch
from common import CLS_CONFIG
from common import image_batch as batch
from common import make_cfg
from common import tiny_cls_cfg as tiny_cfg
from common import tiny_opts
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from randwire_d2.engine import check_gpu_keys
from randwire_d2.engine.cuda_graphs import GraphedStepTrainer, check_cuda_graphs
from randwire_d2.modeling import RandWire, network_wiring
from randwire_d2.modeling.regional_compile import check_compile


class _Recorder(TorchDispatchMode):
    """Records every aten op a captured step runs; a CPU sync (.item()) is an error, as in a
    real capture."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("the captured step reads a device value on the CPU (.item())")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def emulated_capture(step):
    """A CUDA graph's semantics on CPU: the step runs once while its aten ops are recorded;
    a replay runs the same ops on the same tensors again (new values copied into the recorded
    outputs), and no Python of the step: anything the step read on the CPU stays frozen."""
    recorder = _Recorder()
    with recorder:
        outputs = step()

    @torch.no_grad()  # aten ops on the recorded tensors, below autograd as a graph's kernels
    def replay():
        for func, args, kwargs, out in recorder.ops:
            new = func(*args, **kwargs)
            for old, fresh in zip(tree_flatten(out)[0], tree_flatten(new)[0]):
                if not isinstance(old, torch.Tensor) or old is fresh:
                    continue
                if old.untyped_storage().data_ptr() != fresh.untyped_storage().data_ptr():
                    old.copy_(fresh)

    return replay, outputs


def _classifier(drop_edge_prob=0.5):
    cfg = tiny_cfg("small")
    cfg.MODEL.RANDWIRE.DROP_EDGE_PROB = drop_edge_prob
    cfg.MODEL.CLASSIFIER.DROPOUT = 0.0
    torch.manual_seed(0)
    return build_model(cfg)


def _optimizer(model):
    groups = [
        {"params": [p for n, p in model.named_parameters() if "norm" in n], "weight_decay": 0.0},
        {"params": [p for n, p in model.named_parameters() if "norm" not in n]},
    ]
    return torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=1e-3, foreach=True)


def _batches(n):
    return [batch(n=4, size=32) for _ in range(n)]


class _Storage:
    def __init__(self):
        self.latest = {}

    def put_scalar(self, name, value, **kwargs):
        self.latest[name] = float(value)

    def put_scalars(self, **kwargs):
        kwargs.pop("cur_iter", None)
        kwargs.pop("smoothing_hint", None)
        for k, v in kwargs.items():
            self.latest[k] = float(v)


@pytest.fixture
def event_storage(monkeypatch):
    """SimpleTrainer.write_metrics writes to the current EventStorage; give it ours."""
    import detectron2.engine.train_loop as train_loop

    holder = {}
    monkeypatch.setattr(train_loop, "get_event_storage", lambda: holder["storage"])
    return holder


@pytest.mark.parametrize("drop_edge_prob", [0.0, 0.7])
@pytest.mark.slow
def test_graphed_step_trains_as_the_eager_step(one_thread, event_storage, drop_edge_prob):
    """Eager SimpleTrainer vs GraphedStepTrainer (2 eager steps, then a capture replayed): the
    same losses, lrs and final weights over 7 steps with a changing lr and edge removal, though
    a replay runs no Python (the emulated capture freezes what the step read on the CPU)."""
    data = _batches(7)
    results = []
    for graphed in (False, True):
        model = _classifier(drop_edge_prob)
        model.train()
        optimizer = _optimizer(model)
        if graphed:
            trainer = GraphedStepTrainer(
                model, data, optimizer, warmup_iters=2, capture=emulated_capture
            )
        else:
            trainer = SimpleTrainer(model, data, optimizer)
        storage = _Storage()
        event_storage["storage"] = storage
        trainer.storage = storage
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 / (1 + it))
        losses, lrs, removed = [], [], []
        for it in range(len(data)):
            trainer.iter = it
            model.backbone.seed_edge_removal((7, it, 0))
            if not graphed:  # the eager forward draws; record its draw with the same key
                probe = copy.deepcopy(model.backbone)
                removed.append(probe._sample_removed_edge())
            trainer.run_step()
            losses.append(storage.latest["total_loss"])
            lrs.append(float(optimizer.param_groups[1]["lr"]))
            if graphed:
                keep = model.backbone.edge_keep
                removed.append(None if bool(keep.all()) else int((keep == 0).nonzero()))
            scheduler.step()
        results.append((losses, lrs, removed, model.state_dict()))
    (l0, lr0, r0, sd0), (l1, lr1, r1, sd1) = results
    assert lr0 == pytest.approx(lr1) and lr0[0] > 2 * lr0[-1]
    assert [r is None for r in r0] == [r is None for r in r1]
    if drop_edge_prob:
        assert any(r is not None for r in r0), "the test must remove edges"
    torch.testing.assert_close(torch.tensor(l1), torch.tensor(l0), rtol=1e-5, atol=1e-6)
    for k in sd0:
        torch.testing.assert_close(sd1[k], sd0[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    assert len(set(l0)) > 3  # the steps trained


def test_graphed_step_reads_the_lr_from_the_device(one_thread, event_storage):
    """A replay uses the lr of its iteration, also when a scheduler puts a float back into the
    group (older torch): the step reads a device scalar that is refilled before each step."""
    model = _classifier(0.0)
    model.train()
    optimizer = _optimizer(model)
    data = _batches(4)
    trainer = GraphedStepTrainer(model, data, optimizer, warmup_iters=1, capture=emulated_capture)
    event_storage["storage"] = trainer.storage = _Storage()
    for it in range(3):
        trainer.iter = it
        trainer.run_step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for g in optimizer.param_groups:
        g["lr"] = 0.0  # a float, as an old scheduler writes it
    trainer.iter = 3
    trainer.run_step()
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            torch.testing.assert_close(v, before[k], msg=lambda m: f"{k} moved at lr 0: {m}")


def test_graphed_step_refuses_another_batch_shape(one_thread, event_storage):
    model = _classifier(0.0)
    model.train()
    data = [batch(n=4, size=32), batch(n=4, size=32), batch(n=4, size=40)]
    trainer = GraphedStepTrainer(
        model, data, _optimizer(model), warmup_iters=1, capture=emulated_capture
    )
    event_storage["storage"] = trainer.storage = _Storage()
    trainer.iter = 0
    trainer.run_step()
    trainer.iter = 1
    trainer.run_step()
    trainer.iter = 2
    with pytest.raises(RuntimeError, match=r"captured the step for batches of images \[4, 3, 32"):
        trainer.run_step()


def test_stacked_batches_equal_image_lists(one_thread):
    """RandWireClassifier takes {"images", "labels"} (GPU decode, CUDA graphs) as it takes a
    list of image dicts: the same loss and the same scores."""
    model = _classifier(0.0)
    items = batch(n=3, size=32)
    stacked = {
        "images": torch.stack([x["image"] for x in items]),
        "labels": torch.tensor([x["label"] for x in items]),
    }
    model.train()
    torch.testing.assert_close(model(stacked)["loss_cls"], model(items)["loss_cls"])
    model.eval()
    with torch.no_grad():
        a, b = model(stacked), model(items)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["scores"], y["scores"])


def test_cuda_graphs_and_gpu_decode_refuse_cpu():
    cfg = tiny_cfg()
    cfg.PRETRAIN.CUDA_GRAPHS = True
    with pytest.raises(ValueError, match=r"PRETRAIN.CUDA_GRAPHS=True needs CUDA, but the model"):
        check_gpu_keys(cfg)
    check_gpu_keys(cfg, runnable=False)  # a --dry-run on a machine without a GPU plans anyway
    cfg.PRETRAIN.CUDA_GRAPHS = False
    cfg.PRETRAIN.DECODE = "cuda"
    with pytest.raises(ValueError, match=r"PRETRAIN.DECODE='cuda' needs CUDA"):
        check_gpu_keys(cfg)
    cfg.PRETRAIN.DECODE = "gpu"
    with pytest.raises(ValueError, match=r"PRETRAIN.DECODE='gpu' is invalid: expected one of"):
        check_gpu_keys(cfg, runnable=False)
    with pytest.raises(ValueError, match=r"cannot capture float16 AMP"):
        check_cuda_graphs("cuda", torch.float16)
    check_cuda_graphs("cuda:0", torch.bfloat16)


def _trunk(drop_edge_prob=0.7):
    torch.manual_seed(0)
    wiring = network_wiring("ws", 6, 1, "small", K=2, P=0.5)
    return RandWire(
        wiring=wiring,
        channels=8,
        regime="small",
        node_op="sep_conv3x3",
        norm="BN",
        out_features=["conv3"],
        drop_edge_prob=drop_edge_prob,
        execution="reference",
    )


def _steps(trunks, iters, rtol=1e-5, atol=1e-6):
    """Forward + backward of every trunk on the same inputs and edge-removal keys: equal
    outputs and gradients."""
    for it in range(iters):
        x = torch.randn(2, 3, 32, 32)
        results = []
        for m in trunks:
            m.seed_edge_removal((3, it, 0))
            y = m(x)["conv3"]
            y.square().sum().backward()
            results.append((y.detach(), [p.grad.clone() for p in m.parameters()]))
            m.zero_grad()
        for y, grads in results[1:]:
            torch.testing.assert_close(y, results[0][0], rtol=rtol, atol=atol)
            for g, g0 in zip(grads, results[0][1]):
                torch.testing.assert_close(g, g0, rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["reference", "fast", "triton"])
def test_edge_masks_remove_the_same_edges(one_thread, execution):
    """Edge removal through device masks (compiled nodes, CUDA graphs) equals removal by index
    in every execution: same outputs and gradients, the removed edge's weight gets none."""
    ref = _trunk().set_execution(execution)
    masked = copy.deepcopy(ref).use_edge_masks()
    _steps([ref, masked], iters=2)
    masked.seed_edge_removal((3, 0, 0))
    removed = masked.draw_edge_removal()
    assert removed is not None and int((masked.edge_keep == 0).sum()) == 1
    assert masked.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.slow
def test_compiled_nodes_share_graphs_and_equal_eager(one_thread):
    """MODEL.RANDWIRE.COMPILE 'node' (Inductor): same outputs and gradients as the eager trunk
    with edge removal, same state-dict keys, and fewer compiled graphs than nodes (nodes of the
    same shape share one)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    ref = _trunk()
    compiled = copy.deepcopy(ref).compile_regions("node")
    assert compiled.state_dict().keys() == ref.state_dict().keys()
    graphs = counters["stats"]["unique_graphs"]
    _steps([ref, compiled], iters=2, rtol=1e-3, atol=1e-4)
    nodes = len(compiled.conv3.nodes)
    assert 0 < counters["stats"]["unique_graphs"] - graphs < nodes


@pytest.mark.slow
def test_compiled_stages_trace_whole(one_thread):
    """COMPILE 'stage': each wired stage traces as one graph (fullgraph: a graph break is an
    error), with the same function; checked with the aot_eager backend (no code generation)."""
    ref = _trunk()
    compiled = copy.deepcopy(ref).compile_regions("stage", backend="aot_eager")
    _steps([ref, compiled], iters=2, rtol=1e-4, atol=1e-5)
    ref.eval(), compiled.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)["conv3"], ref(x)["conv3"], rtol=1e-4, atol=1e-5)


def test_compile_refuses_what_it_would_override():
    with pytest.raises(ValueError, match=r"COMPILE='fastest' is unknown: expected one of"):
        _trunk().compile_regions("fastest")
    with pytest.raises(
        ValueError, match=r"not a torch.compile mode; CUDA graphs .* are PRETRAIN.CUDA_GRAPHS"
    ):
        _trunk().compile_regions("reduce-overhead")
    with pytest.raises(ValueError, match=r"EXECUTION='triton' .* would not run"):
        check_compile("node", "triton", False)
    with pytest.raises(ValueError, match=r"MEMORY_EFFICIENT=True would not apply"):
        check_compile("stage", "fast", True)
    check_compile("node", "fast", False)


@pytest.mark.slow
@pytest.mark.parametrize("regions", ["", "node", "stage"])
def test_compiled_classifier_trains_and_evaluates(monkeypatch, one_thread, regions):
    """MODEL.RANDWIRE.COMPILE on the demo classifier (its wiring, narrower): it trains, then
    evaluates as the trainer does at two test crops, each in full batches, a partial one and a
    single image, then trains on. Dynamo's recompile limit is the same for every backend: the
    "eager" backend keeps the test short (Inductor: test_compiled_nodes_share_graphs...)."""
    from torch._dynamo import config as dynamo_config

    from randwire_d2.config import load_config
    from randwire_d2.modeling import regional_compile

    monkeypatch.setattr(regional_compile, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    opts = ["MODEL.DEVICE", "cpu", "MODEL.RANDWIRE.CHANNELS", 8]
    opts += ["MODEL.CLASSIFIER.HEAD_CHANNELS", 16, "MODEL.RANDWIRE.MEMORY_EFFICIENT", False]
    limits = ("recompile_limit", "accumulated_recompile_limit")  # restored after the test
    with dynamo_config.patch({k: getattr(dynamo_config, k) for k in limits}):
        cfg = load_config(CLS_CONFIG, opts + ["MODEL.RANDWIRE.COMPILE", regions])
        model = build_model(cfg)
        model.train()
        model(batch(4, 56))["loss_cls"].backward()
        model.eval()
        with torch.no_grad():
            for crop in (56, 80):
                for n in (4, 3, 1):
                    assert len(model(batch(n, crop, labels=False))) == n
        model.train()
        model(batch(4, 56))["loss_cls"].backward()
    torch._dynamo.reset()


@pytest.mark.slow
def test_classification_trainer_trains_on_device_decoded_batches(tmp_path, monkeypatch):
    """PRETRAIN.DECODE 'cuda' end to end, with the device decode run on the CPU (the key's
    CUDA check bypassed: that is the only part that needs a GPU): the trainer gets stacked
    batches from the batched decoder and trains on them with about the losses of the PIL path
    (same images, crops and flips; the decoders round pixels slightly differently, which a
    tiny model at a high lr amplifies to a few percent; pixels are compared exactly in
    test_batched_decode.py)."""
    import json

    from detectron2.utils.env import seed_all_rng

    from randwire_d2.data.batched_decode import DecodeLoader
    from randwire_d2.data.cls_demo import generate_jpeg_folder
    from randwire_d2.engine import ClassificationTrainer, classification

    root = generate_jpeg_folder(
        str(tmp_path / "jpegs"), 5, 4, size=(60, 44), quality=90, splits=("train", "val")
    )
    monkeypatch.setattr(classification, "check_gpu_keys", lambda cfg, runnable=True: None)
    losses = {}
    for decode in ("cpu", "cuda"):
        out = tmp_path / decode
        opts = tiny_opts(root, out, epochs=3, **{"PRETRAIN.DECODE": decode})
        opts += ["MODEL.CLASSIFIER.NUM_CLASSES", "5", "SOLVER.IMS_PER_BATCH", "8"]
        cfg = make_cfg(opts)
        seed_all_rng(cfg.SEED)
        trainer = ClassificationTrainer(cfg)
        trainer.resume_or_load(resume=False)
        assert isinstance(trainer._trainer.data_loader, DecodeLoader) == (decode == "cuda")
        trainer.train()
        with open(out / "metrics.json") as f:
            records = [json.loads(line) for line in f if line.strip()]
        losses[decode] = [r["total_loss"] for r in records if "total_loss" in r]
    assert len(losses["cuda"]) == len(losses["cpu"]) >= 2
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=0.1)
    assert losses["cuda"] != losses["cpu"]  # two decoders ran


def test_train_cls_refuses_cuda_graphs_on_cpu_before_building(tmp_path):
    """tools/train_cls.py's setup and the trainer refuse PRETRAIN.CUDA_GRAPHS on a machine
    without CUDA before a model, loader or OUTPUT_DIR exists."""

    from randwire_d2.data.cls_demo import generate_classification_demo
    from randwire_d2.engine import ClassificationTrainer

    root = generate_classification_demo(str(tmp_path / "d"), {"train": 4, "val": 1}, image_size=32)
    out = tmp_path / "out"
    cfg = make_cfg(tiny_opts(root, out, epochs=1, **{"PRETRAIN.CUDA_GRAPHS": True}))
    with pytest.raises(ValueError, match=r"PRETRAIN.CUDA_GRAPHS=True needs CUDA, but the model"):
        ClassificationTrainer(cfg)
    assert not out.exists()
