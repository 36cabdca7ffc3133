import pytest
import torch

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
