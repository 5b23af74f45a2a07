"""em-filter: class filters on per-clip noise. What sets it apart from em-noise's class patterns: no waveform is
shared by the clips of a class (what orthogonal projection finds), only the colour is."""
from __future__ import annotations

import torch

from defenses import DEFENSES, build_defense
from lab.config import parse_plugin
from tests.defenses.test_optimised import toy_set

KEY = "em-filter-test-key"


def derive(data, **cfg):
    config = parse_plugin(DEFENSES, {"type": "em-filter", "key": KEY, "max_rounds": 2, "snr_db": 20, **cfg},
                          "defense")
    return build_defense(config).derive_from(data)


def band_power_db(rows: torch.Tensor, bands: int = 32) -> torch.Tensor:
    power = torch.fft.rfft(rows).abs().pow(2)
    width = power.shape[1] // bands
    return power[:, :bands * width].reshape(len(rows), bands, width).mean(-1).log()


def test_clips_of_a_class_share_the_colour_of_their_noise_and_not_its_waveform():
    data = toy_set(n=48, classes=4, random_labels=False)
    prot = derive(data, taps=33)
    x, y, lengths = data.waveforms, data.labels, data.lengths
    noise = prot.apply(x, y, lengths) - x
    rows = torch.nonzero(y == 0).flatten()
    m = int(lengths[rows].min())
    a, b = noise[rows[0], :m], noise[rows[1], :m]
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.1  # independent draws: no shared waveform
    spectra = band_power_db(noise[rows, :m])
    other = band_power_db(noise[torch.nonzero(y == 1).flatten()[:1], :m])
    same = torch.corrcoef(spectra[:2])[0, 1]
    across = torch.corrcoef(torch.cat([spectra[:1], other]))[0, 1]
    assert same > 0.7 and same > across + 0.2, (same, across)  # the class's filter colours every clip alike
    # the same clip gets the same noise, whatever batch it is in; nothing in the padding; the SNR met per clip
    again = prot.apply(x[rows[:3]].flip(0), y[rows[:3]].flip(0), lengths[rows[:3]].flip(0)) - x[rows[:3]].flip(0)
    assert torch.equal(again.flip(0), noise[rows[:3]])
    assert torch.all(noise[torch.arange(x.shape[1])[None] >= lengths[:, None]] == 0)
    snr = 10 * torch.log10(x.double().pow(2).sum(1) / noise.double().pow(2).sum(1))
    assert snr.min() >= 20 - 1e-3


def test_the_optimisation_moves_the_filters_and_the_record_gives_them_back():
    data = toy_set(n=48, classes=4)
    prot = derive(data, taps=17)
    start = derive(data, taps=17, max_rounds=1, steps=1, train_batches=1)
    assert not torch.allclose(prot.filters, start.filters)  # descent steps changed them
    back = type(prot).from_dict(prot.to_dict(), prot.arrays())
    assert torch.equal(back.apply(data.waveforms, data.labels, data.lengths),
                       prot.apply(data.waveforms, data.labels, data.lengths))
    assert KEY not in str(prot.to_dict())


def test_a_clip_gets_its_noise_on_its_real_audio_wherever_the_padding_puts_it():
    from defenses._minmin import clip_noise
    x = torch.randn(2, 400, generator=torch.Generator().manual_seed(3))
    x[0, 300:] = 0
    x[1] = 0
    x[1, 50:350] = x[0, :300]  # the same audio, centred
    noise = clip_noise(x, torch.tensor([300, 300]), "salt")
    assert torch.equal(noise[1, 50:350], noise[0, :300]) and noise[0, :300].abs().sum() > 0
    assert torch.all(noise[0, 300:] == 0) and torch.all(noise[1, :50] == 0) and torch.all(noise[1, 350:] == 0)
