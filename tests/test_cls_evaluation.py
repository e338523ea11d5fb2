"""randwire_d2/engine/evaluation.py and classification.py: what a classifier's evaluation says."""

from collections import OrderedDict

import torch

from randwire_d2.engine.classification import describe_results
from randwire_d2.engine.evaluation import ClassificationEvaluator


def test_evaluation_reports_top_k_only_below_the_class_count_and_labels_extra_crops():
    """Top-5 of a 5-class problem is 100 by construction: not reported. The first test crop is
    the main result; the others are labelled as extra sizes."""
    evaluator = ClassificationEvaluator()
    scores = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), 1)
    evaluator.process([{"label": i % 5} for i in range(6)], [{"scores": s} for s in scores])
    assert set(evaluator.evaluate()) == {"top1"}
    evaluator.reset()
    scores = torch.softmax(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), 1)
    evaluator.process([{"label": i} for i in range(6)], [{"scores": s} for s in scores])
    assert set(evaluator.evaluate()) == {"top1", "top5"}

    text = describe_results(
        OrderedDict(val_56={"top1": 91.9}, val_80={"top1": 34.6}), crops=[56, 80]
    )
    assert "main: val_56" in text
    assert "val_80  top-1  34.60   (extra test size 80: PRETRAIN.TEST_CROPS[1]" in text
    assert "top-5 is not reported: the data have 5 or fewer classes" in text
