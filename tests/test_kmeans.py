"""k-means and nearest-row search (stochastic_vq_core.kmeans), checked against references
written out here (NumPy Lloyd, brute-force distances) and against scikit-learn.

kmeans starts from k points picked with ``torch.randperm(n, generator)[:k]`` (or
``torch.randint(n, (k,), generator)`` when n < k); the references reproduce that pick
from a generator seeded alike, so both runs start from the very same centroids.
"""

import numpy as np
import pytest
import torch

from product_vq import PVQ
from stochastic_vq_core import kmeans as kmeans_module
from stochastic_vq_core.kmeans import (
    ARGMIN_BLOCKS,
    first_argmin,
    kmeans,
    nearest_rows,
    search_layout,
)

ITERATIONS = [1, 3, 10]
SEED = 1234


def generator(seed=SEED):
    return torch.Generator().manual_seed(seed)


def initial_pick(n, k, seed=SEED):
    """The indices kmeans starts from with ``generator(seed)``, reproduced independently."""
    if n >= k:
        return torch.randperm(n, generator=generator(seed))[:k].numpy()
    return torch.randint(n, (k,), generator=generator(seed)).numpy()


def lloyd_reference(points, initial, iterations):
    """Lloyd's algorithm in float64 NumPy, by explicit squared distances.

    Returns (centroids (k, d), number of empty clusters met over all iterations). The
    first nearest centroid wins a tie; an empty cluster keeps its centroid.
    """
    points = np.asarray(points, dtype=np.float64)
    centroids = np.array(initial, dtype=np.float64)
    empties = 0
    for _ in range(iterations):
        squared = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)  # (N, k)
        nearest = squared.argmin(axis=1)
        updated = centroids.copy()
        for j in range(len(centroids)):
            members = points[nearest == j]
            if len(members):
                updated[j] = members.mean(axis=0)
            else:
                empties += 1
        centroids = updated
    return centroids, empties


