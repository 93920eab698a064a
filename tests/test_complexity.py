import math

import pytest

from complexity import (
    AVQ_Complexity,
    Ops,
    PVQ_Complexity,
    RVQ_Complexity,
    argmin,
    distance,
    mse,
    sort_select,
)

# Published log10(WMOPS) values (Vali & Bäckström, ICASSP 2023), quoted as known answers.
# (total bits, value); M = 4 stages, b = bits / 4, K = 2**b.
FIG4C_D64 = {  # AVQ beam width 16
    "AVQ": [(16, -0.17530026099104476), (28, 0.5004398483193758), (40, 1.364481239994905)],
    "RVQ": [(12, -2.2892059000696725), (24, -1.425251291649823), (40, -0.22665099427212598)],
    "PVQ": [(12, -2.8709549401120418), (32, -1.422485222226635), (40, -0.8218925114194595)],
}
FIG6B_D128 = {  # AVQ beam width min(K, 64)
    "AVQ": [
        (12, -0.4864920792092946),
        (24, 1.3518490449730725),
        (28, 1.5461956074510657),
        (40, 2.328012459262243),
    ],
    "RVQ": [(20, -1.4204679098421358), (36, -0.22740107887469635)],
    "PVQ": [(16, -2.300856312605516), (40, -0.5253030718831712)],
}
FIG4C_AVQ_12_BITS = -0.31026327412521015  # not reachable with a valid beam width (bw <= K = 8)


def model(method: str, dim: int, bits: int, max_beam: int, **kwargs):
    k = 2 ** (bits // 4)
    if method == "AVQ":
        return AVQ_Complexity(dim, k, 4, min(k, max_beam), **kwargs)
    return {"RVQ": RVQ_Complexity, "PVQ": PVQ_Complexity}[method](dim, k, 4, **kwargs)


CASES = [(m, 64, bits, 16, value) for m, pts in FIG4C_D64.items() for bits, value in pts]
CASES += [(m, 128, bits, 64, value) for m, pts in FIG6B_D128.items() for bits, value in pts]


@pytest.mark.parametrize("method, dim, bits, max_beam, published", CASES)
def test_reproduces_published_figures(method, dim, bits, max_beam, published):
    wmops = model(method, dim, bits, max_beam).complexity_calculator()
    assert math.log10(wmops) == pytest.approx(published, abs=1e-9)


def test_fig4c_avq_12_bits_needs_an_invalid_beam_width():
    for beam_width in range(1, 9):
        wmops = AVQ_Complexity(64, 8, 4, beam_width).complexity_calculator()
        assert abs(math.log10(wmops) - FIG4C_AVQ_12_BITS) > 1e-3


def test_building_blocks():
    assert distance(3, 4) == Ops(additions=21, multiplications=12)
    assert argmin(5) == Ops(additions=4, moves=4)
    assert sort_select(2, 4) == argmin(4) + argmin(3) == Ops(additions=5, moves=5)
    assert sort_select(1, 7) == argmin(7)
    assert mse(4, 3) == Ops(additions=20, multiplications=16)
    assert 3 * Ops(1, 2, 3, 4) == Ops(3, 6, 9, 12)
    assert Ops(1, 1, 1, 1).weighted((1, 1, 1, 4)) == 7


def test_rvq_by_hand():
    # D=2, K=4, M=2: one loop (the last, so no residual update), then (M-1)*D additions.
    counts = RVQ_Complexity(2, 4, 2).operation_counts()
    assert counts == {
        "additions": 12 + 3 + 2,
        "multiplications": 8,
        "moves": 3 + 2,
        "branches": 0,
        "weighted_total": 30,
    }
    assert RVQ_Complexity(2, 4, 2).complexity_calculator() == 30e-6


@pytest.mark.parametrize("dim, k, m", [(64, 16, 4), (128, 256, 4), (12, 8, 3), (8, 2, 1)])
def test_rvq_and_pvq_closed_forms(dim, k, m):
    for all_stages in (False, True):
        loops = m if all_stages else m - 1
        nearest = k * (2 * dim - 1) + k * dim + 2 * (k - 1) + dim
        rvq = loops * nearest + max(loops - 1, 0) * dim + (m - 1) * dim
        sub = dim // m
        pvq = 2 * dim + loops * (k * (2 * sub - 1) + k * sub + 2 * (k - 1) + sub)
        kwargs = {"count_all_stages": all_stages}
        assert RVQ_Complexity(dim, k, m, **kwargs).operation_counts()["weighted_total"] == rvq
        assert PVQ_Complexity(dim, k, m, **kwargs).operation_counts()["weighted_total"] == pvq


def all_models(**kwargs):
    return [
        AVQ_Complexity(128, 32, 4, 8, **kwargs),
        RVQ_Complexity(128, 32, 4, **kwargs),
        PVQ_Complexity(128, 32, 4, **kwargs),
    ]


@pytest.mark.parametrize("vq", all_models() + all_models(single_precision=False))
def test_idempotent_and_breakdown_sums_to_total(vq):
    first = vq.complexity_calculator()
    assert vq.complexity_calculator() == first
    counts = vq.operation_counts()
    assert vq.operation_counts() == counts
    a, m, mv, br = (counts[key] for key in ("additions", "multiplications", "moves", "branches"))
    assert counts["weighted_total"] == sum(w * c for w, c in zip(vq.weights, (a, m, mv, br)))
    assert first == counts["weighted_total"] / 1e6


def test_avq_counts_branches():
    assert AVQ_Complexity(128, 32, 4, 8).operation_counts()["branches"] == 3 + 5 + 3


@pytest.mark.parametrize("cls", [RVQ_Complexity, PVQ_Complexity])
def test_all_stages_counts_more(cls):
    paper = cls(128, 32, 4).complexity_calculator()
    corrected = cls(128, 32, 4, count_all_stages=True).complexity_calculator()
    assert corrected > paper


@pytest.mark.parametrize("cls", [RVQ_Complexity, PVQ_Complexity])
def test_all_stages_is_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(128, 32, 4, True, True)


@pytest.mark.parametrize("single, double", zip(all_models(), all_models(single_precision=False)))
def test_double_precision_costs_more(single, double):
    assert double.complexity_calculator() > single.complexity_calculator()


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: AVQ_Complexity(128, 8, 4, 16), "beam_width"),
        (lambda: AVQ_Complexity(128, 8, 4, 0), "beam_width"),
        (lambda: AVQ_Complexity(128, 8, 4, 2.0), "beam_width"),
        (lambda: AVQ_Complexity(0, 8, 4, 4), "input_dim"),
        (lambda: RVQ_Complexity(128, -8, 4), "num_codebooks"),
        (lambda: RVQ_Complexity(128, 8.0, 4), "num_codebooks"),
        (lambda: RVQ_Complexity(True, 8, 4), "input_dim"),
        (lambda: PVQ_Complexity(128, 8, True), "num_stages"),
        (lambda: PVQ_Complexity(128, 8, "4"), "num_stages"),
        (lambda: PVQ_Complexity(130, 8, 4), "input_dim"),
    ],
)
def test_invalid_arguments_name_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()
