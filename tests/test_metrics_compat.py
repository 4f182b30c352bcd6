"""The grad-cam metrics at their import paths: numbers on hand-computable
cases, the ROAD imputer against a dense solve, batched = per image, the accepted cam forms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import nn

from pytorch_grad_cam.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    multiply_tensor_with_cam,
)
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
    keep_least_relevant,
    otsu_thresholds,
)
from pytorch_grad_cam.metrics.road import (
    NoisyLinearImputer,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
    solve_interpolation,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

CG_TOLERANCE = 1e-6


class PixelReader(nn.Module):
    """Outputs chosen linear read-outs of channel 0: the mean of each of ``regions``
    (a list of (H, W) bool masks), and no parameters to learn."""

    def __init__(self, regions):
        super().__init__()
        weights = torch.stack([torch.as_tensor(r, dtype=torch.float32) / r.sum() for r in regions])
        self.register_buffer("weights", weights)

    def forward(self, x):
        return torch.einsum("bhw,khw->bk", x[:, 0], self.weights)


def rows(height, width, *indices):
    masks = []
    for index in indices:
        mask = np.zeros((height, width), bool)
        mask[index] = True
        masks.append(mask)
    return masks


def zero_imputer(img, mask):
    """The reference's per-image imputer signature; fills removed pixels with 0."""
    return img * mask


# ----------------------------------------------------------------- hand-computed values
def test_cam_mult_image_metrics_equal_the_hand_values():
    model = PixelReader(rows(4, 4, (slice(0, 2), slice(None)))).eval()  # mean of the top half
    x = torch.ones(2, 3, 4, 4)
    cams = np.ones((2, 4, 4), np.float32)
    cams[0, :2] = 0.25  # image 0: the top half fades to 0.25 -> score 1 -> 0.25
    targets = [ClassifierOutputTarget(0)] * 2
    change = CamMultImageConfidenceChange()(x, cams, targets, model)
    np.testing.assert_allclose(change, [-0.75, 0.0], atol=1e-7)
    assert change.dtype == np.float32 and change.shape == (2,)
    np.testing.assert_allclose(DropInConfidence()(x, cams, targets, model), [0.75, 0.0], atol=1e-7)
    cams[1, :2] = 2.0  # image 1: score 1 -> 2
    np.testing.assert_allclose(IncreaseInConfidence()(x, cams, targets, model), [0.0, 1.0])
    after = CamMultImageConfidenceChange()(x, cams, targets, model, return_diff=False)
    np.testing.assert_allclose(after, [0.25, 2.0], atol=1e-7)


@pytest.mark.parametrize("metric", [CamMultImageConfidenceChange, DropInConfidence, IncreaseInConfidence])
def test_return_visualization_works_for_every_cam_mult_image_metric(metric):
    model = PixelReader(rows(4, 4, (slice(0, 2), slice(None)))).eval()
    x = torch.rand(2, 3, 4, 4)
    cams = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    scores, visualization = metric()(x, cams, [ClassifierOutputTarget(0)] * 2, model, return_visualization=True)
    np.testing.assert_array_equal(scores, metric()(x, cams, [ClassifierOutputTarget(0)] * 2, model))
    torch.testing.assert_close(visualization, x * torch.from_numpy(cams)[:, None])
    torch.testing.assert_close(multiply_tensor_with_cam(x[0], torch.from_numpy(cams[0])), visualization[0])


def test_remove_most_and_least_relevant_first_with_a_constant_imputer():
    # cam = 0..15 row by row; outputs: means of rows 0, 2 and 3; the input is all ones.
    model = PixelReader(rows(4, 4, 0, 2, 3)).eval()
    x = torch.ones(1, 3, 4, 4)
    cams = (np.arange(16, dtype=np.float32) / 15).reshape(1, 4, 4)
    vector = [lambda output: output]  # a vector-valued target: scores (B, 3)
    # MoRF 75: np.percentile = 11.25/15, keeps 0..11, zeroes row 3 -> its mean 1 -> 0.
    morf = PerturbationConfidenceMetric(RemoveMostRelevantFirst(75, zero_imputer))
    np.testing.assert_allclose(morf(x, cams, vector, model), [[0, 0, -1]], atol=1e-7)
    # LeRF 75: keeps the top 75 % (cam > 3.75/15), zeroes row 0.
    lerf = PerturbationConfidenceMetric(RemoveLeastRelevantFirst(75, zero_imputer))
    np.testing.assert_allclose(lerf(x, cams, vector, model), [[-1, 0, 0]], atol=1e-7)
    # MoRF 50 removes rows 2 and 3; the average over (75, 50) by hand.
    average = AveragerAcrossThresholds(
        lambda p: PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, zero_imputer)), percentiles=(75, 50)
    )
    np.testing.assert_allclose(average(x, cams, vector, model), [[0, -0.5, -1]], atol=1e-7)
    after, perturbed = morf(x, cams, vector, model, return_visualization=True, return_diff=False)
    np.testing.assert_allclose(after, [[1, 1, 0]], atol=1e-7)
    assert perturbed[0, :, 3].abs().sum() == 0 and (perturbed[0, :, :3] == 1).all()


