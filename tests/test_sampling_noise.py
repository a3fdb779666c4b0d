"""Per-sample seeding: sample i depends only on (seed, i), whatever the batching."""

import torch

from diffusability.diffusion.transformer import DiffusionTransformer, TransformerConfig
from diffusability.sampling.generate import generate_latents
from diffusability.sampling.noise import sample_labels, sample_noise


def test_noise_of_an_index_does_not_depend_on_its_company():
    a = sample_noise(5, [0, 1, 2, 3], (2, 3, 3))
    b = sample_noise(5, [3, 1], (2, 3, 3))
    assert a.shape == (4, 2, 3, 3)
    assert torch.equal(a[3], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(sample_noise(6, [0], (2, 3, 3))[0], a[0])


def test_labels_are_per_index_and_roughly_uniform():
    labels = sample_labels(1, range(4000), 4)
    assert labels.dtype == torch.int64 and int(labels.min()) == 0 and int(labels.max()) == 3
    counts = torch.bincount(labels, minlength=4).float()
    assert bool(((counts - 1000).abs() < 120).all())  # ≈ 4 standard deviations
    assert torch.equal(sample_labels(1, [3999, 7], 4), labels[[3999, 7]])


def test_batch_size_does_not_change_the_samples():
    torch.manual_seed(0)
    model = DiffusionTransformer(TransformerConfig(in_channels=2, grid_size=4, num_classes=3, depth=1, width=16,
                                                   heads=2, pos_embed="rope+sincos", norm="rmsnorm", mlp="swiglu"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    kwargs = dict(model=model, seed=11, indices=range(10), num_classes=3, latent_shape=(2, 4, 4), num_steps=4,
                  cfg_scale=1.5, trajectory_indices=[0, 8])
    small = generate_latents(batch_size=3, **kwargs)
    large = generate_latents(batch_size=7, **kwargs)
    assert torch.equal(small["labels"], large["labels"])
    assert torch.allclose(small["latents"], large["latents"], atol=1e-5)
    assert small["trajectory"].shape == (5, 2, 2, 4, 4)
    assert small["trajectory_index"].tolist() == [0, 8]
    assert torch.allclose(small["trajectory"], large["trajectory"], atol=1e-5)
    # a shard of the indices reproduces the same samples
    shard = generate_latents(**{**kwargs, "indices": [8, 9]}, batch_size=2)
    assert torch.allclose(shard["latents"], small["latents"][8:], atol=1e-5)
