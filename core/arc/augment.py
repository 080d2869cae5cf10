"""Invertible transforms of ARC grids: the augmentations of test-time training, and the views a
prediction is made under and mapped back from.

A `Transform` is a name plus a forward and an inverse function; chains are made by composing two
of them, not by subclassing. The geometric families follow the reference TTT code (Akyurek et al.,
used by SEAL's few-shot ARC), minus its non-invertible ones (reflect-and-concatenate, random
translation), since every view here must map a prediction back:

- basic: the 7 non-identity symmetries of the square (rotations, flips, transposes);
- size: scale each cell to a 2x2, 2x1 or 1x2 block; the inverse downsamples;
- chain: a basic transform then upscale-by-2. Not two basic transforms in a row: the symmetries
  of the square are closed under composition, so such a chain would only repeat a basic one;
- repeat: tile the grid twice down, across, or both; the inverse takes the first tile.

Size and repeat transforms are not onto: inverting a grid outside their image raises ValueError.
They also grow grids, so `apply` refuses one whose result would exceed 30x30 (check `fits` first).

Colour permutations (0, the background, stays fixed) are Transforms too; the order of the
demonstration pairs is permuted with `reorder` / `restore_order`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from core.arc.grids import MAX_SIDE, Grid, shape


@dataclass(frozen=True)
class Transform:
    """An invertible map of grids."""

    name: str
    """Stable, human-readable; composed transforms are named 'first+second'."""
    forward: Callable[[Grid], Grid]
    """The map itself."""
    inverse: Callable[[Grid], Grid]
    """Its inverse; raises ValueError on a grid outside the forward map's image."""
    scale: tuple[int, int] = (1, 1)
    """How many times the (height, width) of the input the output spans (after any axis swap);
    ARC's limit is square, so this alone decides whether a result fits."""

    def fits(self, grid: Grid) -> bool:
        h, w = shape(grid)
        return h * self.scale[0] <= MAX_SIDE and w * self.scale[1] <= MAX_SIDE

    def apply(self, grid: Grid) -> Grid:
        if not self.fits(grid):
            raise ValueError(f"{self.name}: a {shape(grid)} grid would exceed {MAX_SIDE}x{MAX_SIDE}")
        return self.forward(grid)

    def invert(self, grid: Grid) -> Grid:
        return self.inverse(grid)


def compose(first: Transform, second: Transform) -> Transform:
    """``second`` after ``first``; the inverse undoes them in reverse order."""
    return Transform(name=f"{first.name}+{second.name}",
                     forward=lambda g: second.forward(first.forward(g)),
                     inverse=lambda g: first.inverse(second.inverse(g)),
                     scale=(first.scale[0] * second.scale[0], first.scale[1] * second.scale[1]))


# -- the symmetries of the square ------------------------------------------------------------------

def _identity(g: Grid) -> Grid:
    return g


def _flip_h(g: Grid) -> Grid:  # mirror left-right
    return tuple(row[::-1] for row in g)


def _flip_v(g: Grid) -> Grid:  # mirror top-bottom
    return g[::-1]


def _transpose(g: Grid) -> Grid:
    return tuple(zip(*g))


def _rot90(g: Grid) -> Grid:  # clockwise
    return tuple(zip(*g[::-1]))


def _rot180(g: Grid) -> Grid:
    return tuple(row[::-1] for row in g[::-1])


def _rot270(g: Grid) -> Grid:
    return tuple(zip(*g))[::-1]


def _anti_transpose(g: Grid) -> Grid:  # mirror in the anti-diagonal
    return _rot180(_transpose(g))


IDENTITY = Transform("identity", _identity, _identity)
ROT90 = Transform("rot90", _rot90, _rot270)
ROT180 = Transform("rot180", _rot180, _rot180)
ROT270 = Transform("rot270", _rot270, _rot90)
FLIP_H = Transform("flip_h", _flip_h, _flip_h)
FLIP_V = Transform("flip_v", _flip_v, _flip_v)
TRANSPOSE = Transform("transpose", _transpose, _transpose)
ANTI_TRANSPOSE = Transform("anti_transpose", _anti_transpose, _anti_transpose)
BASIC = (ROT90, ROT180, ROT270, FLIP_H, FLIP_V, TRANSPOSE, ANTI_TRANSPOSE)


# -- size and repeat: not onto, so the inverse checks ----------------------------------------------

def _upsample(g: Grid, fy: int, fx: int) -> Grid:
    return tuple(tuple(c for c in row for _ in range(fx)) for row in g for _ in range(fy))


