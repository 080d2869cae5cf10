from pathlib import Path

import pytest

from orchestration.core.config import ConfigError, load_config
from orchestration.driver.adapt import AdaptConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg, resolved = load_config(AdaptConfig, path)
    assert cfg.student.model and cfg.conditions


def test_overrides_merge_and_types():
    cfg, _ = load_config(AdaptConfig, CONFIGS[0], ["student.train.epochs=7", "run_dir=/tmp/x"])
    assert cfg.student.train.epochs == 7 and cfg.run_dir == "/tmp/x"


@pytest.mark.parametrize("override,needle", [
    ("student.trian.epochs=3", "student.trian"),
    ("student.train.epochs=many", "student.train.epochs"),
    ("no_equals_sign", "not key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(AdaptConfig, CONFIGS[0], [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(AdaptConfig, "configs/nope.yaml")
