"""Tests for omnisync_model.core.codec: PixelCodec round trip and layout, frame counts, padding and cropping."""

import pytest
import torch

from omnisync_model.core.codec import (Codec, PixelCodec, crop_back, latent_frame_count, make_codec,
                                  pad_frames_to_codec)


def _frames(n=3, h=8, w=12, seed=0):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


# ---- PixelCodec -----------------------------------------------------------------------------------


def test_pixel_codec_attributes_and_protocol():
    codec = PixelCodec()
    assert (codec.spatial_factor, codec.temporal_factor, codec.latent_channels) == (4, 1, 48)
    assert isinstance(codec, Codec)
    assert PixelCodec(2).latent_channels == 12


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_pixel_codec_shape_and_range(factor):
    frames = _frames(n=5, h=8, w=16)
    lat = PixelCodec(factor).encode(frames)
    assert lat.shape == (1, 3 * factor * factor, 5, 8 // factor, 16 // factor)
    assert lat.min() >= -1 and lat.max() <= 1
    assert lat.dtype == torch.float32


def test_pixel_codec_round_trip_random():
    codec = PixelCodec(4)
    frames = _frames()
    back = codec.decode(codec.encode(frames))
    assert back.shape == frames.shape
    assert (back - frames).abs().max() <= 1e-6


def test_pixel_codec_round_trip_exact_for_multiples_of_1_256():
    codec = PixelCodec(4)
    frames = torch.randint(0, 257, (2, 8, 8, 3), generator=torch.Generator().manual_seed(1)).float() / 256
    assert torch.equal(codec.decode(codec.encode(frames)), frames)


def test_pixel_codec_channel_layout():
    """channel = rgb * f*f + dy * f + dx, value = 2 * pixel - 1."""
    codec = PixelCodec(2)
    frames = _frames(n=2, h=4, w=6)
    lat = codec.encode(frames)
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                expect = frames[:, dy::2, dx::2, c] * 2 - 1  # [F,h,w]
                assert torch.allclose(lat[0, c * 4 + dy * 2 + dx], expect, atol=0)


def test_pixel_codec_decode_clamps():
    codec = PixelCodec(2)
    lat = torch.full((1, 12, 1, 2, 2), 3.0)
    lat[:, :6] = -3.0
    out = codec.decode(lat)
    assert out.min() == 0 and out.max() == 1


def test_pixel_codec_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible by the codec factor 4"):
        PixelCodec(4).encode(_frames(h=10, w=8))


def test_pixel_codec_rejects_bad_shapes():
    codec = PixelCodec(2)
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        codec.encode(torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="latent must be"):
        codec.decode(torch.zeros(1, 11, 1, 2, 2))
    with pytest.raises(ValueError, match="latent must be"):
        codec.decode(torch.zeros(2, 12, 1, 2, 2))
    with pytest.raises(ValueError):
        PixelCodec(0)


def test_make_codec():
    codec = make_codec("pixel4")
    assert isinstance(codec, PixelCodec) and codec.spatial_factor == 4
    assert make_codec("pixel8").latent_channels == 192
    with pytest.raises(ValueError, match="wan2.1"):
        make_codec("wan2.1")


# ---- frame counts, padding, cropping ---------------------------------------------------------------


@pytest.mark.parametrize("n,tf,expect", [(1, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 4, 3), (7, 1, 7), (81, 4, 21)])
def test_latent_frame_count(n, tf, expect):
    assert latent_frame_count(n, tf) == expect


def test_latent_frame_count_rejects_zero():
    with pytest.raises(ValueError):
        latent_frame_count(0, 4)
    with pytest.raises(ValueError):
        latent_frame_count(3, 0)


def test_pad_noop_returns_input():
    frames = _frames(n=5, h=8, w=8)
    padded, size = pad_frames_to_codec(frames, 4, 4)
    assert padded is frames and size == (5, 8, 8)


@pytest.mark.parametrize("n,tf,n_pad", [(1, 4, 1), (2, 4, 5), (5, 4, 5), (6, 4, 9), (3, 1, 3)])
def test_pad_temporal_to_1_plus_k_tf(n, tf, n_pad):
    frames = _frames(n=n, h=4, w=4)
    padded, size = pad_frames_to_codec(frames, 4, tf)
    assert padded.shape[0] == n_pad and size == (n, 4, 4)
    assert torch.equal(padded[:n], frames)
    for i in range(n, n_pad):
        assert torch.equal(padded[i], frames[-1])  # the last frame repeats


def test_pad_spatial_replicates_edges():
    frames = _frames(n=2, h=5, w=7)
    padded, size = pad_frames_to_codec(frames, 4, 1)
    assert padded.shape == (2, 8, 8, 3) and size == (2, 5, 7)
    assert torch.equal(padded[:, :5, :7], frames)
    assert torch.equal(padded[:, 5:, :7], frames[:, 4:5].expand(2, 3, 7, 3))  # bottom row repeated
    assert torch.equal(padded[:, :5, 7], frames[:, :, 6])  # right column repeated
    assert torch.equal(padded[:, 7, 7], frames[:, 4, 6])  # corner = bottom-right pixel


def test_pad_works_for_uint8():
    frames = (torch.arange(2 * 3 * 3 * 3) % 256).to(torch.uint8).reshape(2, 3, 3, 3)
    padded, _ = pad_frames_to_codec(frames, 2, 4)
    assert padded.dtype == torch.uint8 and padded.shape == (5, 4, 4, 3)


def test_pad_then_codec_then_crop_round_trip():
    codec = PixelCodec(4)
    frames = _frames(n=6, h=10, w=13)
    padded, size = pad_frames_to_codec(frames, codec.spatial_factor * 2, codec.temporal_factor)
    assert padded.shape[1] % 8 == 0 and padded.shape[2] % 8 == 0
    back = crop_back(codec.decode(codec.encode(padded)), size)
    assert back.shape == frames.shape
    assert (back - frames).abs().max() <= 1e-6


def test_crop_back_rejects_growing():
    with pytest.raises(ValueError, match="cannot crop"):
        crop_back(_frames(n=2, h=4, w=4), (3, 4, 4))


def test_pad_rejects_bad_input():
    with pytest.raises(ValueError):
        pad_frames_to_codec(torch.zeros(0, 4, 4, 3), 4, 1)
    with pytest.raises(ValueError):
        pad_frames_to_codec(torch.zeros(4, 4, 3), 4, 1)
    with pytest.raises(ValueError):
        pad_frames_to_codec(torch.zeros(1, 4, 4, 3), 0, 1)