#: ROAD's noisy linear imputation (Rong et al., 2022), from its definition: a removed
#: pixel is the weighted mean of its 8 neighbours, weight 1/6 for the 4 direct and 1/12
#: for the 4 diagonal ones. ((dy, dx), weight), written here, not the library's table.
ROAD_WEIGHTS = tuple(
    ((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


def neighbour_mean(image, y, x):
    """The interpolation of an interior pixel whose 8 neighbours are known: Σ w·v / Σ w."""
    return sum(w * image[y + dy, x + dx] for (dy, dx), w in ROAD_WEIGHTS) / sum(w for _, w in ROAD_WEIGHTS)


def test_road_combined_equals_the_hand_value():
    # A 6x6 ranking with its maximum at P and its minimum at Q (both interior): MoRF 99
    # removes only P, LeRF 99 removes only Q; the model outputs x[P] - x[Q] (channel 0).
    generator = np.random.default_rng(1)
    cam = generator.permutation(36).astype(np.float32).reshape(6, 6) / 35
    P, Q = (2, 3), (3, 1)
    cam[P], cam[np.unravel_index(cam.argmax(), cam.shape)] = cam.max(), cam[P]
    cam[Q], cam[np.unravel_index(cam.argmin(), cam.shape)] = cam.min(), cam[Q]
    reader = PixelReader(rows(6, 6, P, Q)).eval()
    model = nn.Sequential(reader, nn.Linear(2, 1, bias=False)).eval()
    model[1].weight.data = torch.tensor([[1.0, -1.0]])
    x = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    image = x[0, 0].double().numpy()
    imputer = NoisyLinearImputer(noise=0)
    value = ROADCombined(percentiles=(99,), imputer=imputer)(x, cam[None], [lambda o: o[0]], model)
    after_lerf = image[P] - neighbour_mean(image, *Q)
    after_morf = neighbour_mean(image, *P) - image[Q]
    np.testing.assert_allclose(value, [(after_lerf - after_morf) / 2], atol=1e-6)
    before = image[P] - image[Q]
    morf = ROADMostRelevantFirst(99, imputer=imputer)(x, cam[None], [lambda o: o[0]], model)
    lerf = ROADLeastRelevantFirst(99, imputer=imputer)(x, cam[None], [lambda o: o[0]], model)
    np.testing.assert_allclose(morf, [after_morf - before], atol=1e-6)
    np.testing.assert_allclose(lerf, [after_lerf - before], atol=1e-6)


def test_complexity_pearson_coherency_and_arcc_equal_the_hand_values():
    generator = np.random.default_rng(2)
    cams = generator.random((3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(Complexity()(cams), np.abs(cams).mean((1, 2)), rtol=1e-6)
    other = generator.random((3, 8, 8)).astype(np.float32)
    expected = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(cams, other)]
    np.testing.assert_allclose(batch_pearson_coherency(cams, other), expected, rtol=1e-5)
    np.testing.assert_allclose(batch_pearson_coherency(torch.from_numpy(cams), other), expected, rtol=1e-5)

    x = torch.from_numpy(generator.random((3, 3, 8, 8)).astype(np.float32))
    calls = []

    def base_method(input_tensor, targets):
        calls.append(input_tensor)
        return input_tensor[:, 0].numpy() ** 2

    coherency = Coherency()(x, cams, None, None, base_method)
    mixed = x.numpy() * cams[:, None]
    np.testing.assert_allclose(calls[0].numpy(), mixed, rtol=1e-6)
    rho = [np.corrcoef((m[0] ** 2).ravel(), c.ravel())[0, 1] for m, c in zip(mixed, cams)]
    np.testing.assert_allclose(coherency, (np.array(rho) + 1) / 2, rtol=1e-5)

    model = PixelReader(rows(8, 8, (slice(0, 4), slice(None)), (slice(4, 8), slice(None)))).eval()
    targets = [ClassifierOutputSoftmaxTarget(0)] * 3
    imputer = NoisyLinearImputer(noise=0)
    arcc = ARCC(base_method, road_percentiles=(20, 80), imputer=imputer)(x, cams, targets, model)
    road = np.clip(2 * ROADCombined((20, 80), imputer=imputer)(x, cams, targets, model), 0, 1)
    cx = Complexity()(cams)
    coh = Coherency()(x, cams, targets, model, base_method)
    harmonic = 3 / (1 / (coh + 1e-8) + 1 / (1 - cx + 1e-8) + 1 / (road + 1e-8))
    np.testing.assert_allclose(arcc, harmonic, rtol=1e-5)
    assert ((arcc >= 0) & (arcc <= 1)).all()


# ------------------------------------------------------------------------- the imputer
def interpolation_system(known, weights=ROAD_WEIGHTS):
    """The imputation's linear system for one (H, W) bool mask of known pixels, as a
    scipy sparse matrix: for every missing pixel p with in-bounds neighbours N(p),
    (Σ_q w_q)·x_p − Σ_{q missing} w_q·x_q = Σ_{q known} w_q·v_q. Returns (the flat
    indices of the missing pixels, the CSC matrix, the (missing, known pixel, weight)
    triples of the right-hand side)."""
    height, width = known.shape
    known = np.asarray(known, bool).ravel()
    unknown = np.flatnonzero(~known)
    index = np.full(height * width, -1)
    index[unknown] = np.arange(len(unknown))
    ys, xs = np.divmod(unknown, width)
    rows, columns, entries, sources = [], [], [], []
    diagonal = np.zeros(len(unknown))
    for (dy, dx), w in weights:
        yy, xx = ys + dy, xs + dx
        inside = (0 <= yy) & (yy < height) & (0 <= xx) & (xx < width)
        diagonal[inside] += w
        neighbour = yy[inside] * width + xx[inside]
        source = np.flatnonzero(inside)
        is_known = known[neighbour]
        sources.append((source[is_known], neighbour[is_known], w))
        rows.append(source[~is_known])
        columns.append(index[neighbour[~is_known]])
        entries.append(np.full((~is_known).sum(), -w))
    rows.append(np.arange(len(unknown)))
    columns.append(np.arange(len(unknown)))
    entries.append(diagonal)
    matrix = scipy.sparse.csc_matrix(
        (np.concatenate(entries), (np.concatenate(rows), np.concatenate(columns))), shape=(len(unknown),) * 2
    )
    return unknown, matrix, sources


def sparse_impute(image, known, weights=ROAD_WEIGHTS):
    """The removed pixels of ``image`` (C, H, W) filled by a direct sparse solve
    (scipy's spsolve, float64, all channels as right-hand sides), the known ones kept;
    also the system's matrix."""
    unknown, matrix, sources = interpolation_system(known.numpy(), weights)
    values = image.double().numpy().reshape(image.shape[0], -1)
    rhs = np.zeros((len(unknown), image.shape[0]))
    for rows, neighbours, w in sources:  # each missing pixel once per offset: += is safe
        rhs[rows] += w * values[:, neighbours].T
    solution = scipy.sparse.linalg.spsolve(matrix, rhs).reshape(len(unknown), -1)
    filled = values.copy()
    filled[:, unknown] = solution.T
    return torch.from_numpy(filled.reshape(image.shape)), matrix


@pytest.mark.parametrize("weights", [None, (((0, 1), 0.3), ((0, -1), 0.3), ((1, 1), 0.1), ((-1, -1), 0.1))])
def test_imputer_matches_a_direct_solve_of_the_same_system(weights):
    """The default weighting is ROAD's (1/6 direct, 1/12 diagonal, written in this
    file), and a custom one is used as given."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 8, 8, generator=generator)
    known = torch.rand(2, 8, 8, generator=generator) > 0.6
    filled = NoisyLinearImputer(noise=0, weighting=weights, tolerance=CG_TOLERANCE).impute_batch(images, known.float())
    for b in range(2):
        expected, matrix = sparse_impute(images[b], known[b], ROAD_WEIGHTS if weights is None else weights)
        dense = matrix.toarray()
        np.testing.assert_array_equal(dense, dense.T)  # symmetric: conjugate gradients applies
        assert np.linalg.eigvalsh(dense).min() > 0
        # error <= cond(A) * tolerance * |x|, with cond(A) of this small system below 100
        assert (filled[b].double() - expected).abs().max() < 100 * CG_TOLERANCE
        assert torch.equal(filled[b][:, known[b]], images[b][:, known[b]])  # known pixels unchanged


@pytest.mark.parametrize("percentile", [20, 80])
def test_default_tolerance_keeps_imputed_values_within_1e_3_of_a_direct_solve(percentile):
    """ROAD's own masks at 224 x 224 (a smooth random map's top/bottom pixels removed):
    the default tolerance (1e-5, float32) against scipy's sparse direct solve."""
    generator = torch.Generator().manual_seed(9)
    images = torch.rand(2, 3, 224, 224, generator=generator)
    maps = torch.nn.functional.interpolate(
        torch.rand(2, 1, 7, 7, generator=generator), size=(224, 224), mode="bilinear"
    )[:, 0]
    maps = torch.cat([maps[:1], 1 - maps[1:]])  # most and least relevant first
    known = maps < torch.quantile(maps.flatten(1), percentile / 100, dim=1)[:, None, None]
    filled = NoisyLinearImputer(noise=0).impute_batch(images, known.float())
    for b in range(2):
        expected, _ = sparse_impute(images[b], known[b])
        assert (filled[b].double() - expected).abs().max() < 1e-3


def test_imputer_fills_an_interior_hole_with_the_neighbours_weighted_mean():
    image = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(5, 5)
    mask[2, 2] = 0
    filled = NoisyLinearImputer(noise=0)(image, mask)
    for c in range(3):
        assert abs(float(filled[c, 2, 2]) - neighbour_mean(image[c].double().numpy(), 2, 2)) < 1e-6
    filled[:, 2, 2] = image[:, 2, 2]
    assert torch.equal(filled, image)


def test_imputer_on_a_large_hole_converges_and_an_empty_mask_gives_zeros():
    height = 48
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, height), indexing="ij")
    known = (yy**2 + xx**2 > 0.5)[None].expand(2, height, height)
    images = torch.rand(2, 3, height, height, generator=torch.Generator().manual_seed(5))
    filled, iterations = solve_interpolation(images, known, tolerance=CG_TOLERANCE, dtype=torch.float64)
    assert 0 < iterations < 40
    # the residual of the unknowns' equations is within the tolerance
    missing = ~known
    from pytorch_grad_cam.metrics.road import _kernel, _Stencil

    stencil = _Stencil(_kernel(None))
    full = filled.double()
    degree = stencil(torch.ones(1, 1, height, height, dtype=torch.float64))
    residual = (degree * full - stencil(full)) * missing[:, None]
    rhs_norm = (stencil(images.double() * known[:, None]) * missing[:, None]).flatten(2).norm(dim=2)
    assert (residual.flatten(2).norm(dim=2) <= 1.01 * CG_TOLERANCE * rhs_norm).all()

    nothing = NoisyLinearImputer(noise=0).impute_batch(images, torch.zeros(2, height, height))
    assert torch.equal(nothing, torch.zeros_like(images))


def test_imputer_multigrid_is_the_galerkin_hierarchy_and_converges_fast_on_edge_holes():
    """The preconditioner's coarse operators are Pᵀ·A·P of the masked system (dense, by
    hand), its restriction is Pᵀ, and a hole touching the image's edges (no known pixel
    pins it there) converges as fast as an interior one: 9 and 8 iterations at 1e-6
    (float64) on these 48 x 48 masks, where re-discretised coarse grids took 22 and 11."""
    from pytorch_grad_cam.metrics.road import _kernel, _Multigrid, _prolong, _restrict, _Stencil

    size, coarse = 10, 6  # an even side: the coarse grid keeps the last node
    known = torch.rand(1, size, size, generator=torch.Generator().manual_seed(11)) > 0.7
    missing = (~known).double()[:, None]
    hierarchy = _Multigrid(missing, _Stencil(_kernel(None).double()))

    def dense(apply, side):
        eye = torch.eye(side * side, dtype=torch.float64).reshape(-1, 1, side, side)
        return torch.stack([apply(e[None]).flatten() for e in eye], dim=1)

    fine = dense(lambda e: hierarchy.levels[0].apply(e * missing), size)
    prolong = dense(lambda e: _prolong(e, (size, size)) * missing, coarse)
    restrict = dense(lambda e: _restrict(e * missing), size)
    torch.testing.assert_close(restrict, prolong.T, atol=1e-15, rtol=0)
    torch.testing.assert_close(dense(hierarchy.levels[1].apply, coarse), prolong.T @ fine @ prolong, atol=1e-12, rtol=0)
    # constants are interpolated exactly up to the last row and column
    torch.testing.assert_close(_prolong(torch.ones(1, 1, coarse, coarse), (size, size)), torch.ones(1, 1, size, size))

    height = 48
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, height), indexing="ij")
    disc = (yy**2 + xx**2 > 0.5)[None].expand(2, height, height)
    images = torch.rand(2, 3, height, height, generator=torch.Generator().manual_seed(5))
    for known in (disc, ~disc):  # a hole inside; the known disc inside a hole reaching the edges
        _, iterations = solve_interpolation(images, known, tolerance=CG_TOLERANCE, dtype=torch.float64)
        assert iterations <= 10


