"""Super-resolution degradations: the bicubic default, the options, determinism per image seed, and the
low-resolution condition built from them."""

import pytest
import torch
import torch.nn.functional as F

from stepdistill.conditioning import LRConditioner
from stepdistill.data import IndexLabelled, PatchDataset
from stepdistill.degradations import Degradation


def _images(n=3, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_default_is_the_antialiased_bicubic_downsample():
    hr = _images()
    expected = F.interpolate(hr, size=(4, 4), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    assert torch.equal(Degradation(4)(hr), expected)


@pytest.mark.parametrize("options", [dict(noise_sigma=10.0), dict(noise_sigma=5.0, jpeg_quality=50, blur_sigma=1.0)])
def test_each_image_is_degraded_by_its_own_seed_whatever_the_batch(options):
    d, hr = Degradation(4, **options), _images()
    both = d(hr, seeds=[7, 8, 9])
    assert torch.equal(both, d(hr, seeds=[7, 8, 9]))  # the same in every run
    assert torch.equal(both[1:2], d(hr[1:2], seeds=[8]))  # and alone or in any batch
    assert not torch.equal(both[1], d(hr[1:2], seeds=[10])[0])  # another seed, other noise
    assert both.min() >= -1 and both.max() <= 1


def test_noise_has_the_stated_level_in_8_bit_units():
    hr = torch.zeros(1, 3, 256, 256)
    noisy = Degradation(1, noise_sigma=10.0)(hr, seeds=[0])
    assert abs(float(noisy.std()) * 127.5 - 10.0) < 0.2


def test_blur_and_jpeg_remove_high_frequencies():
    hr = _images(1, 64)

    def high(x):  # energy above half the Nyquist frequency
        spectrum = torch.fft.fft2(x).abs().square()
        f = torch.fft.fftfreq(x.shape[-1]).abs()
        return float(spectrum[..., (f[:, None] > 0.25) | (f[None, :] > 0.25)].sum())

    plain = Degradation(2)(hr)
    assert high(Degradation(2, blur_sigma=1.5)(hr)) < 0.5 * high(plain)
    assert high(Degradation(2, jpeg_quality=10)(hr)) < high(plain)


def test_bad_degradations_fail_clearly():
    with pytest.raises(ValueError, match="scale"):
        Degradation(0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        Degradation(4, jpeg_quality=0)
    with pytest.raises(ValueError, match="one seed per image"):
        Degradation(4, noise_sigma=1.0)(_images())
    with pytest.raises(ValueError, match="divisible"):
        Degradation(3)(_images())


def test_the_condition_is_each_patch_degraded_by_its_index_and_brought_to_the_hr_grid():
    d = Degradation(4, noise_sigma=8.0)
    patches = IndexLabelled(PatchDataset(32, scale=4, num_patches=8, degradation=d))
    conditioner = LRConditioner(patches, d, channels=3)
    labels = torch.tensor([5, -1, 2])
    low = conditioner.lr(labels)
    torch.testing.assert_close(low[0], d(patches[5]["images"][None], seeds=[5])[0])
    assert float(low[1].abs().max()) == 0  # the null condition
    concat = conditioner.cond(labels)["concat"]
    assert concat.shape == (3, 3, 32, 32)
    torch.testing.assert_close(concat, F.interpolate(low, size=(32, 32), mode="bicubic").clamp(-1, 1))
    assert int(patches[5]["class_labels"]) == 5
