"""DeviceAugment on the CPU (named in device_types): geometry against torch.rot90 and hand-made affines,
one affine per sample for both images and the label, untouched samples, seeding."""

from __future__ import annotations

import torch

from conftest import paired_batch
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


def _spatial_only(**kw) -> DeviceAugment:
    return DeviceAugment(p_brightness=0, p_gamma=0, p_noise=0, device_types=("cpu",), **kw)


def test_augment_is_off_on_devices_not_named():
    batch = paired_batch()
    out = DeviceAugment(p_affine=1.0)(batch)  # default device_types: cuda only
    assert all(out[k] is batch[k] for k in ("anat", "pet", "label"))


def test_identity_affine_keeps_the_batch():
    batch = paired_batch()
    out = _spatial_only(p_affine=1.0, rotate_deg=(0, 0, 0), scale=(1, 1))(batch)
    assert torch.equal(out["label"], batch["label"])
    torch.testing.assert_close(out["anat"], batch["anat"], atol=1e-5, rtol=0)


def test_quarter_turn_is_rot90():
    """A 90 degree rotation about the first grid axis (x = W) through the normalised-coordinate
    conversion and nearest sampling equals torch.rot90 over (D, H)."""
    size = 8
    label = torch.arange(size**3).view(1, 1, size, size, size).float()
    theta = torch.tensor([[[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0]]])
    grid = torch.nn.functional.affine_grid(to_normalised(theta, (size,) * 3), [1, 1, size, size, size], align_corners=False)
    out = torch.nn.functional.grid_sample(label, grid, mode="nearest", align_corners=False)
    assert torch.equal(out, torch.rot90(label, 1, dims=(2, 3))) or torch.equal(out, torch.rot90(label, -1, dims=(2, 3)))


def test_anisotropic_patch_keeps_a_rotation_rigid():
    # On a (4, 8, 16) patch a 90 degree turn in the (H, W) plane must map voxel offsets, not
    # normalised ones: the normalised matrix is scaled by the size ratio 16 / 8.
    theta = torch.tensor([[[0.0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]])
    norm = to_normalised(theta, (4, 8, 16))
    assert torch.allclose(norm[0, :, :3], torch.tensor([[0.0, -0.5, 0], [2.0, 0, 0], [0, 0, 1]]))


def test_random_affine_shares_geometry_across_keys_and_keeps_label_ids():
    torch.manual_seed(0)
    batch = paired_batch(n=4, size=16)
    out = _spatial_only(p_affine=1.0, rotate_deg=(30, 30, 30), scale=(0.8, 1.2))(batch)
    assert not torch.equal(out["label"], batch["label"])
    # anat and pet went through one affine: pet is still exactly twice anat
    torch.testing.assert_close(out["pet"], 2 * out["anat"], atol=1e-5, rtol=0)
    assert set(out["label"].unique().tolist()) <= set(batch["label"].unique().tolist())
    assert out["label"].dtype == batch["label"].dtype and out["use_anat"] is batch["use_anat"]


def test_random_affine_matrices_respect_their_ranges():
    theta = random_affine_matrices(256, rotate_deg=(0, 0, 0), scale=(0.5, 2.0), translate=0.1)
    zoom = 1.0 / theta[:, 0, 0]
    assert torch.allclose(theta[:, :, :3], torch.diag_embed(1.0 / zoom[:, None].expand(-1, 3)))
    assert zoom.min() >= 0.5 and zoom.max() <= 2.0 and theta[:, :, 3].abs().max() <= 0.1


def test_intensity_changes_are_the_configured_ones():
    batch = paired_batch()
    out = DeviceAugment(p_affine=0, p_brightness=1.0, brightness=(2, 2), p_gamma=0, p_noise=0, device_types=("cpu",))(batch)
    torch.testing.assert_close(out["anat"], 2 * batch["anat"])
    assert torch.equal(out["label"], batch["label"])
    out = DeviceAugment(p_affine=0, p_brightness=0, p_gamma=1.0, gamma=(2, 2), p_noise=0, device_types=("cpu",))(batch)
    torch.testing.assert_close(out["anat"], batch["anat"] ** 2)
