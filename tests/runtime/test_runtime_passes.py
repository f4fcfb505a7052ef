"""Gradient caching: the loss's gradient through passes of bounded size equals the one-graph gradient."""

import torch
from torch import nn

from wsis_cli.runtime.passes import loss_backward_in_passes, plan_passes


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2))


def _contrastive(outs: list[torch.Tensor]) -> torch.Tensor:
    # every output against every other: the loss couples all views, as a contrastive one does
    emb = torch.nn.functional.normalize(torch.stack([o.mean(dim=(1, 2)) for o in outs]), dim=1)
    return torch.logsumexp(emb @ emb.t() / 0.5, dim=1).mean()


def test_plan_passes_groups_equal_shapes_within_the_pixel_budget():
    shapes = [(3, 10, 10), (3, 10, 10), (3, 5, 5), (3, 10, 10)]
    assert plan_passes(shapes, 200) == [[0, 1], [3], [2]]
    assert plan_passes(shapes, 10_000) == [[0, 1, 3], [2]]
    assert plan_passes(shapes, 1) == [[0], [1], [3], [2]]  # at least one input per pass


def test_passes_give_the_gradient_of_one_graph_with_the_same_batchnorm_groups():
    inputs = [torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    budget = 2 * 12 * 12  # two views per pass
    a = _net().train()
    loss_a = loss_backward_in_passes(a, inputs, lambda n, x: n(x), _contrastive, budget)
    b = _net().train()  # reference: the same passes, all in one autograd graph
    outs = []
    for members in plan_passes([tuple(x.shape) for x in inputs], budget):
        outs += list(b(torch.stack([inputs[i] for i in members])))
    loss_b = _contrastive(outs)
    loss_b.backward()
    assert torch.allclose(loss_a, loss_b.detach(), atol=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4)
    # each pass updated the running statistics once, as in the reference
    for (name, ba), bb in zip(a.named_buffers(), b.buffers(), strict=True):
        assert torch.equal(ba, bb), name


def test_a_batch_within_the_budget_is_the_plain_forward_and_backward():
    inputs = [torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    a = _net().train()
    loss_backward_in_passes(a, inputs, lambda n, x: n(x), _contrastive, 10**6)
    b = _net().train()
    _contrastive(list(b(torch.stack(inputs)))).backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad)


def test_shapes_that_fit_one_by_one_but_not_together_are_cached():
    # two shapes of 64 px each: under a 100 px budget they must not be held at once (the first pass runs
    # without autograd); with 128 px they form one graph
    inputs = [torch.randn(3, 8, 8), torch.randn(3, 4, 16)]
    for budget, expected in ((100, [(8, False), (4, False), (8, True), (4, True)]), (128, [(8, True), (4, True)])):
        calls = []

        def forward(n, x, calls=calls):
            calls.append((x.shape[-2], torch.is_grad_enabled()))
            return n(x)

        loss_backward_in_passes(_net().train(), inputs, forward, _contrastive, budget)
        assert calls == expected
