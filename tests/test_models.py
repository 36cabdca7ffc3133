import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb


@pytest.mark.parametrize("name", wb.MODELS)
@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 28, 28), (3, 32, 32)])
def test_models_map_images_to_logits(name, shape):
    if name == "resnet18" and shape[1] < 32:
        pytest.skip("the ResNet-18 variant is for 32x32 colour images")
    m = wb.build_model(name, shape[0], 10, shape[1:]).eval()
    with torch.no_grad():
        out = m(torch.rand(4, *shape))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_bad_model_name():
    with pytest.raises(ValueError, match="`name` must be one of 'small-cnn'"):
        wb.build_model("vgg", 1, 10, (16, 16))


def test_default_device_prefers_cuda_then_mps_then_cpu():
    dev = wb.default_device()
    mps = getattr(torch.backends, "mps", None)
    if torch.cuda.is_available():
        assert dev == torch.device("cuda")
    elif mps is not None and mps.is_available():
        assert dev == torch.device("mps")
    else:
        assert dev == torch.device("cpu")
    # and a model there runs
    m = wb.build_model("small-cnn", 1, 10, (16, 16)).to(dev)
    assert m(torch.rand(2, 1, 16, 16, device=dev)).shape == (2, 10)


def _inference_converted(seed=0, size=8):
    """A small CNN with BatchNorm whose parameters were converted under torch.inference_mode()
    (they are inference tensors: torch refuses to set their requires_grad outside it), and an
    identical ordinary copy of it."""
    torch.manual_seed(seed)
    plain = wb.build_model("small-cnn-bn", 1, 10, (size, size)).eval()
    odd = wb.build_model("small-cnn-bn", 1, 10, (size, size))
    odd.load_state_dict(plain.state_dict())
    odd.features[1].weight.grad = torch.ones_like(odd.features[1].weight)  # a gradient to keep
    odd.head[1].weight.requires_grad_(False)  # and a mixed set of flags
    with torch.inference_mode():
        odd.to(memory_format=torch.channels_last).to(torch.float64).to(torch.float32)
    odd.train()
    return plain, odd


def _state(model):
    """Everything preserve_model promises to give back, as comparable values."""
    params = [(name, p.is_inference(), p.requires_grad, p.dtype, p.device, p.stride(),
               p.data_ptr(), None if p.grad is None else (p.grad.data_ptr(), p.grad.sum().item()),
               p.detach().clone() if not p.is_inference() else p.clone())
              for name, p in model.named_parameters()]
    buffers = [(name, id(b), b.is_inference(), b.clone()) for name, b in model.named_buffers()]
    modes = [m.training for m in model.modules()]
    return params, buffers, modes


def _same_state(a, b):
    (pa, ba, ma), (pb, bb, mb) = a, b
    assert ma == mb
    assert [x[:8] for x in pa] == [x[:8] for x in pb]
    assert all(torch.equal(x[8], y[8]) for x, y in zip(pa, pb))
    assert [x[:3] for x in ba] == [x[:3] for x in bb]
    assert all(torch.equal(x[3], y[3]) for x, y in zip(ba, bb))


def test_a_model_converted_under_inference_mode_is_estimated_and_given_back():
    """Issue 18: `model.to(memory_format=torch.channels_last)` inside torch.inference_mode() made
    every estimate fail in preserve_model ("Setting requires_grad=True on inference tensor outside
    InferenceMode"). The estimate now runs, equals that of an ordinary copy of the model, and the
    model comes back exactly as it was (inference tensors, flags, gradient, mode)."""
    plain, odd = _inference_converted()
    assert odd.features[0].weight.is_inference()
    before = _state(odd)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    got = wb.estimate_smoothness(odd, x, [0.1, 0.3], 32, seed=2)
    want = wb.estimate_smoothness(plain, x, [0.1, 0.3], 32, seed=2)
    np.testing.assert_array_equal(got.entropy, want.entropy)
    _same_state(before, _state(odd))


def test_gradients_through_a_model_converted_under_inference_mode():
    """Autograd through inference tensors is refused by torch ("cannot be saved for backward"):
    preserve_model lends ordinary copies of them, so the gradient direction of a landscape (and
    every gradient-based function) works, and gives the inference tensors back."""
    plain, odd = _inference_converted()
    before = _state(odd)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(3))
    got = wb.landscape_2d(odd, x, ("gradient", "random"), extent=0.5, resolution=5)
    want = wb.landscape_2d(plain, x, ("gradient", "random"), extent=0.5, resolution=5)
    np.testing.assert_array_equal(got.predicted, want.predicted)
    np.testing.assert_allclose(got.confidence, want.confidence, rtol=1e-6)
    _same_state(before, _state(odd))
    with wb.models.preserve_model(odd, requires_grad=False):
        xg = x[None].clone().requires_grad_(True)
        odd(xg).sum().backward()
        assert xg.grad is not None and not odd.features[0].weight.requires_grad
    with wb.models.preserve_model(odd, requires_grad=True):
        assert all(p.requires_grad for p in odd.parameters())
    _same_state(before, _state(odd))


class _FailingTrain(nn.Module):
    """A model whose train() changes the modes and then raises (an error while lending)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def train(self, mode=True):
        super().train(mode)
        raise RuntimeError("train() failed")


def test_preserve_model_gives_the_model_back_on_every_error_path():
    m = _FailingTrain()
    nn.Module.train(m, True)
    m.lin.weight.grad = torch.ones_like(m.lin.weight)
    before = _state(m)
    with pytest.raises(RuntimeError, match="train\\(\\) failed"):
        with wb.models.preserve_model(m):
            pass
    _same_state(before, _state(m))
    assert m.training and m.lin.weight.grad is not None
    # an error inside the block, after the block moved and converted the model
    plain, odd = _inference_converted()
    before = _state(odd)
    with pytest.raises(KeyError):
        with wb.models.preserve_model(odd):
            odd.to(torch.float64).to(memory_format=torch.channels_last)
            odd.features[0].weight.requires_grad_(False)
            odd.head[1].weight = nn.Parameter(torch.zeros(1))  # a parameter replaced
            raise KeyError("inside")
    _same_state(before, _state(odd))


def test_a_wrong_image_size_names_the_expected_size():
    """Issue 22.5: the message said which layer refused, not which H×W the model expects."""
    from workbench.models import build_model, check_model_input

    net = build_model("small-cnn", 1, 10, (16, 16))
    with pytest.raises(ValueError, match=r"it was built for 16x16 images with 1 channel\(s\)"):
        check_model_input(net, torch.rand(2, 1, 28, 28), "x")
