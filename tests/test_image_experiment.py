"""Figure 4 (VQ-VAE on images) end to end at tiny sizes: files, schema, scores."""

import json

import pytest
import torch

from stochastic_vq import image_experiment, reproduce
from stochastic_vq.figures import SETTINGS_KEY
from test_images import cifar_directory

pytest.importorskip("skimage")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["photos", "cifar"])
def test_fig4_tiny_writes_both_panels(tmp_path, source):
    argv = ["fig4", "--tiny", "--out", str(tmp_path / "out")]
    if source == "cifar":
        cifar_directory(tmp_path / "cifar")
        argv += ["--data", str(tmp_path / "cifar"), "--seeds", "1"]
    assert reproduce.main(argv) == 0
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert written == {"SSIM_Fig4-a.json", "PeakSNR_Fig4-b.json", "Fig4.pdf", "Fig4.png"}
    bits = list(image_experiment.PRESETS["tiny"].bits)
    for name, metric in [("SSIM_Fig4-a.json", "SSIM"), ("PeakSNR_Fig4-b.json", "Peak SNR")]:
        panel = json.loads((tmp_path / "out" / name).read_text())
        assert list(panel)[:2] == ["Metric", "VQ Bitrate"] and panel["Metric"] == metric
        assert panel["VQ Bitrate"] == [f"{b} bits" for b in bits]
        for method in ("AVQ", "RVQ", "PVQ"):
            mean = panel[f"Mean ({method})"]
            assert len(mean) == len(bits)
            assert all(lo <= m + 1e-9 <= hi + 2e-9 for lo, m, hi in zip(
                panel[f"Quantile Low ({method})"], mean, panel[f"Quantile High ({method})"]))
            assert all(0 < m < (1 if metric == "SSIM" else 100) for m in mean)
        settings = panel[SETTINGS_KEY]
        assert settings["mode"] == "tiny" and settings["channels"] == 8
        assert settings["data"] == ("CIFAR-10" if source == "cifar" else
                                    "scikit-image photo tiles")


def test_scores_are_scikit_images_metrics_of_the_8_bit_reconstruction():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    model = image_experiment.build_model("pvq", 8, channels=4)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    psnr, ssim = image_experiment.score_images(model, images)
    reconstruction, _ = model(image_experiment.to_unit(images))
    decoded = reconstruction.clamp(0, 1).mul(255).round().to(torch.uint8)
    original, image = images[1].permute(1, 2, 0).numpy(), decoded[1].permute(1, 2, 0).numpy()
    assert psnr[1] == peak_signal_noise_ratio(original, image, data_range=255)
    assert ssim[1] == structural_similarity(original, image, data_range=255, channel_axis=-1)


def test_a_bottleneck_replaces_the_quantizer_in_the_scores():
    from skimage.metrics import peak_signal_noise_ratio

    model = image_experiment.build_model("rvq", 8, channels=4)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    hard, _ = image_experiment.score_images(
        model, images, lambda latents: model.quantizer(latents, train_mode=False)[0])
    assert hard.tolist() == image_experiment.score_images(model, images)[0].tolist()
    unquantized, _ = image_experiment.score_images(model, images, lambda latents: latents)
    with torch.no_grad():
        drawn = model.reconstruct(model.latents(image_experiment.to_unit(images)))
    decoded = drawn.clamp(0, 1).mul(255).round().to(torch.uint8)
    assert unquantized[2] == peak_signal_noise_ratio(
        images[2].permute(1, 2, 0).numpy(), decoded[2].permute(1, 2, 0).numpy(),
        data_range=255)
    assert unquantized.tolist() != hard.tolist()