def test_imputer_noise_is_seeded_only_on_missing_pixels_and_batched_equals_per_image():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    masks = (torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(7)) > 0.5).float()
    imputer = NoisyLinearImputer(noise=0.01)
    torch.manual_seed(0)
    batched = imputer.impute_batch(images, masks)
    torch.manual_seed(0)
    single = torch.stack([imputer(image, mask) for image, mask in zip(images, masks)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)
    quiet = NoisyLinearImputer(noise=0).impute_batch(images, masks)
    noise = (batched - quiet)[masks[:, None].expand_as(images) == 0]
    assert torch.equal(batched[masks[:, None].expand_as(images) == 1], images[masks[:, None].expand_as(images) == 1])
    assert 0.008 < float(noise.std()) < 0.012


def test_imputer_rejects_asymmetric_weights():
    with pytest.raises(ValueError, match="symmetric"):
        NoisyLinearImputer(weighting=[((0, 1), 1.0)])


# ------------------------------------------------------------------------- thresholds
def test_percentile_thresholds_equal_numpy_percentile():
    maps = np.random.default_rng(8).random((4, 13, 11)).astype(np.float32)
    maps[3] = np.round(maps[3] * 4) / 4  # ties
    for percentile in (0, 12.5, 33, 50, 80, 99.9, 100):
        keep = keep_least_relevant(torch.from_numpy(maps), percentile).numpy()
        for m, k in zip(maps, keep):
            np.testing.assert_array_equal(k, m < np.percentile(m, percentile))


def test_auto_percentile_is_opencv_otsu_and_removes_the_most_relevant_pixels():
    generator = np.random.default_rng(9)
    maps = np.clip(generator.normal(0.25, 0.08, (3, 16, 16)), 0, 1).astype(np.float32)
    relevant = generator.random((3, 16, 16)) < 0.3
    maps[relevant] = np.clip(generator.normal(0.8, 0.05, relevant.sum()), 0, 1)
    levels = torch.from_numpy(np.uint8(255 * maps).astype(np.int64))
    for level, threshold in zip(levels.numpy().astype(np.uint8), otsu_thresholds(levels)):
        assert threshold == cv2.threshold(level, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]
    keep = RemoveMostRelevantFirst("auto", zero_imputer).keep_mask(torch.from_numpy(maps))
    np.testing.assert_array_equal(keep.numpy(), ~relevant)
    keep = RemoveLeastRelevantFirst("auto", zero_imputer).keep_mask(torch.from_numpy(maps))
    np.testing.assert_array_equal(keep.numpy(), relevant)
    constant = otsu_thresholds(torch.full((1, 4, 4), 7))
    assert constant.tolist() == [cv2.threshold(np.full((4, 4), 7, np.uint8), 0, 255, cv2.THRESH_OTSU)[0]]


# ---------------------------------------------------------------- batched = per image
def all_metrics():
    imputer = NoisyLinearImputer(noise=0)
    return {
        "cam_mult": CamMultImageConfidenceChange(),
        "drop": DropInConfidence(),
        "increase": IncreaseInConfidence(),
        "morf": ROADMostRelevantFirst(70, imputer=imputer),
        "lerf": ROADLeastRelevantFirst(30, imputer=imputer),
        "morf_auto": ROADMostRelevantFirst("auto", imputer=imputer),
        "morf_avg": ROADMostRelevantFirstAverage((30, 70), imputer=imputer),
        "lerf_avg": ROADLeastRelevantFirstAverage((30, 70), imputer=imputer),
        "combined": ROADCombined((30, 70), imputer=imputer),
    }


@pytest.fixture(scope="module")
def batch(small_cnn):
    generator = torch.Generator().manual_seed(10)
    x = torch.rand(3, 3, 32, 32, generator=generator)
    cams = torch.rand(3, 1, 4, 4, generator=generator)
    cams = torch.nn.functional.interpolate(cams, size=(32, 32), mode="bilinear")[:, 0].numpy()
    targets = [ClassifierOutputSoftmaxTarget(c) for c in (0, 1, 3)]
    return small_cnn, x, cams, targets


def test_every_metric_batched_equals_per_image(batch):
    model, x, cams, targets = batch
    for name, metric in all_metrics().items():
        together = metric(x, cams, targets, model)
        one_by_one = np.concatenate(
            [metric(x[i : i + 1], cams[i : i + 1], targets[i : i + 1], model) for i in range(3)]
        )
        np.testing.assert_allclose(together, one_by_one, atol=1e-5, err_msg=name)
        chunked = metric(x, cams, targets, model, batch_size=2)
        np.testing.assert_allclose(together, chunked, atol=1e-6, err_msg=name)
        assert together.dtype == np.float32 and together.shape == (3,)

    def base_method(input_tensor, targets):
        return input_tensor.mean(1).numpy()

    arcc = ARCC(base_method, (30, 70), imputer=NoisyLinearImputer(noise=0))
    together = arcc(x, cams, targets, model)
    one_by_one = np.concatenate([arcc(x[i : i + 1], cams[i : i + 1], targets[i : i + 1], model) for i in range(3)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_a_per_image_perturbation_callable_still_works(batch):
    model, x, cams, targets = batch
    batched = PerturbationConfidenceMetric(RemoveMostRelevantFirst(60, zero_imputer))(x, cams, targets, model)
    seen = []

    def per_image(img, mask):
        seen.append((img.shape, mask.shape, mask.dtype, img.device.type))
        return img * (mask < torch.quantile(mask.double(), 0.6).float())

    fallback = PerturbationConfidenceMetric(per_image)(x, cams, targets, model)
    np.testing.assert_allclose(batched, fallback, atol=1e-6)
    assert seen == [((3, 32, 32), (32, 32), torch.float32, "cpu")] * 3


def test_all_zero_and_constant_cams_give_finite_road_numbers(batch):
    model, x, _, targets = batch
    for cams in (np.zeros((3, 32, 32), np.float32), np.full((3, 32, 32), 0.5, np.float32)):
        for metric in (ROADCombined((20, 80)), ROADMostRelevantFirstAverage((20, 80)), ROADLeastRelevantFirst(50)):
            assert np.isfinite(metric(x, cams, targets, model)).all()


# -------------------------------------------------------------------------- cam forms
def test_bool_uint8_list_and_torch_cams_are_accepted(batch):
    model, x, cams, targets = batch
    metric = ROADMostRelevantFirst(50, imputer=NoisyLinearImputer(noise=0))
    binary = cams > 0.5
    expected = metric(x, binary.astype(np.float32), targets, model)
    np.testing.assert_allclose(metric(x, binary, targets, model), expected)
    np.testing.assert_allclose(metric(x, list(binary), targets, model), expected)
    np.testing.assert_allclose(metric(x, torch.from_numpy(binary), targets, model), expected)
    as_uint8 = np.uint8(binary) * 255
    np.testing.assert_allclose(metric(x, as_uint8, targets, model), expected)
    change = CamMultImageConfidenceChange()
    quantised = np.uint8(np.round(cams * 255))
    np.testing.assert_allclose(
        change(x, quantised, targets, model), change(x, quantised.astype(np.float32) / 255, targets, model), atol=1e-6
    )
    np.testing.assert_allclose(Complexity()(list(torch.from_numpy(cams))), Complexity()(cams))


def test_mismatched_cams_and_targets_raise_clear_errors(batch):
    model, x, cams, targets = batch
    for metric in all_metrics().values():
        with pytest.raises(ValueError, match="2 cams for a batch of 3"):
            metric(x, cams[:2], targets, model)
        with pytest.raises(ValueError, match=r"cams are \(16, 16\) but the input is \(32, 32\)"):
            metric(x, cams[:, :16, :16], targets, model)
        with pytest.raises(ValueError, match="2 targets for a batch of 3"):
            metric(x, cams, targets[:2], model)
