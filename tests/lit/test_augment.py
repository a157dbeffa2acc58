"""DeviceAugment on the CPU (named in device_types): shared affine, untouched samples, seeding."""

from __future__ import annotations

import torch

from umd_lightning.lit.augment import DeviceAugment, random_affine_matrices, to_normalised

NONE = dict(p_affine=0.0, p_brightness=0.0, p_gamma=0.0, p_noise=0.0)


def blocks(n: int = 2, size: int = 24) -> dict[str, torch.Tensor]:
    """Label of large constant blocks, and images equal to it: warping all three the same way keeps them equal
    away from block borders."""
    label = torch.zeros(n, 1, size, size, size, dtype=torch.long)
    label[:, :, 4:14, 6:20, 3:12] = 1
    label[:, :, 12:22, 2:10, 10:21] = 2
    image = label.float() / 2
    return {"anat": image.clone(), "pet": image.clone(), "label": label, "use_anat": torch.ones(n, dtype=torch.bool)}


def test_off_on_devices_not_named_and_identity_without_probabilities():
    batch = blocks()
    assert DeviceAugment()(batch)["anat"] is batch["anat"]  # default: cuda only
    out = DeviceAugment(**NONE, device_types=("cpu",))(batch)
    for key in ("anat", "pet", "label"):
        assert torch.equal(out[key], batch[key])
    assert out["use_anat"] is batch["use_anat"]


def test_affine_is_shared_by_both_images_and_the_label():
    torch.manual_seed(3)
    batch = blocks()
    aug = DeviceAugment(**{**NONE, "p_affine": 1.0}, rotate_deg=(20, 20, 20), device_types=("cpu",))
    out = aug(batch)
    assert not torch.equal(out["label"], batch["label"])  # something moved
    assert torch.equal(out["anat"], out["pet"])  # one affine per sample for both images
    assert out["label"].dtype == torch.long and set(out["label"].unique().tolist()) <= {0, 1, 2}
    agree = (out["anat"] * 2).round().long() == out["label"]
    assert agree.float().mean() > 0.97  # bilinear image and nearest label disagree only on borders


def test_samples_not_drawn_are_untouched():
    batch = blocks(n=6)
    torch.manual_seed(0)
    drawn = torch.rand(6) < 0.5  # the same host draw the augmentation makes first
    torch.manual_seed(0)
    out = DeviceAugment(**{**NONE, "p_affine": 0.5}, device_types=("cpu",))(batch)
    assert 0 < int(drawn.sum()) < 6
    for i in range(6):
        same = torch.equal(out["label"][i], batch["label"][i]) and torch.equal(out["anat"][i], batch["anat"][i])
        assert same == (not bool(drawn[i])), i


def test_seeded_runs_repeat():
    aug = DeviceAugment(p_affine=0.5, p_brightness=0.5, p_gamma=0.5, p_noise=0.5, device_types=("cpu",))
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        outs.append(aug(blocks(n=4)))
    for key in ("anat", "pet", "label"):
        assert torch.equal(outs[0][key], outs[1][key])


def test_intensity_changes_stay_per_sample():
    torch.manual_seed(5)
    batch = blocks(n=8)
    out = DeviceAugment(**{**NONE, "p_brightness": 1.0}, brightness=(0.5, 0.6), device_types=("cpu",))(batch)
    ratio = out["anat"].amax(dim=(1, 2, 3, 4)) / batch["anat"].amax(dim=(1, 2, 3, 4))
    assert torch.all((ratio >= 0.5) & (ratio <= 0.6)) and len(set(ratio.tolist())) == 8
    assert torch.equal(out["label"], batch["label"])


def test_random_affines_are_rotations_times_a_zoom():
    theta = random_affine_matrices(16, rotate_deg=(30, 30, 30), scale=(0.8, 1.25), translate=0.1)
    assert theta.shape == (16, 3, 4) and theta.device.type == "cpu"
    linear = theta[:, :, :3].double()
    zoom = 1 / linear.det().abs().pow(1 / 3)
    assert torch.all((zoom >= 0.8 - 1e-5) & (zoom <= 1.25 + 1e-5))
    rotation = linear * zoom[:, None, None]
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(16, 3, 3),
                               atol=1e-5, rtol=0)
    assert theta[:, :, 3].abs().max() <= 0.1
    # normalised coordinates: S A S^-1 with S = diag(2 / (W, H, D)); the identity stays the identity
    eye = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)[None]
    torch.testing.assert_close(to_normalised(eye, (8, 16, 32)), eye)
