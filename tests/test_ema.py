"""The EMA of the weights and the best weights kept by validation score."""
import torch
from torch import nn

from imgclf.train.ema import BestWeights, WeightsEma


def test_ema_moves_toward_the_weights_with_a_warmed_up_decay():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightsEma(model, decay=0.99)
    assert ema.current_decay() == 0.1  # (1 + 0) / (10 + 0): the first update mostly copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full_like(model.weight, 0.9))
    for _ in range(2000):
        ema.update(model)
    assert ema.current_decay() == 0.99
    assert torch.allclose(ema.module.weight, model.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_copies_integer_buffers():
    model = nn.BatchNorm1d(2)
    ema = WeightsEma(model, decay=0.5)
    model.num_batches_tracked += 7
    ema.update(model)
    assert int(ema.module.num_batches_tracked) == 7


def test_best_weights_are_kept_only_when_better():
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    best = BestWeights()
    assert best.offer(a, 0.5, 1.0, "epoch 1")
    assert not best.offer(b, 0.4, 0.1, "epoch 1 EMA")  # lower accuracy
    assert not best.offer(b, 0.5, 1.0, "epoch 1 EMA")  # a tie keeps the first
    assert best.label == "epoch 1"
    assert best.offer(b, 0.5, 0.9, "epoch 2 EMA")  # same accuracy, lower loss
    with torch.no_grad():
        b.weight.add_(1.0)  # later training does not change the kept copy
    target = nn.Linear(2, 1)
    best.restore(target)
    assert torch.allclose(target.weight, b.weight - 1.0) and best.label == "epoch 2 EMA"
