import pytest
import torch

from mtl.config import tiny
from mtl.losses import task_losses
from mtl.model import MultiTaskUNet


def test_efficientnet_b4_at_384_has_the_original_shapes():
    torch.manual_seed(0)
    model = MultiTaskUNet(encoder="efficientnet-b4", image_size=384, head="flatten").eval()
    images = torch.rand(1, 1, 384, 384)
    with torch.no_grad():
        features = model.unet.encoder(model.normalise(images))
        output = model(images)
    assert [f.shape[1] for f in features[1:]] == [48, 32, 56, 160, 448]
    assert tuple(features[-1].shape[1:]) == (448, 12, 12)
    assert tuple(output.mask.shape) == (1, 1, 384, 384)
    assert tuple(output.pattern.shape) == (1, 7)
    assert tuple(output.intensity.shape) == (1,)
    # The original head: Linear(448 * 12 * 12 = 64512, 512), ReLU, Linear(512, n).
    assert model.pattern_head[1].in_features == 64512
    assert model.pattern_head[1].out_features == 512


def _batch(n=4, size=64):
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (n, 1, size, size), dtype=torch.uint8, generator=g),
        "pattern": torch.tensor([0, 3, 6, 1][:n]),
        "intensity": torch.tensor([0.0, 1.0, 1.0, 0.0][:n]),
    }


@pytest.mark.parametrize("encoder", ["tu-mobilenetv3_small_050", "tu-resnet10t"])
@pytest.mark.parametrize("head", ["pool", "flatten"])
@pytest.mark.parametrize("seg_loss", ["dice", "bce"])
def test_every_parameter_gets_a_finite_gradient(encoder, head, seg_loss):
    torch.manual_seed(0)
    config = tiny().replace(encoder=encoder, head=head)
    model = MultiTaskUNet.from_config(config).train()
    output = model(_batch()["image"])
    for tensor in (output.mask, output.pattern, output.intensity):
        assert torch.isfinite(tensor).all()
    losses = task_losses(output, _batch(), seg_loss)
    assert all(torch.isfinite(loss) for loss in losses)
    sum(losses).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad


@pytest.mark.parametrize("encoder", ["tu-mobilenetv3_small_050", "efficientnet-b0"])
def test_shared_layer_is_reached_by_all_three_losses(encoder):
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(tiny().replace(encoder=encoder))
    (shared,) = model.shared_parameters()
    losses = task_losses(model(_batch()["image"]), _batch(), "dice")
    for loss in losses:
        (grad,) = torch.autograd.grad(loss, shared, retain_graph=True)
        assert grad.abs().sum() > 0
    # It is the last weight the bottleneck depends on: for EfficientNet that is the final
    # block's projection, not the unused _conv_head that smp keeps in the encoder.
    if encoder == "efficientnet-b0":
        names = {id(p): n for n, p in model.named_parameters()}
        assert names[id(shared)].endswith("_blocks.15._project_conv.weight")


def test_unknown_head_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="flatten, pool"):
        MultiTaskUNet(encoder="tu-mobilenetv3_small_050", head="dense", image_size=64)