def test_training_lowers_the_error_and_uses_the_codebooks():
    train, _ = image_experiment.load_images(None)
    test = train[:64]
    preset = image_experiment.ImagePreset(seeds=1, steps=60, batch_size=8, lr=2e-3,
                                          channels=8, replace_every=20, bits=(8,))
    torch.manual_seed(0)
    model = image_experiment.build_model("rvq", 8, preset.channels)
    before, _ = image_experiment.score_images(model, test)
    step_ms = image_experiment.train_vqvae(model, train, preset,
                                           torch.Generator().manual_seed(0))
    after, _ = image_experiment.score_images(model, test)
    assert step_ms > 0 and after.mean() > before.mean() + 1  # dB
    assert image_experiment.used_share(model, test) > 0.25  # more than one entry a codebook


def test_learning_rate_falls_linearly_over_the_decay_share():
    preset = image_experiment.ImagePreset(seeds=1, steps=100, batch_size=2, lr=1.0, channels=4,
                                          replace_every=10, bits=(8,), decay=0.2)
    factors = [image_experiment._lr_schedule(preset, step) for step in range(100)]
    assert factors[:81] == [1.0] * 81 and factors[90] == pytest.approx(0.5)
    assert factors[99] == pytest.approx(0.05) and all(a > b for a, b in zip(factors[80:],
                                                                            factors[81:]))
    constant = image_experiment.ImagePreset(**{**preset.__dict__, "decay": 0.0})
    assert all(image_experiment._lr_schedule(constant, step) == 1.0 for step in range(100))


def test_decoder_finish_trains_only_the_decoder_on_hard_latents():
    """In the finishing steps the encoder, the codebooks and the usage counters stay as
    they were after the other steps, while the decoder learns."""
    train, _ = image_experiment.load_images(None)
    preset = image_experiment.ImagePreset(seeds=1, steps=10, batch_size=4, lr=1e-2,
                                          channels=8, replace_every=100, bits=(8,),
                                          decoder_finish=0.5)
    first_half = image_experiment.ImagePreset(**{**preset.__dict__, "steps": 5,
                                                 "decoder_finish": 0.0})
    models = []
    for setting in (preset, first_half):
        torch.manual_seed(0)
        models.append(image_experiment.build_model("rvq", 8, setting.channels))
        image_experiment.train_vqvae(models[-1], train, setting,
                                     torch.Generator().manual_seed(0))
    finished, reference = models
    assert torch.equal(finished.quantizer.codebooks, reference.quantizer.codebooks)
    assert torch.equal(finished.quantizer.codebook_usage, reference.quantizer.codebook_usage)
    for a, b in zip(finished.encoder.parameters(), reference.encoder.parameters()):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(finished.decoder.parameters(),
                                                     reference.decoder.parameters()))


def test_no_codeword_is_replaced_while_the_decoder_finishes():
    """Eval-mode calls count no usage, so a replacement then would see every codeword
    unused: the finishing steps replace nothing."""
    train, _ = image_experiment.load_images(None)
    preset = image_experiment.ImagePreset(seeds=1, steps=10, batch_size=4, lr=1e-2,
                                          channels=8, replace_every=1, bits=(8,),
                                          decoder_finish=0.5)
    torch.manual_seed(0)
    model = image_experiment.build_model("rvq", 8, preset.channels)
    calls = []
    replace = model.quantizer.replace_unused_codebooks
    model.quantizer.replace_unused_codebooks = lambda *a, **k: calls.append(1) or replace(*a, **k)
    image_experiment.train_vqvae(model, train, preset, torch.Generator().manual_seed(0))
    assert len(calls) == 5  # steps 1..5; without the finish, steps 1..8


def test_fig4_records_the_estimator_it_trained_with(tmp_path):
    out = tmp_path / "out"
    assert reproduce.main(["fig4", "--tiny", "--seeds", "1", "--bits", "8",
                           "--estimator", "diveq", "--out", str(out)]) == 0
    settings = json.loads((out / "PeakSNR_Fig4-b.json").read_text())["Settings"]
    assert settings["estimator"] == "diveq"


def test_build_model_passes_the_estimator_to_the_quantizer():
    model = image_experiment.build_model("pvq", 8, 8, estimator="diveq")
    assert model.quantizer.estimator == "diveq"
    assert image_experiment.build_model("pvq", 8, 8).quantizer.estimator == "nsvq"