def _downsample(g: Grid, fy: int, fx: int) -> Grid:
    h, w = shape(g)
    if h % fy or w % fx:
        raise ValueError(f"a {h}x{w} grid is not a {fy}x{fx} upscale")
    small = tuple(row[::fx] for row in g[::fy])
    if _upsample(small, fy, fx) != g:
        raise ValueError(f"the grid is not made of constant {fy}x{fx} blocks")
    return small


def _tile(g: Grid, ty: int, tx: int) -> Grid:
    return tuple(row * tx for row in g) * ty


def _first_tile(g: Grid, ty: int, tx: int) -> Grid:
    h, w = shape(g)
    if h % ty or w % tx:
        raise ValueError(f"a {h}x{w} grid is not {ty}x{tx} tiles")
    first = tuple(row[: w // tx] for row in g[: h // ty])
    if _tile(first, ty, tx) != g:
        raise ValueError(f"the {ty}x{tx} tiles of the grid differ")
    return first


def _scaling(name: str, fy: int, fx: int) -> Transform:
    return Transform(name, partial(_upsample, fy=fy, fx=fx), partial(_downsample, fy=fy, fx=fx), (fy, fx))


def _repeat(name: str, ty: int, tx: int) -> Transform:
    return Transform(name, partial(_tile, ty=ty, tx=tx), partial(_first_tile, ty=ty, tx=tx), (ty, tx))


UPSCALE2 = _scaling("upscale2", 2, 2)
SIZE = (UPSCALE2, _scaling("double_height", 2, 1), _scaling("double_width", 1, 2))
CHAIN = tuple(compose(t, UPSCALE2) for t in (ROT90, ROT180, ROT270, FLIP_H, FLIP_V, TRANSPOSE))
REPEAT = (_repeat("repeat_down", 2, 1), _repeat("repeat_across", 1, 2), _repeat("repeat_both", 2, 2))


def augmenters(basic: bool, size: bool, chain: bool, repeat: bool) -> list[Transform]:
    """The geometric transforms an edit enables, in a fixed order; identity is not among them."""
    return [*(BASIC if basic else ()), *(SIZE if size else ()), *(CHAIN if chain else ()),
            *(REPEAT if repeat else ())]


def apply_to_pairs(pairs: Sequence[tuple[Grid, Grid]], transform: Transform) -> list[tuple[Grid, Grid]]:
    """Every grid of every (input, output) pair mapped by ``transform`` (ValueError if one won't fit)."""
    return [(transform.apply(i), transform.apply(o)) for i, o in pairs]


def pairs_fit(pairs: Sequence[tuple[Grid, Grid]], transform: Transform) -> bool:
    return all(transform.fits(i) and transform.fits(o) for i, o in pairs)


# -- colours and example order ---------------------------------------------------------------------

def random_colour_perm(rng: random.Random) -> tuple[int, ...]:
    """``perm[c]`` is the new colour of ``c``; 0 (background) stays 0, 1..9 are shuffled."""
    rest = list(range(1, 10))
    rng.shuffle(rest)
    return (0, *rest)


def inverse_perm(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for src, dst in enumerate(perm):
        inv[dst] = src
    return tuple(inv)


def _recolour(g: Grid, perm: tuple[int, ...]) -> Grid:
    return tuple(tuple(perm[c] for c in row) for row in g)


def colour_transform(perm: Sequence[int]) -> Transform:
    """Recolour every cell by ``perm`` (a permutation of 0..9 with 0 fixed)."""
    perm = tuple(perm)
    if sorted(perm) != list(range(10)) or perm[0] != 0:
        raise ValueError(f"a colour permutation must permute 0..9 and keep 0 fixed, got {perm}")
    return Transform("colours-" + "".join(map(str, perm)), partial(_recolour, perm=perm),
                     partial(_recolour, perm=inverse_perm(perm)))


def random_order(n: int, rng: random.Random) -> tuple[int, ...]:
    order = list(range(n))
    rng.shuffle(order)
    return tuple(order)


def reorder(items: Sequence, order: Sequence[int]) -> list:
    """``items[order[0]], items[order[1]], ...``"""
    return [items[i] for i in order]


def restore_order(items: Sequence, order: Sequence[int]) -> list:
    """The inverse of `reorder`: ``restore_order(reorder(xs, order), order) == list(xs)``."""
    out: list = [None] * len(order)
    for pos, i in enumerate(order):
        out[i] = items[pos]
    return out
