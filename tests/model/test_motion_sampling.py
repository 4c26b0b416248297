"""The map-point helpers of motion-guided masking, against reference formulas: token motion
upsampled between token centres, bilinear reads with the edges extended and an inside test on
the map's extent, and the inverse of a forward displacement."""

import pytest
import torch

from modalmae.masking.motion import _inverse, _sample, _upsample


def test_upsample_interpolates_between_token_centres_in_map_points():
    """Token (h, w) carries dx = w, dy = 2h tokens. With 2 points a token side, the points sit at
    token coordinates -0.25, 0.25, 0.75, 1.25: linear between the centres, held beyond them, and
    scaled by 2 into points."""
    h, w = torch.meshgrid(torch.arange(2.0), torch.arange(2.0), indexing="ij")
    field = torch.stack([w, 2 * h], -1)[None]  # [1, H', W', 2]: (dx, dy) in tokens
    out = _upsample(field, 2)
    along = torch.tensor([0.0, 0.25, 0.75, 1.0])  # clamp(token coordinate, 0, 1)
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[0, 0], (2 * along).expand(4, 4))  # dx varies along x only
    torch.testing.assert_close(out[0, 1], (2 * 2 * along)[:, None].expand(4, 4))  # dy along y only


@pytest.mark.parametrize("dx, dy", [
    (0.0, 0.0), (0.25, 0.0), (-0.5, 0.0), (0.5, 0.5), (-1.0, 0.0), (0.0, 1.5), (0.75, -0.25), (-3.5, -0.5), (4.0, 0.0),
])
def test_sample_reads_bilinear_with_edges_extended_and_tells_which_sources_are_inside(dx, dy):
    """values = x + 10 y on a 3 x 4 map, every point displaced by (dx, dy) points. Bilinear reading
    of a linear map is exact; past the outer point centres the edge value holds. A source is
    inside while it lies on the map's extent, which runs half a point past the outer centres
    (the edges themselves included)."""
    height, width = 3, 4
    y, x = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    values = (x + 10 * y)[None, None]
    displacement = torch.tensor([dx, dy]).view(1, 2, 1, 1).expand(1, 2, height, width)
    out, inside = _sample(values, displacement)
    sx, sy = x + dx, y + dy
    expected = sx.clamp(0, width - 1) + 10 * sy.clamp(0, height - 1)
    torch.testing.assert_close(out[0, 0], expected)
    within = (sx >= -0.5) & (sx <= width - 0.5) & (sy >= -0.5) & (sy <= height - 0.5)
    assert torch.equal(inside[0], within)


def test_the_inverse_of_a_uniform_displacement_is_its_negative_up_to_the_edges():
    """Content moved by (1.5, -0.5) points came from (-1.5, 0.5) points away, at every point:
    also where that source lies outside the map (the field is read with its edges extended)."""
    forward = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1).expand(2, 2, 4, 5)
    torch.testing.assert_close(_inverse(forward), -forward)


def test_the_inverse_of_a_gentle_linear_displacement_is_accurate():
    """forward = a (p - c) (a gentle expansion about c): the exact inverse, the fixed point of
    d = -forward(p + d), is d = -a (p - c) / (1 + a). The few fixed-point steps from
    d = -forward(p) land within 1% of the largest displacement."""
    a, height, width = 0.25, 7, 9
    y, x = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2]).view(2, 1, 1)
    offset = torch.stack([x, y]) - centre  # [2, H, W]
    exact = -a * offset / (1 + a)
    back = _inverse((a * offset)[None])[0]
    assert (back - exact).abs().max() <= 0.01 * exact.abs().max()
    # Each step multiplies the error by -a: three steps (the default) from -forward give the
    # geometric series' first four terms, exactly (bilinear reads of a linear field are exact).
    torch.testing.assert_close(back, -a * offset * (1 - a + a**2 - a**3))
