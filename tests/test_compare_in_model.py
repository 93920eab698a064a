"""benchmarks/compare_in_model.py: its arms, their adapters and tiny runs of every arm."""

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import compare_in_model  # noqa: E402
import scalable_scores  # noqa: E402
from compare_in_model import ARMS, ARMS_BY_NAME, LIBRARIES, MODULES, VQP  # noqa: E402

TINY = ["--bits", "8", "--steps", "2", "--seeds", "1", "--channels", "8", "--batch-size", "2",
        "--test-images", "16"]
PEERS = [arm for arm in ARMS if arm.library != "this"]


def _skip_unless_installed(library: str) -> None:
    pytest.importorskip("skimage")
    if library != "this":
        pytest.importorskip(MODULES[library])


def test_arms_are_named_once_and_cover_every_method_and_estimator():
    assert len({arm.name for arm in ARMS}) == len(ARMS)
    assert {arm.library for arm in ARMS} == set(LIBRARIES)
    ours = [(arm.quantizer, arm.estimator) for arm in ARMS if arm.library == "this"]
    methods = ("avq", "rvq", "pvq")
    assert sorted(ours) == sorted([(m, e) for m in methods for e in ("nsvq", "diveq")]
                                  + [(f"{m} ema", "diveq") for m in methods])
    assert {arm.quantizer for arm in ARMS if arm.continuous} == {"ResidualSFDIVEQ",
                                                                 "ProductSFDIVEQ"}


def test_select_arms_by_library_substring_and_estimator():
    select = compare_in_model.select_arms
    assert select() == list(ARMS)
    assert {arm.library for arm in select(only="nsvq")} == {"nsvq"}
    assert [arm.name for arm in select(patterns=["THIS RVQ", "residualnsvq"])] == [
        "this rvq nsvq", "this rvq diveq", "this rvq ema diveq", "nsvq ResidualNSVQ nsvq"]
    diveq_ours = select(only="this", estimator="diveq")
    assert [arm.quantizer for arm in diveq_ours] == ["avq", "rvq", "pvq", "avq ema", "rvq ema",
                                                     "pvq ema"]
    assert all(arm.estimator == "diveq" for arm in diveq_ours)
    assert len(select(estimator="nsvq")) == len(ARMS) - 6  # restricts this library only


def test_rate_of_continuous_codes_says_so():
    sf = next(arm for arm in ARMS if arm.continuous)
    rvq = next(arm for arm in ARMS if arm.quantizer == "rvq")
    assert sf.rate(16) == "continuous codes, not 16 bits" and rvq.rate(16) == "16 bits"
    row = {"library": sf.library, "quantizer": sf.quantizer, "rate": sf.rate(16), "bits": 16}
    assert compare_in_model.quantizer_label(row) == (
        "ResidualSFDIVEQ (continuous codes, not 16 bits)")


def test_list_prints_every_arm(capsys):
    assert compare_in_model.main(["--list"]) == []
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ARMS)
    assert all(line.split()[0] == arm.library for line, arm in zip(lines, ARMS))


