"""Parity of our Kaldi fbank with torchaudio's (reference values in tests/data/reference/),
and the resampler and front-end built on it."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import AUDIO, DATA
from modalmae.tokenizers.fbank import EPSILON, AudioFrontend, kaldi_fbank, resample

STEMS = ["arctic_a0007", "sense_and_sensibility_01_austen_64kb-0870"]


def speech(stem):
    wave, sr = sf.read(AUDIO / f"{stem}.wav", dtype="float32", always_2d=True)
    return torch.from_numpy(wave[:, 0].copy()), sr


@pytest.mark.parametrize("stem", STEMS)
def test_matches_torchaudio_kaldi_fbank_on_real_speech(stem):
    wave, sr = speech(stem)
    ours = kaldi_fbank(wave - wave.mean(), sample_rate=sr).numpy()
    ref = np.load(DATA / "reference" / f"fbank_{stem}.npy")
    assert ours.shape == ref.shape
    diff = np.abs(ours - ref).max()
    assert diff < 1e-2, f"max abs difference {diff:.2e}"


def test_batched_equals_single():
    wave, sr = speech(STEMS[0])
    a, b = wave[:32000], wave[16000:48000]
    batched = kaldi_fbank(torch.stack([a, b]), sample_rate=sr)
    assert torch.allclose(batched[0], kaldi_fbank(a, sample_rate=sr), atol=1e-5)
    assert torch.allclose(batched[1], kaldi_fbank(b, sample_rate=sr), atol=1e-5)
    assert batched.shape == (2, 1 + (32000 - 400) // 160, 128)


def test_too_short_waveform_names_the_length_needed():
    with pytest.raises(ValueError, match="needs 400"):
        kaldi_fbank(torch.zeros(399), sample_rate=16000)


def sine(freq, rate, n):
    return torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / rate).float()


def test_resample_keeps_a_tone():
    y = resample(sine(1000, 48000, 48000), orig_freq=48000, new_freq=16000)
    assert y.shape == (16000,)
    assert (y[200:-200] - sine(1000, 16000, 16000)[200:-200]).abs().max() < 1e-2
    up = resample(sine(440, 16000, 8000), orig_freq=16000, new_freq=44100)
    assert up.shape == (math.ceil(8000 * 44100 / 16000),)
    assert (up[500:-500] - sine(440, 44100, up.shape[0])[500:-500]).abs().max() < 1e-2


def test_resample_identity_round_trip_and_scipy():
    wave, sr = speech(STEMS[0])
    assert resample(wave, orig_freq=sr, new_freq=sr) is wave
    tones = sine(300, 16000, 16000) + 0.5 * sine(1200, 16000, 16000) + 0.25 * sine(5000, 16000, 16000)
    back = resample(resample(tones, orig_freq=16000, new_freq=48000), orig_freq=48000, new_freq=16000)
    assert back.shape == tones.shape
    assert (back[400:-400] - tones[400:-400]).abs().max() < 1e-2
    signal = pytest.importorskip("scipy.signal")
    # a different low-pass design (Kaiser) agrees inside the pass band
    tones48 = sine(300, 48000, 48000) + 0.5 * sine(1200, 48000, 48000) + 0.25 * sine(5000, 48000, 48000)
    ref = torch.from_numpy(signal.resample_poly(tones48.numpy(), 1, 3).astype(np.float32))
    ours = resample(tones48, orig_freq=48000, new_freq=16000)
    assert ours.shape == ref.shape
    assert (ours[100:-100] - ref[100:-100]).abs().max() < 1e-2


def test_frontend_pads_short_and_crops_long_clips():
    fe = AudioFrontend()
    assert fe.num_samples() == 164080
    wave, sr = speech(STEMS[0])  # 4 s: padded
    short = fe(wave, sr)
    assert short.shape == (1024, 128)
    frames = 1 + (wave.shape[0] - 400) // 160
    pad = (0.0 - fe.mean) / (2 * fe.std)
    assert torch.allclose(short[frames:], torch.full_like(short[frames:], pad))
    assert not torch.allclose(short[frames - 1], torch.full((128,), pad))
    long = fe(wave.repeat(4), sr)  # 16 s: cropped to the first 1024 frames
    assert long.shape == (1024, 128)
    ref = (kaldi_fbank(wave.repeat(4) - wave.repeat(4).mean(), sample_rate=sr)[:1024] - fe.mean) / (2 * fe.std)
    assert torch.allclose(long, ref, atol=1e-5)


def test_frontend_resamples_and_mixes_down():
    fe = AudioFrontend(num_frames=128)
    wave, sr = sf.read(AUDIO / "Front_Center.wav", dtype="float32", always_2d=True)
    assert sr == 48000
    mono = torch.from_numpy(wave[:, 0].copy())
    out = fe(mono, sr)
    assert out.shape == (128, 128)
    direct = fe(resample(mono, orig_freq=48000, new_freq=16000), 16000)
    assert torch.allclose(out, direct, atol=1e-5)
    stereo = torch.stack([mono, 0.5 * mono])
    assert torch.allclose(fe(stereo, sr), fe(0.75 * mono, sr), atol=1e-5)
    assert AudioFrontend(**fe.config()).config() == fe.config()


def test_frontend_ignores_a_constant_offset():
    """The front end removes the waveform's mean first, so a DC offset changes nothing, also in
    a clip shorter than one window, which is padded with silence after the mean is removed."""
    fe = AudioFrontend(num_frames=3)
    for n in (300, 1200):  # shorter than one 400-sample window, and several frames long
        wave = sine(440, 16000, n) + 0.1 * sine(3000, 16000, n)
        torch.testing.assert_close(fe(wave + 0.5, 16000), fe(wave, 16000), atol=1e-3, rtol=0)


def test_frontend_settings_reach_the_fbank_and_the_padding():
    """Every setting of AudioFrontend takes effect: bins, frame length and shift, the padding
    value, and a clip shorter than one window (zero-padded to a single frame). The expected
    values come from kaldi_fbank, whose parity with torchaudio is tested above."""
    wave, sr = speech(STEMS[0])
    fe = AudioFrontend(num_frames=700, num_mel_bins=64, frame_length_ms=32.0, frame_shift_ms=12.0, mean=-3.0, std=2.0, pad_value=-7.0)
    out = fe(wave, sr)
    fbank = kaldi_fbank(wave - wave.mean(), sample_rate=sr, num_mel_bins=64, frame_length_ms=32.0, frame_shift_ms=12.0)
    frames = fbank.shape[0]
    assert out.shape == (700, 64) and frames == 1 + (wave.shape[0] - 512) // 192 < 700
    torch.testing.assert_close(out[:frames], (fbank + 3.0) / 4.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[frames:], torch.full((700 - frames, 64), (-7.0 + 3.0) / 4.0))
    # Shorter than one 25 ms window: padded with silence to one frame, then to num_frames.
    tiny = AudioFrontend(num_frames=3)
    blip = wave[:300]
    got = tiny(blip, sr)
    want = kaldi_fbank(torch.nn.functional.pad(blip - blip.mean(), (0, 100)), sample_rate=sr)
    assert want.shape[0] == 1 and got.shape == (3, 128)
    torch.testing.assert_close(got[0], (want[0] - tiny.mean) / (2 * tiny.std), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1:], torch.full((2, 128), (0.0 - tiny.mean) / (2 * tiny.std)))


def kaldi_reference(wave, *, sample_rate, window, shift, padded, bins, low_freq=20.0, remove_dc_offset=True, preemphasis=0.97):
    """Kaldi's compute-fbank-feats as the module docstring lists its steps, in float64 numpy:
    snip-edges frames, DC removal, pre-emphasis 0.97 (x[-1] := x[0]), symmetric Hann window,
    zero-padding to ``padded``, power spectrum, triangular filters on 1127 ln(1 + f / 700) over
    the bins below Nyquist, log floored at float32 epsilon."""
    x = np.asarray(wave, dtype=np.float64)
    frames = np.stack([x[i * shift : i * shift + window] for i in range(1 + (len(x) - window) // shift)])
    if remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - preemphasis * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    power = np.abs(np.fft.rfft(frames * np.hanning(window), n=padded)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi = mel(low_freq), mel(sample_rate / 2)
    delta = (hi - lo) / (bins + 1)
    weights = np.zeros((bins, padded // 2 + 1))
    for b in range(bins):
        left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for i in range(padded // 2):  # the Nyquist bin belongs to no filter
            m = mel(sample_rate / padded * i)
            if left < m < right:
                weights[b, i] = (m - left) / (centre - left) if m <= centre else (right - m) / (right - centre)
    return np.log(np.maximum(power @ weights.T, np.finfo(np.float32).eps))


@pytest.mark.parametrize(
    ("sample_rate", "frame_length_ms", "round_to_power_of_two", "window", "padded"),
    [
        (8000, 32.0, True, 256, 256),  # already a power of two: no padding
        (8000, 31.875, True, 255, 256),
        (8000, 32.125, True, 257, 512),  # one past a power of two: the next one
        (16000, 25.0, True, 400, 512),
        (16000, 25.0, False, 400, 400),  # round_to_power_of_two=False: the FFT is the window itself
    ],
)
def test_fft_size_is_the_window_rounded_up_to_a_power_of_two(sample_rate, frame_length_ms, round_to_power_of_two, window, padded):
    """Kaldi pads each frame to the smallest power of two >= the window (round_to_power_of_two),
    or not at all; the result matches the step-by-step reference at that FFT size."""
    wave = torch.from_numpy(np.random.default_rng(0).normal(size=3 * window).astype(np.float32))
    ours = kaldi_fbank(
        wave, sample_rate=sample_rate, num_mel_bins=23, frame_length_ms=frame_length_ms,
        frame_shift_ms=10.0, round_to_power_of_two=round_to_power_of_two,
    )
    shift = int(sample_rate * 10.0 * 0.001)
    ref = kaldi_reference(wave.numpy(), sample_rate=sample_rate, window=window, shift=shift, padded=padded, bins=23)
    assert ours.shape == ref.shape == (1 + (3 * window - window) // shift, 23)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("remove_dc_offset", "preemphasis"), [(False, 0.97), (True, 0.0), (False, 0.0), (True, 0.5)])
def test_dc_removal_and_preemphasis_follow_kaldi_when_changed(remove_dc_offset, preemphasis):
    wave, sr = speech(STEMS[0])
    wave = wave[8000:12000] + 0.05  # an offset, which only DC removal takes out
    options = {"remove_dc_offset": remove_dc_offset, "preemphasis": preemphasis}
    ours = kaldi_fbank(wave, sample_rate=sr, **options)
    ref = kaldi_reference(wave.numpy(), sample_rate=sr, window=400, shift=160, padded=512, bins=128, **options)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-3, rtol=0)  # measured: under 2e-4
    assert (ours - kaldi_fbank(wave, sample_rate=sr)).abs().max() > 1  # the options change the features (by 10 or more)  # the options change the features


def test_digital_silence_gives_the_log_floor():
    """Silent frames (zeros, DC removed or not) have no power: every bin is log(float32 eps)."""
    for options in ({}, {"remove_dc_offset": False}, {"preemphasis": 0.0}):
        out = kaldi_fbank(torch.zeros(1200), sample_rate=16000, **options)
        assert out.shape == (6, 128) and torch.equal(out, torch.full_like(out, EPSILON).log())


def test_fbank_computes_on_the_waveforms_device():
    """Window and filters follow the waveform onto its device (the meta device stands in for an
    accelerator here: any tensor created elsewhere would fail to combine with it)."""
    out = kaldi_fbank(torch.zeros(1200, device="meta"), sample_rate=16000, num_mel_bins=40)
    assert out.device.type == "meta" and out.shape == (1 + (1200 - 400) // 160, 40)


def test_fbank_is_float32_whatever_the_default_dtype():
    """The features are float32 (the waveform is cast to it) even where a program has made
    float64 its default dtype."""
    wave = sine(440, 16000, 1200)
    want = kaldi_fbank(wave, sample_rate=16000)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = kaldi_fbank(wave.double(), sample_rate=16000)
    finally:
        torch.set_default_dtype(previous)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def windowed_sinc_reference(x, *, orig_freq, new_freq, width=6, rolloff=0.99):
    """torchaudio's resampling written as a direct sum, in float64: output sample j (at time
    j / new_freq) is sum_n x[n] h(n / orig_freq - j / new_freq), with the low-pass
    h(tau) = (fc / orig_freq) sinc(fc tau) cos^2(pi fc tau / (2 width)) for |fc tau| <= width,
    fc = rolloff * min(orig_freq, new_freq); samples outside the signal are zero."""
    fc = rolloff * min(orig_freq, new_freq)
    n_out = math.ceil(len(x) * new_freq / orig_freq)
    u = fc * (np.arange(len(x))[None, :] / orig_freq - np.arange(n_out)[:, None] / new_freq)
    h = np.where(np.abs(u) <= width, fc / orig_freq * np.sinc(u) * np.cos(np.pi * u / (2 * width)) ** 2, 0.0)
    return h @ np.asarray(x, dtype=np.float64)


@pytest.mark.parametrize(("orig_freq", "new_freq"), [(24000, 16000), (16000, 24000), (22050, 16000), (8000, 16000)])
def test_resample_defaults_are_torchaudios_windowed_sinc(orig_freq, new_freq):
    """With its defaults (lowpass_filter_width=6, rolloff=0.99, as torchaudio's) resample is the
    Hann-windowed sinc interpolation above, sample for sample, down and up, at any rate ratio."""
    x = np.random.default_rng(1).normal(size=90)
    got = resample(torch.from_numpy(x).float(), orig_freq=orig_freq, new_freq=new_freq)
    want = windowed_sinc_reference(x, orig_freq=orig_freq, new_freq=new_freq)
    assert got.shape == want.shape == (math.ceil(90 * new_freq / orig_freq),)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(2, 50), (2, 3, 50)])
def test_resample_works_along_the_last_axis_of_any_shape(shape):
    """Leading axes are a batch: each row is resampled on its own and the shape keeps them."""
    wave = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = resample(wave, orig_freq=48000, new_freq=16000)
    assert out.shape == (*shape[:-1], math.ceil(50 / 3))
    rows = torch.stack([resample(row, orig_freq=48000, new_freq=16000) for row in wave.reshape(-1, 50)])
    torch.testing.assert_close(out.reshape(-1, out.shape[-1]), rows)


def test_frontend_defaults_are_audio_mae():
    """The default front end is Audio-MAE's (and AST's): 16 kHz, 1024 frames of 128 mel bins,
    25 ms windows every 10 ms, zero padding, normalized with AudioSet's mean -4.2677393 and std
    4.5689974 as (x - mean) / (2 * std)."""
    assert AudioFrontend().config() == {
        "sample_rate": 16000, "num_frames": 1024, "num_mel_bins": 128, "frame_shift_ms": 10.0,
        "frame_length_ms": 25.0, "mean": -4.2677393, "std": 4.5689974, "pad_value": 0.0,
    }
    silence = AudioFrontend(num_frames=2)(torch.zeros(400), 16000)  # log floor, then a zero-padded frame
    torch.testing.assert_close(silence[1], torch.full((128,), 4.2677393 / (2 * 4.5689974)))
