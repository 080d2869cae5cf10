"""Config loading: ``OmegaConf.merge(structured(Schema), yaml, cli key=value list)``, and the checks
every config runs before any work.

Unknown keys, wrong types and values outside an Enum field's members are caught by OmegaConf against
the dataclass schema, at load; the error is re-raised as a ConfigError that names the key and says
how to fix it. Ranges (counts >= 1, probabilities in (0, 1], ...) are checked by one ``check(key)``
method per config dataclass, with the helpers below; ``key`` is the node's dotted path, so an error
names the full key wherever the node is nested (``students.1.lora.r``, ``train.teacher.sft.save``).
Every command calls its config's ``check`` first, before it loads data or a model and before it
creates its run folder: an error after an hour of work is a lost hour.

The config as written is what gets saved into every run folder, and what resume compares against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Optional, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class Choice(StrEnum):
    """Base of the config enums: a member's name is its value, and it *is* that string (StrEnum, not
    ``(str, Enum)``, whose f-string form would be 'Dtype.auto'), so YAML and comparisons such as
    ``cfg.roles == "same"`` work unchanged. Its repr is the string's too, for messages."""

    def __repr__(self) -> str:
        return repr(self.value)


class Dtype(Choice):
    """Compute dtype of the teacher's generation and the student's training and answering."""

    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


class Domain(Choice):
    """The names of `core.domains.DOMAINS`."""

    knowledge = "knowledge"
    arc = "arc"


# ----- the checks' helpers: each names the dotted key, the value and the fix --------------------
def at(key: str, name: str) -> str:
    """The dotted key of field ``name`` of the node at ``key`` ('' is the top level)."""
    return f"{key}.{name}" if key else name


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _refuse(node, key: str, name: str, fix: str):
    raise ConfigError(f"{at(key, name)}={_show(getattr(node, name))} is out of range; {fix}")


def check_min(node, key: str, low: int, *names: str, hint: str = "") -> None:
    """Each field ``names`` of ``node`` is >= ``low`` (None, for an optional field, passes)."""
    for name in names:
        value = getattr(node, name)
        if value is not None and value < low:
            _refuse(node, key, name, f"use {low} or more{hint}")


def check_positive(node, key: str, *names: str, hint: str = "") -> None:
    """Each field is > 0 (None passes)."""
    for name in names:
        value = getattr(node, name)
        if value is not None and not value > 0:
            _refuse(node, key, name, f"use a value above 0{hint}")


def check_fraction(node, key: str, *names: str) -> None:
    """Each field is in (0, 1] (None passes)."""
    for name in names:
        value = getattr(node, name)
        if value is not None and not 0 < value <= 1:
            _refuse(node, key, name, "use a value in (0, 1]")


def check_dropout(node, key: str, *names: str) -> None:
    """Each field is in [0, 1)."""
    for name in names:
        if not 0 <= getattr(node, name) < 1:
            _refuse(node, key, name, "use a value in [0, 1)")


def check_choice(node, key: str, name: str, choices: type[Enum]) -> None:
    """The field is one of the Enum's members. OmegaConf already refuses anything else at load; this
    covers configs built in code (``TrainConfig(roles="x")``)."""
    value = getattr(node, name)
    if value not in {m.value for m in choices}:
        raise ConfigError(f"{at(key, name)}={value!r} is unknown; use one of {[m.value for m in choices]}")


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
"""A device setting: 'auto' (the GPU when torch sees one, else the CPU), 'cpu', 'cuda' (torch's current
GPU) or 'cuda:N' (GPU N). `core.models.resolve_device` turns it into a torch device."""


def check_device(node, key: str, name: str = "device") -> None:
    """The field is a device setting (`DEVICE`). Whether that GPU exists is known only with torch
    loaded: `core.models.resolve_device` refuses a missing one, naming the same key."""
    value = getattr(node, name)
    if not isinstance(value, str) or not DEVICE.fullmatch(value):
        raise ConfigError(f"{at(key, name)}={value!r} is unknown; use 'auto', 'cpu', 'cuda' or 'cuda:N' (N: a GPU index)")


def check_nonempty(node, key: str, *names: str) -> None:
    """Each list field has at least one item."""
    for name in names:
        if not getattr(node, name):
            raise ConfigError(f"{at(key, name)}=[] is empty; give at least one item")