@pytest.mark.parametrize("options, message", [
    (["--decoder-finish", "-0.1"], "--decoder-finish must be in [0, 1)"),
    (["--decoder-finish", "1"], "--decoder-finish must be in [0, 1)"),
    (["--bits", "6"], "--bits must be positive multiples of 4"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--first-seed", "-1"], "--first-seed must be >= 0"),
    (["--jobs", "2", "--threads", "2"], "--threads applies to --jobs 1 only"),
    (["--arms", "no such arm"], "no arm to run"),
    (["--only", "faiss"], "invalid choice"),
    (["--estimator", "ste"], "invalid choice"),
    (["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1]"),
    (["--dropout", "1", "--dropout-min-stages", "5"], "--dropout-min-stages must be in [1, 4]"),
    (["--dropout-min-stages", "2"], "--dropout-min-stages applies to --dropout only"),
    (["--dropout", "1", "--time-bottleneck"], "--dropout does not apply to --time-bottleneck"),
    (["--dropout", "1", "--arms", "VectorQuantize", "ProductNSVQ", "this pvq"],
     "no arm to run"),
])
def test_refuses_bad_options_in_one_line(options, message, capsys):
    with pytest.raises(SystemExit):
        compare_in_model.main(options)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error


def test_a_missing_library_is_named_and_left_out(monkeypatch, capsys):
    monkeypatch.setattr(compare_in_model, "installed", lambda library: library != "nsvq")
    with pytest.raises(SystemExit):
        compare_in_model.main(["--only", "nsvq"])
    err = capsys.readouterr().err
    assert "nsvq is not installed: its arms are left out" in err and "no arm to run" in err


@pytest.mark.parametrize("arm", PEERS, ids=lambda arm: arm.quantizer)
def test_peer_adapter_has_the_quantizer_interface(arm):
    pytest.importorskip(MODULES[arm.library])
    quantizer = arm.build(8, 8).quantizer  # 4 codebooks of 4 entries over D = 64
    assert (quantizer.data_dim, quantizer.num_stages, quantizer.codebook_size,
            quantizer.bits_per_vector) == (64, 4, 4, 8)
    latents = torch.randn(2, 8, 8, 64, requires_grad=True)  # (B, h, w, D)
    quantized, usage = quantizer(latents)
    assert quantized.shape == latents.shape and usage is None
    (quantized.square().sum() + quantizer.loss).backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    quantizer.eval()
    hard, _ = quantizer(latents.detach())
    codes = quantizer.encode(latents.detach())
    assert hard.shape == latents.shape
    assert codes.shape == (2, 8, 8, 4) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 4


@pytest.mark.parametrize("arm", [arm for arm in PEERS if not arm.continuous],
                         ids=lambda arm: arm.quantizer)
def test_peer_rows_score_what_their_codes_decode_to(arm):
    pytest.importorskip(MODULES[arm.library])
    torch.manual_seed(0)
    quantizer = arm.build(8, 8).quantizer
    latents = torch.randn(2, 8, 8, 64)  # (B, h, w, D)
    for _ in range(3):  # move the codebooks off their initialisation
        (quantizer(latents)[0].square().sum() + quantizer.loss).backward()
    quantizer.eval()
    hard, _ = quantizer(latents)
    torch.testing.assert_close(hard, quantizer.decode(quantizer.encode(latents)))
    torch.testing.assert_close(hard, quantizer(latents)[0])  # deterministic
    if arm.library != VQP:  # the authors' own hard quantization agrees
        torch.testing.assert_close(
            hard.reshape(-1, 64), quantizer.layer.inference(latents.reshape(-1, 64))[0])


def test_residual_vq_diveq_eval_output_is_not_its_codes():
    """Why the adapters decode codes: vector-quantize-pytorch's ResidualVQ(diveq=True)
    returns a noisy point at the error's distance in eval mode, not what its codes give."""
    pytest.importorskip(MODULES[VQP])
    from vector_quantize_pytorch import ResidualVQ

    torch.manual_seed(0)
    layer = ResidualVQ(dim=64, num_quantizers=4, codebook_size=4, diveq=True).eval()
    latents = torch.randn(2, 16, 64)  # (B, n, D)
    with torch.no_grad():
        output, codes, _ = layer(latents)
        again, _, _ = layer(latents)
        decoded = layer.get_output_from_indices(codes)
    assert not torch.allclose(output, decoded, atol=1e-3)
    assert not torch.allclose(output, again, atol=1e-3)


def test_sf_diveq_hard_output_is_not_a_sum_of_codewords():
    pytest.importorskip("diveq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the package warns of short schedules
        quantizer = compare_in_model.AuthorsLayer("diveq", "ResidualSFDIVEQ", 8, skip_iters=4,
                                                  avg_iters=2, replacement_iters=2)
    latents = torch.randn(64, 64)  # (N, D)
    for _ in range(5):  # past skip_iters: the codebooks are set and SF-DiVeQ trains
        quantizer(latents)
    quantizer.eval()
    hard, _ = quantizer(latents)
    codes = quantizer.encode(latents)  # (N, M), the nearest codeword of each stage
    codebooks = quantizer.layer.codebook.detach()  # (M, K, D)
    sums = sum(codebooks[stage, codes[:, stage]] for stage in range(4))  # (N, D)
    assert not torch.allclose(hard, sums, atol=1e-4)  # a point between codewords


@pytest.mark.slow
@pytest.mark.parametrize("library", LIBRARIES)
def test_every_arm_of_a_library_runs(library, tmp_path):
    _skip_unless_installed(library)
    table = compare_in_model.main(TINY + ["--only", library, "--json",
                                          str(tmp_path / "rows.json")])
    arms = [arm for arm in ARMS if arm.library == library]
    assert [(row["quantizer"], row["estimator"]) for row in table] == [
        (arm.quantizer, arm.estimator) for arm in arms]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {"library", "quantizer", "estimator", "rate", "bits", "psnr", "ssim", "usage",
            "step_ms"} <= set(rows[0])
    assert all(row["library"] == library and row["bits"] == 8 and 0 < row["usage"] <= 1
               and row["step_ms"] > 0 and 0 < row["psnr"] < 100 for row in rows)
    assert [row["rate"] for row in rows] == [arm.rate(8) for arm in arms]


@pytest.mark.slow
def test_jobs_do_not_change_the_rows():
    _skip_unless_installed("this")
    options = TINY + ["--seeds", "2", "--arms", "this rvq", "heads kmeans", "ProductDIVEQ",
                      "ResidualNSVQ"]

    def without_times(rows):
        return [{key: without_times(value) if key == "runs" else value
                 for key, value in row.items() if not key.startswith("step_ms")}
                for row in rows]

    one, two = compare_in_model.main(options), compare_in_model.main(options + ["--jobs", "2"])
    assert len(one) >= 2
    assert without_times(one) == without_times(two)


@pytest.mark.slow
def test_diagnosis_scores_the_training_mode_output_of_ours_only(capsys):
    _skip_unless_installed("this")
    table = compare_in_model.main(TINY + ["--seeds", "2", "--arms", "this rvq nsvq",
                                          "ResidualNSVQ", "--diagnose"])
    assert "train dB" in capsys.readouterr().out.splitlines()[1]
    for row in table:
        assert 0 < row["psnr_unquantized"] < 100
        if row["library"] == "this":
            assert 0 < row["psnr_train_mode"] < 100 and row["psnr_train_mode"] != row["psnr"]
            assert row["psnr_train_mode"] == pytest.approx(
                sum(r["psnr_train_mode"] for r in row["runs"]) / 2)
        else:
            assert "psnr_train_mode" not in row


def test_diagnosis_leaves_the_trained_model_as_it_was():
    _skip_unless_installed("this")
    model = ARMS_BY_NAME["this pvq ema diveq"].build(8, 8)  # moving-average codebooks
    codebooks = model.quantizer.codebooks.detach().clone()
    usage = model.quantizer.codebook_usage.clone()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    found = compare_in_model.diagnosis(model, images, train_mode=True)
    assert set(found) == {"psnr_unquantized", "psnr_train_mode"}
    assert torch.equal(model.quantizer.codebooks, codebooks)
    assert torch.equal(model.quantizer.codebook_usage, usage)


def test_first_seed_continues_the_seeds_of_an_earlier_row():
    _skip_unless_installed("this")
    arm = ["--arms", "this rvq nsvq"]
    both = compare_in_model.main(TINY[:4] + ["--seeds", "2"] + TINY[6:] + arm)[0]
    second = compare_in_model.main(TINY + arm + ["--first-seed", "1"])[0]
    assert both["seeds"] == [0, 1] and second["seeds"] == [1]
    assert second["psnr"] == both["runs"][1]["psnr"]


@pytest.mark.parametrize("option, decays", [([], [None, 0.8, 0.9]),
                                            (["--ema-decay", "0.5"], [None, 0.5, 0.5])])
def test_ema_arms_take_their_decay_or_the_options(option, decays, monkeypatch):
    _skip_unless_installed("this")
    built = []  # the decay of each model trained, None without moving averages
    train = compare_in_model.image_experiment.train_vqvae

    def recording_train(model, *args):
        quantizer = model.quantizer
        built.append(quantizer.ema_decay if quantizer.codebook_update == "ema" else None)
        return train(model, *args)

    monkeypatch.setattr(compare_in_model.image_experiment, "train_vqvae", recording_train)
    table = compare_in_model.main(TINY + option + ["--arms", "this rvq diveq", "rvq ema",
                                                   "pvq ema"])
    assert [row["quantizer"] for row in table] == ["rvq", "rvq ema", "pvq ema"]
    assert built == decays


def test_time_bottleneck_prints_a_row_per_arm_and_trains_nothing(capsys):
    _skip_unless_installed("this")
    assert compare_in_model.main(["--bits", "8", "--batch-size", "2", "--arms", "this rvq",
                                  "--time-bottleneck"]) == []
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[:3] for row in rows] == [["8", "this", "rvq"]] * 3
    assert all(float(row[-2]) > 0 and row[-1] == "ms" for row in rows)  # no peer: no ratio


# The scalable mode (--dropout): one model scored from its first n codebooks.

RESIDUAL_VQ = f"{VQP} ResidualVQ rotation trick"


def _trained(arm_name: str = RESIDUAL_VQ):
    """The quantizer of an arm (4 codebooks of 4 entries) built with quantizer dropout,
    moved off its initialisation by three training calls, in eval mode; with latents
    (2, 8, 8, 64)."""
    arm = ARMS_BY_NAME[arm_name]
    quantizer = arm.build(8, 8, **arm.dropout(1.0, 1)).quantizer
    latents = torch.randn(2, 8, 8, 64, requires_grad=True)  # (B, h, w, D)
    for _ in range(3):
        (quantizer(latents)[0].square().sum() + getattr(quantizer, "loss", 0.0)).backward()
    return quantizer.eval(), latents.detach()


def test_scalable_arms_are_ours_but_pvq_and_residual_vq():
    scalable = {arm.name for arm in ARMS if arm.dropout is not None}
    assert scalable == {arm.name for arm in ARMS
                        if (arm.library == "this" and "pvq" not in arm.quantizer)
                        or arm.quantizer.startswith("ResidualVQ")}
    ours = ARMS_BY_NAME["this rvq ema diveq"].dropout(0.5, 2)
    assert ours == {"quantizer_dropout": 0.5, "dropout_min_stages": 2}
    peer = ARMS_BY_NAME[RESIDUAL_VQ].dropout(0.5, 2)
    assert peer == {"quantize_dropout": True, "quantize_dropout_cutoff_index": 1}
    quantizer = ARMS_BY_NAME["this avq nsvq"].build(8, 8, **ours).quantizer
    assert (quantizer.quantizer_dropout, quantizer.dropout_min_stages) == (0.5, 2)


def test_residual_vq_dropout_options_reach_the_layer():
    pytest.importorskip(MODULES[VQP])
    arm = ARMS_BY_NAME[f"{VQP} ResidualVQ kmeans+expiry rotation trick"]
    layer = arm.build(8, 8, **arm.dropout(1.0, 3)).quantizer.layer
    assert layer.quantize_dropout and layer.quantize_dropout_cutoff_index == 2
    assert layer.layers[0]._codebook.threshold_ema_dead_code == 2  # the arm's own options


def test_residual_vq_draws_its_dropout_per_batch():
    """What the docs say of vector-quantize-pytorch's quantize_dropout: in training, one n
    for the whole batch (the codes past it are -1), a new n at each call."""
    pytest.importorskip(MODULES[VQP])
    from vector_quantize_pytorch import ResidualVQ

    layer = ResidualVQ(dim=64, num_quantizers=4, codebook_size=4, quantize_dropout=True)
    kept = set()
    for _ in range(20):
        _, codes, _ = layer(torch.randn(8, 16, 64))  # codes (B, n, M)
        used = (codes != -1).sum(-1)  # (B, n): codebooks each vector used
        assert (used == used[0, 0]).all()  # the same for every example of the batch
        assert (codes[..., :used[0, 0]] >= 0).all()  # the first ones
        kept.add(int(used[0, 0]))
    assert kept == {1, 2, 3, 4}


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_peer_first_n_rows_decode_the_first_n_codes(num_stages):
    pytest.importorskip(MODULES[VQP])
    quantizer, latents = _trained()
    codes = quantizer.encode(latents)  # (B, h, w, M)
    first = quantizer.encode(latents, num_stages=num_stages)
    assert torch.equal(first, codes[..., :num_stages])
    codebooks = quantizer.layer.codebooks  # (M, K, D)
    expected = sum(codebooks[stage][codes[..., stage]] for stage in range(num_stages))
    found = scalable_scores.first_stages(quantizer, num_stages, latents)  # (B, h, w, D)
    torch.testing.assert_close(found, expected)
    if num_stages == 4:  # all codebooks: the row of the fixed-rate scoring
        torch.testing.assert_close(found, quantizer(latents)[0])


@pytest.mark.parametrize("arm_name", ["this rvq ema diveq", RESIDUAL_VQ])
def test_stage_scores_come_from_encode_with_num_stages(arm_name, monkeypatch):
    """score_stages asks the quantizer for n-codebook codes, n = 1 ... M in turn, and scores
    what they decode to (this library's AVQ: a search over the first n codebooks, not the
    full codes cut short; for residual quantizers both are the same)."""
    _skip_unless_installed(ARMS_BY_NAME[arm_name].library)
    quantizer, _ = _trained(arm_name)
    model = compare_in_model.VQVAE(quantizer, 8)
    asked = []
    encode = quantizer.encode

    def recording_encode(latents, *, num_stages=None):
        asked.append(num_stages)
        return encode(latents, num_stages=num_stages)

    monkeypatch.setattr(quantizer, "encode", recording_encode)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    found = scalable_scores.score_stages(model, images)
    assert asked == [1, 2, 3, 4]
    for num_stages, psnr in enumerate(found["psnr_stages"], 1):
        reference = compare_in_model.image_experiment.score_images(
            model, images, lambda latents, n=num_stages: quantizer.decode(encode(latents)[..., :n]))
        assert psnr == pytest.approx(float(reference[0].mean()))
    assert len(set(found["psnr_stages"])) == 4  # every n decodes differently


def test_summarise_stages_gives_means_and_ranges_per_n():
    runs = [{"psnr_stages": [20.0, 24.0], "ssim_stages": [0.5, 0.7]},
            {"psnr_stages": [22.0, 23.0], "ssim_stages": [0.6, 0.7]}]
    row = scalable_scores.summarise_stages(runs)
    assert row["psnr_stages"] == [21.0, 23.5]
    assert row["psnr_stages_range"] == [[20.0, 22.0], [23.0, 24.0]]
    assert row["ssim_stages"] == pytest.approx([0.55, 0.7])
    assert row["ssim_stages_range"] == [[0.5, 0.6], [0.7, 0.7]]


def test_dropout_mode_builds_every_arm_with_its_dropout(monkeypatch):
    _skip_unless_installed(VQP)
    built = []  # (share or True, fewest codebooks) of each model trained
    train = compare_in_model.image_experiment.train_vqvae

    def recording_train(model, *args):
        quantizer = model.quantizer
        if hasattr(quantizer, "layer"):  # vector-quantize-pytorch's ResidualVQ
            built.append((quantizer.layer.quantize_dropout,
                          quantizer.layer.quantize_dropout_cutoff_index + 1))
        else:
            built.append((quantizer.quantizer_dropout, quantizer.dropout_min_stages))
        return train(model, *args)

    monkeypatch.setattr(compare_in_model.image_experiment, "train_vqvae", recording_train)
    compare_in_model.main(TINY + ["--dropout", "0.5", "--dropout-min-stages", "2",
                                  "--arms", "this rvq nsvq", "ResidualVQ rotation"])
    assert built == [(0.5, 2), (True, 2)]


def test_dropout_share_0_trains_and_scores_the_fixed_rate_model():
    _skip_unless_installed("this")
    arm = ["--arms", "this rvq ema"]
    fixed = compare_in_model.main(TINY + arm)[0]
    scalable = compare_in_model.main(TINY + arm + ["--dropout", "0"])[0]
    assert scalable["psnr_stages"][-1] == scalable["psnr"] == fixed["psnr"]
    assert scalable["usage"] == fixed["usage"]


@pytest.mark.slow
def test_dropout_mode_scores_every_n_and_its_last_is_the_fixed_rate_score(capsys):
    _skip_unless_installed(VQP)
    table = compare_in_model.main(TINY + ["--seeds", "2", "--dropout", "0.5",
                                          "--arms", "this rvq ema", "ResidualVQ rotation"])
    assert [row["library"] for row in table] == ["this", VQP]
    assert table[0]["dropout"] == {"quantizer_dropout": 0.5, "dropout_min_stages": 1}
    assert table[1]["dropout"] == {"quantize_dropout": True,
                                   "quantize_dropout_cutoff_index": 0}
    for row in table:
        assert len(row["psnr_stages"]) == len(row["ssim_stages_range"]) == 4
        assert row["psnr_stages"][-1] == pytest.approx(row["psnr"])  # n = M: all codes
        for run in row["runs"]:
            assert run["psnr_stages"][-1] == pytest.approx(run["psnr"])
    lines = capsys.readouterr().out.splitlines()
    assert "n = 4" in lines[1]
    assert lines[2].split()[:3] == ["2", "this", "RVQ"]  # 2 bits per codebook
