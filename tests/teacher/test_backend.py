"""The backend interface: the request checks every backend shares, the seed hash, and that each
backend's ``generate``/``close`` have the protocol's signature."""

from __future__ import annotations

import inspect

import pytest

from teacher.backend import Backend, batch_seed, check_sampling
from teacher.config import GenerationSettings

GEN = GenerationSettings(temperature=0.7, top_p=0.9, max_new_tokens=64)


@pytest.mark.parametrize("gen, n, greedy, needle", [
    (GEN, 0, False, "n must be >= 1"),
    (GEN, 0, True, "n must be >= 1"),
    (GEN, 2, True, "n=1"),
    (GenerationSettings(temperature=0.0), 2, False, "teacher.generation.temperature"),
    (GenerationSettings(top_p=0.0), 2, False, "teacher.generation.top_p"),
    (GenerationSettings(top_p=1.5), 2, False, "teacher.generation.top_p"),
])
def test_check_sampling_errors_name_the_key(gen, n, greedy, needle):
    with pytest.raises(ValueError, match=needle):
        check_sampling(gen, n, greedy)


@pytest.mark.parametrize("gen, n, greedy", [
    (GEN, 4, False),
    (GenerationSettings(top_p=1.0), 1, False),
    # Greedy decoding does not sample: the sampling settings are not its to refuse.
    (GenerationSettings(temperature=0.0, top_p=0.0), 1, True),
])
def test_check_sampling_accepts_what_a_backend_can_serve(gen, n, greedy):
    check_sampling(gen, n, greedy)


def test_batch_seeds_do_not_collide():
    assert len({batch_seed(s, i) for s in range(50) for i in range(50)}) == 2500


def test_batch_seed_of_an_edit_id_is_stable_and_in_torch_range():
    # The driver hashes edit ids (`teacher.writer.chunk_seed`): the seed must not depend
    # on the process (str hash randomisation) and must fit torch's manual_seed.
    seeds = {batch_seed(3, f"r1/ctx{i}/0") for i in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2 ** 63 for s in seeds)
    assert batch_seed(3, "r1/ctx0/0") == batch_seed(3, "r1/ctx0/0") != batch_seed(4, "r1/ctx0/0")


def backend_classes():
    from orchestration.ray_launch import RayTeacherBackend
    from teacher.transformers_backend import TransformersBackend
    from teacher.vllm_backend import VLLMBackend

    return [TransformersBackend, VLLMBackend, RayTeacherBackend]


def parameters(fn) -> list[tuple]:
    """(name, kind, default) of each parameter: the parts of a signature a caller depends on."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", backend_classes(), ids=lambda c: c.__name__)
def test_every_backend_has_the_protocols_methods(cls):
    # The driver calls all three the same way (`write_edits`); a renamed keyword or a lost default
    # would only show up in the launcher that uses that backend.
    for name in ("generate", "close"):
        assert parameters(getattr(cls, name)) == parameters(getattr(Backend, name)), (cls.__name__, name)
