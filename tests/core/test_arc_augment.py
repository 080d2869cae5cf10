"""ARC transforms: every one is undone by its inverse (property tests on random grids), the
non-onto ones refuse grids outside their image, and a few known values pin the directions."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.arc.augment import (BASIC, CHAIN, IDENTITY, REPEAT, SIZE, augmenters, colour_transform, compose,
                              inverse_perm, random_colour_perm, random_order, reorder, restore_order)

FEW = settings(max_examples=200, deadline=None)
PER_TRANSFORM = settings(max_examples=50, deadline=None)  # x 25 transforms: keeps the file at a few seconds
BIJECTIONS = [IDENTITY, *BASIC]
INTO = [*SIZE, *CHAIN, *REPEAT]  # not onto: their inverse checks its input


@st.composite
def grids(draw, max_side=8, odd=False):
    sides = st.integers(1, max_side // 2).map(lambda k: 2 * k - 1) if odd else st.integers(1, max_side)
    h, w = draw(sides), draw(sides)
    return tuple(tuple(draw(st.lists(st.integers(0, 9), min_size=w, max_size=w))) for _ in range(h))


@pytest.mark.parametrize("t", BIJECTIONS, ids=lambda t: t.name)
@PER_TRANSFORM
@given(x=grids(), y=grids())
def test_bijection_round_trips_both_ways(t, x, y):
    assert t.invert(t.apply(x)) == x
    assert t.apply(t.invert(y)) == y


@pytest.mark.parametrize("t", INTO, ids=lambda t: t.name)
@PER_TRANSFORM
@given(x=grids())
def test_into_map_round_trips_on_its_image(t, x):
    y = t.apply(x)
    assert t.invert(y) == x
    assert t.apply(t.invert(y)) == y


@pytest.mark.parametrize("t", INTO, ids=lambda t: t.name)
@PER_TRANSFORM
@given(x=grids(), odd=grids(odd=True))
def test_into_map_inverse_refuses_grids_outside_its_image(t, x, odd):
    y = [list(row) for row in t.apply(x)]
    y[0][0] = (y[0][0] + 1) % 10  # every block and every tile has >= 2 cells, so one cell breaks it
    with pytest.raises(ValueError):
        t.invert(tuple(map(tuple, y)))
    with pytest.raises(ValueError):  # odd sides: not made of 2-cell blocks or 2 tiles along some axis
        t.invert(odd)


G = ((1, 2, 3), (4, 5, 6))
KNOWN = {
    "rot90": ((4, 1), (5, 2), (6, 3)),
    "rot180": ((6, 5, 4), (3, 2, 1)),
    "rot270": ((3, 6), (2, 5), (1, 4)),
    "flip_h": ((3, 2, 1), (6, 5, 4)),
    "flip_v": ((4, 5, 6), (1, 2, 3)),
    "transpose": ((1, 4), (2, 5), (3, 6)),
    "anti_transpose": ((6, 3), (5, 2), (4, 1)),
    "upscale2": ((1, 1, 2, 2, 3, 3),) * 2 + ((4, 4, 5, 5, 6, 6),) * 2,
    "double_height": ((1, 2, 3), (1, 2, 3), (4, 5, 6), (4, 5, 6)),
    "double_width": ((1, 1, 2, 2, 3, 3), (4, 4, 5, 5, 6, 6)),
    "flip_h+upscale2": ((3, 3, 2, 2, 1, 1),) * 2 + ((6, 6, 5, 5, 4, 4),) * 2,
    "repeat_down": G + G,
    "repeat_across": ((1, 2, 3, 1, 2, 3), (4, 5, 6, 4, 5, 6)),
    "repeat_both": ((1, 2, 3, 1, 2, 3), (4, 5, 6, 4, 5, 6)) * 2,
}


@pytest.mark.parametrize("name,expected", KNOWN.items())
def test_known_values(name, expected):
    (t,) = [t for t in BIJECTIONS + INTO if t.name == name]
    assert t.apply(G) == expected


@FEW
@given(x=grids())
def test_compositions_agree_with_the_group(x):
    by_name = {t.name: t for t in BASIC}
    assert compose(by_name["rot90"], by_name["rot90"]).apply(x) == by_name["rot180"].apply(x)
    assert compose(by_name["flip_h"], by_name["flip_v"]).apply(x) == by_name["rot180"].apply(x)
    assert compose(by_name["transpose"], by_name["rot180"]).apply(x) == by_name["anti_transpose"].apply(x)


@pytest.mark.parametrize("t,side,ok", [(SIZE[0], 15, True), (SIZE[0], 16, False), (REPEAT[2], 16, False),
                                       (SIZE[1], 16, False), (BASIC[0], 30, True)], ids=str)
def test_growing_transforms_refuse_grids_beyond_30(t, side, ok):
    x = ((1,) * side,) * side
    assert t.fits(x) is ok
    if ok:
        assert max(len(t.apply(x)), len(t.apply(x)[0])) <= 30
    else:
        with pytest.raises(ValueError, match="30x30"):
            t.apply(x)


@pytest.mark.parametrize("flags,n", [
    ((False,) * 4, 0), ((True, False, False, False), 7), ((False, True, False, False), 3),
    ((False, False, True, False), 6), ((False, False, False, True), 3), ((True,) * 4, 19),
])
def test_augmenters_counts_and_order(flags, n):
    got = augmenters(*flags)
    assert len(got) == n and got == augmenters(*flags)
    assert IDENTITY not in got


def test_names_are_unique():
    names = [t.name for t in BIJECTIONS + INTO]
    assert len(names) == len(set(names))


@FEW
@given(seed=st.integers(0, 2**32), x=grids(), y=grids())
def test_colour_permutation_round_trips_and_keeps_background(seed, x, y):
    perm = random_colour_perm(random.Random(seed))
    t = colour_transform(perm)
    assert perm[0] == 0 and sorted(perm) == list(range(10))
    assert inverse_perm(inverse_perm(perm)) == perm
    assert t.invert(t.apply(x)) == x and t.apply(t.invert(y)) == y
    assert all((a == 0) == (b == 0) for ra, rb in zip(x, t.apply(x)) for a, b in zip(ra, rb))


@pytest.mark.parametrize("perm", [(1, 0, 2, 3, 4, 5, 6, 7, 8, 9), (0, 1, 1, 3, 4, 5, 6, 7, 8, 9), (0, 1, 2)])
def test_colour_transform_refuses_non_permutations_and_moving_background(perm):
    with pytest.raises(ValueError, match="keep 0 fixed"):
        colour_transform(perm)


@FEW
@given(items=st.lists(st.integers(), max_size=8), seed=st.integers(0, 2**32))
def test_example_order_round_trips(items, seed):
    order = random_order(len(items), random.Random(seed))
    assert sorted(order) == list(range(len(items)))
    assert restore_order(reorder(items, order), order) == items
    assert reorder(restore_order(items, order), order) == items
