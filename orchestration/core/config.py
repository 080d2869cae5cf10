"""Config loading: ``OmegaConf.merge(structured(Schema), yaml, cli key=value list)``.

Unknown keys and wrong types are caught by OmegaConf against the dataclass schema; the error is
re-raised as a ConfigError that names the key and says how to fix it. The resolved config is what
gets saved into every run folder, and what resume compares against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    """Which contexts to use."""

    domain: str = "knowledge"
    """'knowledge' (passages and questions) or 'arc' (few-shot grid tasks); see orchestration.core.domains."""
    source: str = "demo"
    """knowledge: 'demo' (the built-in fictional set), a SEAL/SQuAD-schema JSON file, or a hub dataset
    id. arc: 'synthetic' (our own easy tasks) or a Kaggle-format challenges JSON file."""
    solutions: Optional[str] = None
    """arc: the solutions file of ``source`` (default: the ``*solutions*`` file beside it, if any)."""
    split: str = "validation"
    """Split, for hub datasets only."""
    shuffle_seed: Optional[int] = None
    """Shuffle the whole list with random.Random(seed) first; 42 gives the standard SQuAD subset.
    (arc 'synthetic': the seed the tasks are generated with.)"""
    offset: int = 0
    """Skip this many contexts (after shuffling)."""
    limit: Optional[int] = None
    """Use at most this many contexts (None = all)."""
    ids: Optional[list[str]] = None
    """Keep only these contexts, in this order, after offset/limit: context ids (knowledge) or task
    ids (arc)."""

    def load(self):
        """The contexts this config names, loaded by its domain."""
        from orchestration.core import domains

        out = domains.get(self.domain).load(self)
        if self.ids:
            by_id = {c.context_id: c for c in out} | {c.title: c for c in out if self.domain == "arc"}
            missing = [i for i in self.ids if i not in by_id]
            if missing:
                raise ConfigError(f"data.ids: {missing} are not among the {len(out)} contexts of "
                                  f"source={self.source} (after offset/limit); check the ids or widen the slice")
            out = [by_id[i] for i in self.ids]
        return out


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None):
    """Return (typed config object, resolved DictConfig)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.structured(schema)
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist; pass a YAML file from configs/")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value (e.g. student.train.epochs=3)")
            key, _ = item.split("=", 1)
            # update() walks list indices too (students.0.train.epochs=2), which a merged dotlist cannot
            OmegaConf.update(cfg, key.strip(), OmegaConf.from_dotlist([f"v={item.split('=', 1)[1]}"])["v"], merge=True)
        OmegaConf.resolve(cfg)
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {e.msg if hasattr(e, 'msg') else e}. "
                          f"Check the spelling and type against the documented fields "
                          f"(see the dataclasses in {schema.__module__}).") from None
    return obj, cfg


def diff_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out
