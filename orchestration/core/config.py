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

    source: str = "demo"
    """'demo' (the built-in fictional set), a SEAL/SQuAD-schema JSON file, or a hub dataset id."""
    split: str = "validation"
    """Split, for hub datasets only."""
    shuffle_seed: Optional[int] = None
    """Shuffle the whole list with random.Random(seed) first; 42 gives the standard SQuAD subset."""
    offset: int = 0
    """Skip this many contexts (after shuffling)."""
    limit: Optional[int] = None
    """Use at most this many contexts (None = all)."""

    def load(self):
        """The contexts this config names (see `orchestration.core.contexts.load_contexts`)."""
        from orchestration.core.contexts import load_contexts

        return load_contexts(self.source, split=self.split, shuffle_seed=self.shuffle_seed, offset=self.offset,
                             limit=self.limit)


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
