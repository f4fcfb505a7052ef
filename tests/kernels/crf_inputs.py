"""Random CRF inputs shared by the kernel tests."""

import torch


def make_inputs(gen, batch, labels, height, width, box="none", channels=3):
    image = torch.rand(batch, channels, height, width, generator=gen)
    # piecewise-constant colour regions plus noise, so the bilateral term has real edges to respect
    image = (image * 4).floor() / 4 + 0.05 * torch.randn(image.shape, generator=gen)
    probs = torch.rand(batch, labels, height, width, generator=gen)
    if labels > 1:
        probs = probs / probs.sum(1, keepdim=True)
    boxes = None
    if box == "one":
        boxes = (torch.rand(batch, 1, height, width, generator=gen) > 0.25).float()
    elif box == "all":
        boxes = (torch.rand(batch, labels, height, width, generator=gen) > 0.3).float()
    return image, probs, boxes
