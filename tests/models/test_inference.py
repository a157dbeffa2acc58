"""Streamed sliding-window labels against MONAI's sliding_window_inference(...).argmax(1)[0]."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from conftest import assert_same_labels, small_net
from umd_lightning.models.inference import plan_windows, sliding_window_labels, tta_flips


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: with other jobs on the machine, OpenMP hand-offs cost more than the work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def monai_scores(image, net, roi, overlap, mode, sw_batch_size=4, sigma_scale=0.125):
    with torch.no_grad():
        return sliding_window_inference(image, roi, sw_batch_size, net, overlap, mode, sigma_scale)[0]


# (volume size, roi): odd sizes, smaller than the window along one axis, anisotropic windows,
# smaller than the window along every axis.
GEOMETRIES = [
    ((37, 41, 29), (16, 16, 16)),
    ((11, 40, 33), (16, 12, 20)),
    ((23, 9, 50), (8, 24, 12)),
    ((7, 5, 9), (8, 8, 8)),
]


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("size, roi", GEOMETRIES)
def test_labels_match_monai(size, roi, overlap, mode):
    torch.manual_seed(1)
    image = torch.randn(1, 2, *size)
    net = small_net()
    ours = sliding_window_labels(image, net, roi, sw_batch_size=3, overlap=overlap, mode=mode)
    assert ours.dtype == torch.uint8 and ours.device.type == "cpu"
    assert_same_labels(ours, monai_scores(image, net, roi, overlap, mode))


def test_comparison_can_fail():
    # The check above has teeth: another overlap (other window positions) disagrees with MONAI.
    torch.manual_seed(1)
    image = torch.randn(1, 2, 37, 41, 29)
    net = small_net()
    ours = sliding_window_labels(image, net, 16, overlap=0.5, mode="gaussian")
    with pytest.raises(AssertionError):
        assert_same_labels(ours, monai_scores(image, net, 16, 0.25, "gaussian"))


def test_per_axis_overlap_and_sigma_match_monai():
    torch.manual_seed(2)
    image = torch.randn(1, 1, 30, 26, 35)
    net = small_net(in_channels=1)
    ours = sliding_window_labels(image, net, (12, 10, 16), overlap=(0.5, 0.0, 0.25), sigma_scale=(0.1, 0.2, 0.125))
    ref = monai_scores(image, net, (12, 10, 16), (0.5, 0.0, 0.25), "gaussian", sigma_scale=(0.1, 0.2, 0.125))
    assert_same_labels(ours, ref)


def _recorder(store: list):
    def predictor(x):
        store.extend(w.clone() for w in x)
        return x[:, :1].repeat(1, 2, 1, 1, 1)

    return predictor


@pytest.mark.parametrize("size, roi", GEOMETRIES)
def test_same_windows_as_monai_each_once(size, roi):
    # Voxel values encode position (and MONAI's zero padding stays zero), so equal multisets of
    # window contents mean the same windows, including the shifted last one and the padded ones.
    image = torch.arange(1, 1 + np.prod(size), dtype=torch.float32).reshape(1, 1, *size)
    theirs: list = []
    ours: list = []
    with torch.no_grad():
        sliding_window_inference(image, roi, 4, _recorder(theirs), 0.25, "constant")
    sliding_window_labels(image, _recorder(ours), roi, overlap=0.25)
    key = lambda w: w.numpy().tobytes()  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert len(ours) == len(theirs)


def test_plan_positions_are_monais():
    plan = plan_windows((400, 512, 512), 96, 0.25, 4)
    expected = dense_patch_slices((400, 512, 512), (96, 96, 96), (72, 72, 72))
    assert sorted(map(tuple, plan.starts.tolist())) == sorted(tuple(s.start for s in w) for w in expected)
    # The last window on each axis is shifted back to end at the border (not a padded 7th step).
    assert plan.starts[:, 0].max() == 400 - 96 and plan.starts[:, 1].max() == 512 - 96
    assert sorted(plan.order.tolist()) == list(range(plan.num_windows))


def test_plan_buffer_is_thinner_than_a_window_deep_slab():
    # The whole-body case: the live scores must stay well below (window depth x whole slice)
    # of the smallest cross-section, let alone the whole volume.
    plan = plan_windows((400, 512, 512), 96, 0.25, 4)
    slab = 96 * 400 * 512
    assert plan.peak_buffer_voxels < slab / 2
    assert plan.peak_buffer_voxels < 400 * 512 * 512 / 10


def test_observed_buffer_within_plan(caplog):
    torch.manual_seed(3)
    image = torch.randn(1, 1, 45, 40, 38)
    net = small_net(in_channels=1)
    with caplog.at_level(logging.DEBUG, logger="umd_lightning.models.inference"):
        sliding_window_labels(image, net, 12, overlap=0.25)
    record = [r for r in caplog.records if hasattr(r, "peak_buffer_voxels")][-1]
    plan = plan_windows((45, 40, 38), 12, 0.25, 4)
    assert 0 < record.peak_buffer_voxels <= plan.peak_buffer_voxels < 45 * 40 * 38 / 3


def test_many_classes_int16():
    torch.manual_seed(4)
    image = torch.randn(1, 1, 14, 13, 12)
    net = torch.nn.Conv3d(1, 300, 1).eval()
    ours = sliding_window_labels(image, net, 8, overlap=0.5)
    assert ours.dtype == torch.int16
    assert_same_labels(ours, monai_scores(image, net, 8, 0.5, "gaussian"))


def test_tta_flips_words():
    assert tta_flips(False) == []
    assert tta_flips(True) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert tta_flips((2, 1)) == [(1,), (2,), (1, 2)]
    assert tta_flips([(2,), (1, 2), ()]) == [(2,), (1, 2)]
    with pytest.raises(ValueError, match="spatial axes"):
        tta_flips((3,))


def test_tta_matches_monai_with_mirrored_predictor():
    torch.manual_seed(5)
    image = torch.randn(1, 2, 25, 22, 19)
    net = small_net()
    flips = [(3,), (4,), (3, 4)]  # torch dims of spatial axes 1 and 2

    def mirrored(x):  # nnU-Net's mirroring written out independently
        out = net(x)
        for dims in flips:
            out = out + torch.flip(net(torch.flip(x, dims)), dims)
        return out / (len(flips) + 1)

    ours = sliding_window_labels(image, net, 12, tta=(1, 2))
    assert_same_labels(ours, monai_scores(image, mirrored, 12, 0.25, "gaussian"))
    plain = sliding_window_labels(image, net, 12)
    assert (plain != ours).any()  # the flips change something


def test_save_probabilities(tmp_path):
    torch.manual_seed(6)
    image = torch.randn(1, 2, 21, 26, 17)
    net = small_net(classes=4)
    path = tmp_path / "probs.npy"
    for mode in ("gaussian", "constant"):
        labels = sliding_window_labels(image, net, (10, 12, 8), overlap=0.5, mode=mode, save_probabilities=path)
        probs = np.load(path)
        assert probs.dtype == np.float16 and probs.shape == (4, 21, 26, 17)
        expected = torch.softmax(monai_scores(image, net, (10, 12, 8), 0.5, mode), 0).numpy()
        np.testing.assert_allclose(probs.astype(np.float32), expected, atol=2e-3)
        assert_same_labels(labels, monai_scores(image, net, (10, 12, 8), 0.5, mode))
    with pytest.raises(ValueError, match=".npy"):
        sliding_window_labels(image, net, 8, save_probabilities=tmp_path / "probs.nii")


def test_autocast_cpu_matches_monai_under_the_same_autocast():
    torch.manual_seed(7)
    image = torch.randn(1, 2, 20, 18, 22)
    net = small_net()
    ours = sliding_window_labels(image, net, 10, autocast=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = monai_scores(image, net, 10, 0.25, "gaussian")
    # bfloat16 logits: compare labels where MONAI's top two classes are not within bf16 rounding.
    top2 = scores.float().topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 0.02 * (1 + top2[0].abs())
    assert clear.float().mean() > 0.5
    assert torch.equal(ours.long()[clear], scores.argmax(0)[clear])


def test_inputs_and_outputs():
    torch.manual_seed(8)
    image = torch.randn(1, 1, 12, 10, 9)
    seen = []

    def predictor(x):
        seen.append(torch.is_inference_mode_enabled())
        return torch.cat([x, -x], dim=1)

    labels = sliding_window_labels(MetaTensor(image), predictor, 8)
    assert all(seen)
    assert torch.equal(labels.long(), (image[0, 0] < 0).long())  # argmax of (x, -x)
    labels[labels == 1] = 2  # a normal tensor: callers may edit it in place
    assert isinstance(labels, torch.Tensor) and not isinstance(labels, MetaTensor)


def test_bad_inputs_name_the_problem():
    net = small_net(in_channels=1)
    with pytest.raises(ValueError, match=r"\(1, C, D, H, W\)"):
        sliding_window_labels(torch.zeros(2, 1, 8, 8, 8), net, 8)
    with pytest.raises(ValueError, match=r"\(1, C, D, H, W\)"):
        sliding_window_labels(torch.zeros(1, 8, 8, 8), net, 8)
    with pytest.raises(ValueError, match="predictor returned shape"):
        sliding_window_labels(torch.zeros(1, 1, 8, 8, 8), lambda x: x[..., :4], 8)
    with pytest.raises(TypeError, match="logits tensor"):
        sliding_window_labels(torch.zeros(1, 1, 8, 8, 8), lambda x: (x,), 8)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_labels(torch.zeros(1, 1, 8, 8, 8), net, 4, overlap=1.0)
    with pytest.raises(ValueError, match="mode"):
        sliding_window_labels(torch.zeros(1, 1, 8, 8, 8), net, 4, mode="mean")


class _FakeEvent:
    """Stands in for torch.cuda.Event on a CPU-only machine; every other query() says 'not yet'."""

    calls = 0

    def record(self, stream=None):
        self.recorded = True

    def query(self):
        _FakeEvent.calls += 1
        return _FakeEvent.calls % 2 == 0

    def synchronize(self):
        assert self.recorded


class _FakeStream:
    def __init__(self, device=None):
        self.waited = []

    def wait_event(self, event):
        assert event.recorded
        self.waited.append(event)


def test_cuda_pipeline_logic_on_cpu(monkeypatch, tmp_path):
    # The pinned-memory / side-stream pipeline cannot run here; drive its bookkeeping (two staging
    # slots, batched label copies unpacked later by offset, probabilities) with stand-ins for the
    # CUDA primitives, and check it gives the plain CPU path's answer.
    import contextlib

    from umd_lightning.models import inference

    real_empty = torch.empty

    def empty(*args, pin_memory=False, **kwargs):
        return real_empty(*args, **kwargs)

    current = _FakeStream()
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch, "empty", empty)

    torch.manual_seed(9)
    image = torch.randn(1, 2, 23, 19, 26)
    net = small_net(classes=4)
    cpu = torch.device("cpu")
    plan = inference.plan_windows((23, 19, 26), (10, 8, 12), 0.5, 3)
    from monai.data.utils import compute_importance_map

    importance = compute_importance_map((10, 8, 12), mode="gaussian", device=cpu)
    amp = contextlib.nullcontext
    path = tmp_path / "p.npy"
    piped = inference._run(image, net, plan, cpu, importance, [], amp, path, False, cuda=True)
    probs = np.load(path)
    plain = inference._run(image, net, plan, cpu, importance, [], amp, tmp_path / "q.npy", False, cuda=False)
    assert torch.equal(piped, plain)
    np.testing.assert_array_equal(probs, np.load(tmp_path / "q.npy"))
    assert len(current.waited) == -(-plan.num_windows // 3)  # the network waited for each batch's copy
    assert_same_labels(piped, monai_scores(image, net, (10, 8, 12), 0.5, "gaussian", sw_batch_size=3))