@dataclass
class DataConfig:
    """Which contexts to use."""

    domain: Domain = Domain.knowledge
    """'knowledge' (passages and questions) or 'arc' (few-shot grid tasks); see core.domains."""
    source: str = "demo"
    """knowledge: 'demo' (the built-in fictional set), a SEAL/SQuAD-schema file (``.json``: a list of
    records; ``.jsonl``: one record per line), or a hub dataset id. arc: 'synthetic' (our own easy
    tasks) or a Kaggle-format challenges JSON file. Files must be UTF-8."""
    solutions: Optional[str] = None
    """arc: the solutions file of ``source`` (default: the ``*solutions*`` file beside it, if any)."""
    split: str = "validation"
    """Split, for hub datasets only."""
    shuffle_seed: Optional[int] = None
    """Shuffle the whole list with random.Random(seed) first; 42 gives the standard SQuAD subset.
    (arc 'synthetic': the seed the tasks are generated with.)"""
    offset: int = 0
    """Skip this many contexts (after shuffling); 0 or more."""
    limit: Optional[int] = None
    """Use at most this many contexts (None = all); 1 or more."""
    ids: Optional[list[str]] = None
    """Keep only these contexts, in this order, after offset/limit: context ids (knowledge) or task
    ids (arc)."""

    def check(self, key: str = "data") -> None:
        check_choice(self, key, "domain", Domain)
        check_min(self, key, 0, "offset")
        check_min(self, key, 1, "limit", hint=" (or null for all)")


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None):
    """Return (typed config object, DictConfig as written: interpolations unresolved, for `open_run`)."""
    import copy

    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    # what is being merged (a description, and its keys as plain data): OmegaConf reports a key inside
    # a list item of a merged file without the list's path ('train.dtype', not 'students.0.train.dtype')
    where, merging = "", None
    try:
        cfg = OmegaConf.structured(schema)
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist; pass a YAML file from configs/")
            loaded = _load_yaml(p)
            where, merging = f"config file {p}", OmegaConf.to_container(loaded)
            cfg = OmegaConf.merge(cfg, loaded)
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value (e.g. student.train.epochs=3)")
            key, value = item.split("=", 1)
            where = f"override {item!r}"
            try:
                value = OmegaConf.from_dotlist([f"v={value}"])["v"]
            except yaml.YAMLError as e:
                raise ConfigError(f"{where}: the value is not valid YAML ({_one_line(e)})") from None
            merging = _nest(key.strip(), OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
            # update() walks list indices too (students.0.train.epochs=2), which a merged dotlist cannot
            OmegaConf.update(cfg, key.strip(), value, merge=True)
        where, merging = "", None
        # The run folder keeps the config as written: a resolved ${oc.env:VAR} (a key, a token)
        # must not reach its config.yaml. Resolving cfg still checks every interpolation here.
        written = copy.deepcopy(cfg)
        OmegaConf.resolve(cfg)
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        # students[0].train.dtype -> students.0.train.dtype: the form an override takes
        key = re.sub(r"\[(\d+)\]", r".\1", getattr(e, "full_key", None) or "?")
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        key = _locate(merging, key, msg) if merging is not None else key
        raise ConfigError(f"config key '{key}'{f' ({where})' if where else ''}: {msg}. "
                          f"Check the spelling and type against the documented fields "
                          f"(see the dataclasses in {schema.__module__}).") from None
    return obj, written


def _nest(dotted: str, value):
    """{'a': {'b': value}} for 'a.b' (list indices stay keys: enough to find paths in)."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def _paths(node, prefix: str = ""):
    """(dotted path, value) of every node of plain nested dicts and lists."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield f"{prefix}{k}", v
        yield from _paths(v, f"{prefix}{k}.")


def _locate(merging, key: str, msg: str) -> str:
    """The full dotted path of the ``key`` OmegaConf named in ``merging``: the path ending in it whose
    value the message quotes, else the first path ending in it, else ``key`` itself."""
    found = [(p, v) for p, v in _paths(merging) if p == key or p.endswith("." + key)]
    quoted = [p for p, v in found if not isinstance(v, (dict, list)) and f"'{v}'" in msg]
    return (quoted or [p for p, _ in found] or [key])[0]


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _load_yaml(path: Path):
    """A YAML config file as a DictConfig; bad syntax or a top level that is not a mapping is a
    ConfigError naming the file."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({_one_line(e)}); fix its syntax") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x}); "
                          f"save it as UTF-8") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} holds a {type(loaded).__name__}, not a mapping of keys; "
                          f"see the configs/ files for the layout")
    return loaded


def diff_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain nested dicts (lists of one length are
    compared item by item: ``students.0.train.learning_rate``, not ``students``)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb):
            va, vb = dict(enumerate(va)), dict(enumerate(vb))
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
