"""FlatGradients: every gradient a view into one buffer, zeroed and clipped as torch's own rules do."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fiberlab.rl.gradients import FlatGradients


def _model_and_loss(seed: int = 0, scale: float = 1.0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.LSTM(7, 3, batch_first=True))
    x = torch.randn(4, 6, 5)

    def loss() -> torch.Tensor:
        out, _ = model[2](model[1](model[0](x)))
        return scale * out.square().sum()

    return model, loss


def test_backward_accumulates_into_the_buffer_and_the_optimizer_sees_each_gradient():
    model, loss = _model_and_loss()
    reference, ref_loss = _model_and_loss()
    ref_loss().backward()
    grads = FlatGradients(model.parameters())
    loss().backward()
    (buffer,) = grads.buffers
    assert buffer.numel() == sum(p.numel() for p in model.parameters())
    for p, q in zip(model.parameters(), reference.parameters()):
        assert p.grad.data_ptr() >= buffer.data_ptr()  # still a view into the buffer after backward
        assert p.grad._base is buffer
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    grads.zero_()
    assert not buffer.any() and all(not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])  # below and above max_norm
def test_clip_is_clip_grad_norm(scale):
    model, loss = _model_and_loss(1, scale)
    reference, ref_loss = _model_and_loss(1, scale)
    ref_loss().backward()
    want = nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    grads = FlatGradients(model.parameters())
    loss().backward()
    got = grads.clip_(0.5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float(norm) <= 0.5 * (1 + 1e-5)


def test_a_replaced_or_dropped_gradient_is_taken_back_into_the_buffer():
    model, loss = _model_and_loss(2, 30.0)
    grads = FlatGradients(model.parameters())
    first = next(model.parameters())
    loss().backward()
    kept = first.grad.clone()
    first.grad = first.grad.clone()  # e.g. a hook or wrapper that assigns a new tensor
    total = grads.clip_(0.5)
    assert first.grad._base is grads.buffers[0]  # back in the buffer, and clipped with the rest
    torch.testing.assert_close(first.grad, kept * (0.5 / (total + 1e-6)))
    first.grad = None  # zero_grad(set_to_none=True) from somewhere else
    grads.zero_()
    assert first.grad is not None and first.grad._base is grads.buffers[0]
    loss().backward()
    assert first.grad.abs().sum() > 0 and grads.buffers[0].abs().sum() > 0


def test_frozen_parameters_are_left_alone():
    model, loss = _model_and_loss(3)
    model[0].weight.requires_grad_(False)
    grads = FlatGradients(model.parameters())
    loss().backward()
    assert model[0].weight.grad is None
    assert grads.buffers[0].numel() == sum(p.numel() for p in model.parameters() if p.requires_grad)
