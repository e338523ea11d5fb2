"""randwire_d2/engine/evaluation.py and classification.py: what a classifier's evaluation says."""

from collections import OrderedDict

import pytest
import torch

from randwire_d2.engine.classification import describe_results
from randwire_d2.engine.evaluation import ClassificationEvaluator, topk_correct


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


# Top-1 / top-5 -------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_topk_on_a_hand_made_case():
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.02, 0.01, 0.01, 0.01, 0.0],  # label 0: top-1
            [0.1, 0.5, 0.2, 0.1, 0.05, 0.05, 0.0],  # label 2: 2nd -> top-5 only
            [0.3, 0.2, 0.15, 0.14, 0.11, 0.1, 0.0],  # label 5: 6th -> neither
            [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.0],  # label 2: 4th -> top-5 only
        ]
    )
    labels = torch.tensor([0, 2, 5, 2])
    assert topk_correct(scores, labels, (1, 5)) == [1, 3]
    assert topk_correct(scores, labels, (2,)) == [2]
    # k larger than the class count counts every row.
    assert topk_correct(scores[:, :3], torch.tensor([0, 2, 1, 2]), (1, 5)) == [2, 4]

    evaluator = ClassificationEvaluator()
    evaluator.process([{"label": int(y)} for y in labels[:2]], [{"scores": s} for s in scores[:2]])
    evaluator.process([{"label": int(y)} for y in labels[2:]], [{"scores": s} for s in scores[2:]])
    assert evaluator.evaluate() == {"top1": 25.0, "top5": 75.0}
    evaluator.reset()
    with pytest.raises(ValueError, match="0 images"):
        evaluator.evaluate()
