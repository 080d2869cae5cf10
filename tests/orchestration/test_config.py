from pathlib import Path

import pytest

from orchestration.core.config import ConfigError, load_config
from orchestration.driver.adapt import AdaptConfig
from orchestration.driver.compare import CompareConfig
from orchestration.driver.continual import ContinualConfig
from orchestration.driver.evaluate import EvaluateConfig
from orchestration.driver.generate import GenerateConfig
from orchestration.driver.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
SCHEMAS = {"adapt": AdaptConfig, "train": TrainConfig, "generate": GenerateConfig, "evaluate": EvaluateConfig, "compare": CompareConfig, "continual": ContinualConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    # Each config's first line is the command that runs it: "# seal <command> configs/<name>.yaml".
    words = path.read_text().splitlines()[0].split()
    assert words[:2] == ["#", "seal"] and words[2] in SCHEMAS, f"{path.name}: first line must be '# seal <command> ...'"
    cfg, resolved = load_config(SCHEMAS[words[2]], path)
    assert resolved is not None and getattr(cfg, "run_dir", None) is None


def test_list_items_can_be_overridden_by_index():
    cfg, _ = load_config(TrainConfig, CONFIGS[0].parent / "demo.yaml", ["students.0.train.epochs=5"])
    assert cfg.students[0].train.epochs == 5 and cfg.students[0].model == "gemma3-270m"


def test_overrides_merge_and_types():
    cfg, _ = load_config(AdaptConfig, CONFIGS[0], ["student.train.epochs=7", "run_dir=/tmp/x"])
    assert CONFIGS[0].name == "adapt_demo.yaml"
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