def clustered(n_per_cluster=40, clusters=5, d=3, spread=0.3, seed=0):
    """(N, d) float32: Gaussian blobs around well separated centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(clusters, d))
    points = centres[:, None, :] + spread * rng.normal(size=(clusters, n_per_cluster, d))
    points = points.reshape(-1, d)
    return torch.from_numpy(points[rng.permutation(len(points))]).float()


def with_empty_cluster(k=6, seed=SEED):
    """(N, d) float32 data on which kmeans from ``generator(seed)`` meets an empty cluster.

    Two of the k initial picks are made the same point, so the second of the two equal
    centroids never wins a point (the first wins the tie); one more pick is a far outlier.
    """
    points = clustered(n_per_cluster=20, clusters=4, d=2, seed=1)
    pick = initial_pick(len(points), k, seed)
    points[pick[1]] = points[pick[0]]
    points[pick[2]] = torch.tensor([50.0, -50.0])
    return points


def library_kmeans(points, k, iterations, seed=SEED):
    return kmeans(points, k, iterations, generator=generator(seed))


# --- against the NumPy reference --------------------------------------------------------


@pytest.mark.parametrize("iterations", ITERATIONS)
def test_matches_numpy_lloyd_on_clustered_data(iterations):
    points, k = clustered(), 7
    initial = points.numpy()[initial_pick(len(points), k)]
    expected, _ = lloyd_reference(points.numpy(), initial, iterations)
    result = library_kmeans(points, k, iterations)
    assert result.shape == (k, 3) and result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("iterations", ITERATIONS)
def test_matches_numpy_lloyd_with_an_empty_cluster(iterations):
    points, k = with_empty_cluster(), 6
    initial = points.numpy()[initial_pick(len(points), k)]
    expected, empties = lloyd_reference(points.numpy(), initial, iterations)
    assert empties >= 1  # the duplicated centroid wins no point in the first iteration
    result = library_kmeans(points, k, iterations)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)
    if iterations == 1:  # the empty cluster kept its centroid: the duplicated point
        np.testing.assert_array_equal(result[1].numpy(), initial[1])
    np.testing.assert_array_equal(result[2].numpy(), [50.0, -50.0])  # the outlier, alone


def test_zero_iterations_returns_the_picked_points():
    points = clustered()
    result = library_kmeans(points, 9, 0)
    np.testing.assert_array_equal(result.numpy(), points.numpy()[initial_pick(len(points), 9)])


def test_result_does_not_alias_the_points():
    points = clustered()
    before = points.clone()
    result = library_kmeans(points, 5, 0)
    result += 1.0
    assert torch.equal(points, before)


def test_same_generator_seed_gives_the_same_centroids():
    points = clustered()
    assert torch.equal(library_kmeans(points, 5, 3, seed=7), library_kmeans(points, 5, 3, seed=7))


# --- against scikit-learn ----------------------------------------------------------------


@pytest.mark.parametrize("iterations", ITERATIONS)
def test_matches_sklearn_lloyd(iterations):
    cluster = pytest.importorskip("sklearn.cluster")
    points, k = clustered(), 7
    initial = points.numpy()[initial_pick(len(points), k)].astype(np.float64)
    _, empties = lloyd_reference(points.numpy(), initial, iterations)
    assert empties == 0  # sklearn relocates empty clusters: compare only where none empties
    fitted = cluster.KMeans(n_clusters=k, init=initial, n_init=1, max_iter=iterations,
                            algorithm="lloyd", tol=0).fit(points.numpy().astype(np.float64))
    result = library_kmeans(points, k, iterations)
    np.testing.assert_allclose(result.numpy(), fitted.cluster_centers_, rtol=1e-5, atol=1e-5)


# --- nearest_rows ------------------------------------------------------------------------


def brute_force_nearest(points, table):
    distances = torch.cdist(points, table, compute_mode="donot_use_mm_for_euclid_dist")
    return distances.argmin(dim=1)


@pytest.mark.parametrize("n", [1, 17, 200])
def test_nearest_rows_is_the_argmin_of_cdist(n):
    g = generator(n)
    points = torch.randn(n, 5, generator=g, dtype=torch.float64)
    table = torch.randn(11, 5, generator=g, dtype=torch.float64)
    nearest = nearest_rows(points, table)
    assert nearest.shape == (n,) and nearest.dtype == torch.int64
    assert torch.equal(nearest, brute_force_nearest(points, table))


def test_nearest_rows_in_many_chunks(monkeypatch):
    g = generator(3)
    points = torch.randn(100, 4, generator=g, dtype=torch.float64)
    table = torch.randn(8, 4, generator=g, dtype=torch.float64)
    expected = brute_force_nearest(points, table)
    monkeypatch.setattr(kmeans_module, "CHUNK_ELEMENTS", 3 * len(table))  # 3 rows a chunk
    calls = []
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **kw: calls.append(len(a[1])) or addmm(*a, **kw))
    nearest = nearest_rows(points, table)
    assert calls == [3] * 33 + [1]  # the chunking did happen
    assert torch.equal(nearest, expected)


def test_nearest_rows_with_a_chunk_smaller_than_the_table(monkeypatch):
    monkeypatch.setattr(kmeans_module, "CHUNK_ELEMENTS", 1)  # still one row a chunk
    g = generator(4)
    points = torch.randn(9, 3, generator=g, dtype=torch.float64)
    table = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert torch.equal(nearest_rows(points, table), brute_force_nearest(points, table))


@pytest.mark.parametrize("chunk", [None, 2])
def test_nearest_rows_of_zero_points(chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(kmeans_module, "CHUNK_ELEMENTS", chunk)
    nearest = nearest_rows(torch.zeros(0, 3), torch.randn(4, 3))
    assert nearest.shape == (0,) and nearest.dtype == torch.int64


def test_nearest_rows_tie_goes_to_the_first_row():
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    points = torch.tensor([[2.0, 0.0], [0.5, 0.5]])
    assert nearest_rows(points, table).tolist() == [0, 0]


# --- fewer points than k -------------------------------------------------------------------


@pytest.mark.parametrize("iterations", [0, 3])
def test_fewer_points_than_k_draws_centroids_from_the_points(iterations):
    points = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-3.0, 0.5]])
    k = 8
    result = library_kmeans(points, k, iterations)
    assert result.shape == (k, 2)
    # each centroid is one of the points (a cluster of one point is that point)
    matches = (result[:, None, :] == points[None, :, :]).all(dim=2)  # (k, n)
    assert matches.any(dim=1).all()
    if iterations == 0:  # and exactly the ones torch.randint picks
        np.testing.assert_array_equal(result.numpy(),
                                      points.numpy()[initial_pick(len(points), k)])


def test_fewer_points_than_k_matches_numpy_lloyd():
    points = clustered(n_per_cluster=2, clusters=3, d=2)  # 6 points, 8 centroids
    k = 8
    initial = points.numpy()[initial_pick(len(points), k)]
    expected, _ = lloyd_reference(points.numpy(), initial, 3)
    np.testing.assert_allclose(library_kmeans(points, k, 3).numpy(), expected,
                               rtol=1e-5, atol=1e-5)


# --- PVQ's data initialisation ------------------------------------------------------------


@pytest.mark.parametrize("iterations", [0, 1, 10])
def test_pvq_codebooks_are_numpy_lloyd_of_each_slice(iterations):
    stages, bits, d = 3, 3, 6
    k, sub = 2**bits, d // stages
    samples = clustered(n_per_cluster=30, clusters=10, d=d, spread=0.5, seed=2)
    vq = PVQ(stages, bits, d)
    vq.initialize_from_data(samples, kmeans_iterations=iterations, generator=generator())
    # the same generator, drawn from codebook after codebook as the library does
    g = generator()
    for stage in range(stages):
        part = samples[:, stage * sub:(stage + 1) * sub].numpy()
        pick = torch.randperm(len(part), generator=g)[:k].numpy()
        expected, _ = lloyd_reference(part, part[pick], iterations)
        np.testing.assert_allclose(vq.codebooks.detach()[stage].numpy(), expected,
                                   rtol=1e-5, atol=1e-5)
    assert int(vq.codebook_usage.sum()) == 0


def test_pvq_codebooks_after_zero_iterations_are_rows_of_their_slice():
    stages, bits, d = 4, 2, 8
    samples = torch.randn(50, d)
    vq = PVQ(stages, bits, d)
    vq.initialize_from_data(samples, kmeans_iterations=0, generator=generator())
    for stage in range(stages):
        part = samples[:, 2 * stage:2 * stage + 2]
        rows = vq.codebooks.detach()[stage]
        assert (rows[:, None, :] == part[None, :, :]).all(dim=2).any(dim=1).all()


# --- first_argmin over a table in search_layout ---------------------------------------------


@pytest.mark.parametrize("size", [1, 16, 96, 128, 256, 1024])
@pytest.mark.parametrize("lead", [(), (7,), (3, 5)])
def test_first_argmin_is_the_argmin_in_the_tables_own_order(size, lead):
    g = generator(size)
    distances = torch.randn(*lead, size, generator=g)
    laid_out = search_layout(distances, -1)  # what a product with a laid-out table gives
    assert torch.equal(first_argmin(laid_out), distances.argmin(dim=-1))


@pytest.mark.parametrize("size", [16, 256])
def test_first_argmin_takes_the_first_of_equal_minima_and_the_first_nan(size):
    distances = torch.rand(6, size, generator=generator(1))
    late, early = size - 1, size // 2 - 3  # in different blocks when K is split
    distances[0, [early, late]] = -1.0  # a tie: the first entry
    distances[1, [late, early + 1, early]] = -1.0
    distances[2] = 0.5  # all equal: entry 0
    distances[3, [late, early]] = float("nan")  # the first NaN, as argmin
    distances[4, late] = float("nan")
    distances[4, 0] = -5.0
    expected = distances.argmin(dim=-1)
    assert expected[:4].tolist() == [early, early, 0, early]
    assert torch.equal(first_argmin(search_layout(distances, -1)), expected)


def test_search_layout_moves_entries_along_the_given_dimension():
    table = torch.arange(256).reshape(1, 256, 1).expand(2, 256, 3)  # entry k holds k
    laid_out = search_layout(table, 1)
    assert laid_out.shape == table.shape
    members = 256 // ARGMIN_BLOCKS
    position = 5 * ARGMIN_BLOCKS + 2  # member j = 5 of block b = 2
    assert torch.equal(laid_out[:, position], table[:, 2 * members + 5])
    assert torch.equal(search_layout(table[:, :16], 1), table[:, :16])  # small K: unchanged


def test_nearest_rows_with_a_blocked_table():
    g = generator(5)
    points = torch.randn(300, 6, generator=g, dtype=torch.float64)
    table = torch.randn(256, 6, generator=g, dtype=torch.float64)
    assert torch.equal(nearest_rows(points, table), brute_force_nearest(points, table))
