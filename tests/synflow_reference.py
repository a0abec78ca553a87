"""An independent, deliberately naive SynFlow: deep-copy the model, take absolute values in place, one
backward of the summed output, and a full stable sort for the ranking. Tests compare against it."""

import copy

import torch


def reference_scores(model, masks, input_shape, dtype=torch.float64):
    net = copy.deepcopy(model).to(dtype).eval()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        for b in net.buffers():
            if b.is_floating_point():
                b.abs_()
        for n, m in masks.items():
            params[n].mul_(m)
    out = net(torch.ones(1, *input_shape, dtype=dtype))
    R = out.sum()
    R.backward()
    return {n: (params[n].grad * params[n]).abs().detach() for n in masks}, R.item()


def reference_masks(model, names, density, iterations, input_shape, dtype=torch.float64):
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    for t in range(1, iterations + 1):
        scores, _ = reference_scores(model, masks, input_shape, dtype)
        flat = torch.cat([scores[n].flatten() for n in names])
        alive = torch.cat([masks[n].flatten() for n in names])
        flat = torch.where(alive, flat, torch.tensor(-float("inf"), dtype=flat.dtype))
        k = int(density ** (t / iterations) * flat.numel() + 0.5)
        order = torch.sort(-flat, stable=True).indices
        keep = torch.zeros_like(alive)
        keep[order[:k]] = True
        masks = {n: part.view_as(masks[n]) for n, part in zip(names, keep.split([masks[n].numel() for n in names]))}
    return masks
