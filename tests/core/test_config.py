import importlib.util
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from core.config import Choice, ConfigError, Domain, diff_keys, load_config
from orchestration.compare import CompareConfig
from orchestration.continual import ContinualConfig
from orchestration.evaluate import EvaluateConfig
from orchestration.generate import GenerateConfig
from orchestration.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
SCHEMAS = {"train": TrainConfig, "generate": GenerateConfig, "evaluate": EvaluateConfig, "compare": CompareConfig, "continual": ContinualConfig}


def leaves(node, prefix=""):
    """(dotted key, value) of every scalar in plain YAML data."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        yield prefix[:-1], node
        return
    for k, v in items:
        yield from leaves(v, f"{prefix}{k}.")


def lookup(node, dotted: str):
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    # Each config's first line is the command that runs it: "# seal <command> configs/<name>.yaml".
    words = path.read_text().splitlines()[0].split()
    assert words[:2] == ["#", "seal"] and words[2] in SCHEMAS, f"{path.name}: first line must be '# seal <command> ...'"
    required = [w for w in words[4:] if "=" in w and not w.startswith(("[", "("))]  # e.g. edits=FILE
    cfg, _ = load_config(SCHEMAS[words[2]], path, required)
    assert getattr(cfg, "run_dir", None) is None
    # the typed object holds every value the YAML sets (enums equal their strings; ids may be YAML ints)
    typed = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key, value in leaves(yaml.safe_load(path.read_text())):
        got = lookup(typed, key)
        assert got == value or (isinstance(got, str) and got == str(value)), f"{path.name}: {key}={got!r}, YAML {value!r}"
    # and passes its checks, but for the vllm configs on a machine without vllm (refused for that alone)
    if "backend: vllm" in path.read_text() and importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match=r"backend=vllm needs"):
            cfg.check()
    else:
        cfg.check()


def test_a_saved_config_reloads_equal_and_resumes(tmp_path):
    """Enum fields are saved as their plain strings, and the saved file compares equal to the config
    it came from: the run folder resumes. A string YAML (any config.yaml written before the enums)
    loads into the enum fields."""
    from core.runs import open_run
    from student.config import Grader

    overrides = ["students.0.grader=exact", "teacher.sft.save=adapter", "workers.mode=inline"]
    cfg, written = load_config(TrainConfig, CONFIGS[0].parent / "demo.yaml", overrides)
    run = open_run("train", str(tmp_path / "run"), written)
    text = (run / "config.yaml").read_text()
    assert "grader: exact" in text and "save: adapter" in text and "mode: inline" in text and "!!" not in text
    assert diff_keys(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")), OmegaConf.to_container(written)) == []
    assert open_run("train", str(tmp_path / "run"), written) == run  # the same config: resumed, not refused
    again, _ = load_config(TrainConfig, run / "config.yaml")
    assert again == cfg and again.students[0].grader is Grader.exact and again.roles == "split"
    other, other_written = load_config(TrainConfig, CONFIGS[0].parent / "demo.yaml", overrides[1:])
    with pytest.raises(ConfigError, match="students"):
        open_run("train", str(tmp_path / "run"), other_written)


@pytest.mark.parametrize("override,allowed", [
    ("teacher.sft.save=bogus", ["merged", "adapter"]),
    ("students.0.train.dtype=fp8", ["auto", "bf16", "fp32"]),
    ("students.0.grader=foo", ["f1", "exact", "contains", "judge"]),
    ("roles=maybe", ["split", "same"]),
    ("reward.rule=best", ["binary_gain", "best_of_k", "threshold"]),
])
def test_an_enum_value_is_refused_at_load_naming_the_choices(override, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, CONFIGS[0].parent / "demo.yaml", [override])
    assert f"'{override.split('=')[0]}'" in str(e.value) and all(a in str(e.value) for a in allowed)


def _choices(cls=Choice):
    for sub in cls.__subclasses__():
        yield sub
        yield from _choices(sub)


def test_config_enums_are_the_strings_they_name():
    import orchestration.cli  # noqa: F401  (WorkerCommand's enum)
    from core.domains import DOMAINS

    found = list(_choices())
    assert len(found) >= 15, [c.__name__ for c in found]
    for enum in found:
        for m in enum:
            assert m.name == m.value and m == m.value and f"{m}" == m.value and repr(m) == repr(m.value)
    assert {d.value for d in Domain} == set(DOMAINS)


def test_a_config_built_in_code_is_checked_too():
    from student.config import StudentConfig

    with pytest.raises(ConfigError, match=r"^roles='maybe' is unknown"):
        TrainConfig(roles="maybe").check()
    cfg = CompareConfig()
    cfg.train.students = [StudentConfig(model="gemma3-270m"), StudentConfig(model="smollm2-135m-instruct")]
    cfg.train.students[1].lora.r = 0
    with pytest.raises(ConfigError, match=r"^train\.students\.1\.lora\.r=0 is out of range"):
        cfg.check()


def test_list_items_can_be_overridden_by_index():
    cfg, _ = load_config(TrainConfig, CONFIGS[0].parent / "demo.yaml", ["students.0.train.epochs=5"])
    assert cfg.students[0].train.epochs == 5 and cfg.students[0].model == "gemma3-270m"


def test_overrides_merge_and_types():
    path = CONFIGS[0].parent / "continual_demo.yaml"
    cfg, written = load_config(ContinualConfig, path, ["student.train.epochs=7", "run_dir=/tmp/x"])
    assert cfg.student.train.epochs == 7 and cfg.run_dir == "/tmp/x"
    # the config as written (what the run folder saves): the YAML's values, the overrides typed by the
    # schema, the schema's defaults for the rest; and it builds the same typed object
    plain = OmegaConf.to_container(written)
    for key, value in leaves(yaml.safe_load(path.read_text())):
        assert lookup(plain, key) == value, key
    assert plain["student"]["train"]["epochs"] == 7 and type(plain["student"]["train"]["epochs"]) is int
    assert plain["run_dir"] == "/tmp/x" and plain["data"]["shuffle_seed"] is None and plain["models_cache"] is None
    assert OmegaConf.to_object(written) == cfg


def test_the_written_config_keeps_interpolations_unresolved(tmp_path):
    """The typed object has each interpolation resolved, after the overrides; the written config keeps
    the interpolation itself, so a run folder saves what the user wrote."""
    path = tmp_path / "continual.yaml"
    path.write_text(yaml.safe_dump({"data": {"limit": 2, "offset": "${data.limit}"},
                                    "run_dir": "runs/${student.model}"}))
    cfg, written = load_config(ContinualConfig, path, ["data.limit=5", "student.model=tiny"])
    assert (cfg.data.limit, cfg.data.offset, cfg.run_dir) == (5, 5, "runs/tiny")
    raw = OmegaConf.to_container(written, resolve=False)
    assert (raw["data"]["limit"], raw["data"]["offset"]) == (5, "${data.limit}")
    assert raw["run_dir"] == "runs/${student.model}" and raw["student"]["model"] == "tiny"


@pytest.mark.parametrize("override,needle", [
    ("student.trian.epochs=3", "student.trian"),
    ("student.train.epochs=many", "student.train.epochs"),
    ("no_equals_sign", "not key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(ContinualConfig, CONFIGS[0].parent / "continual_demo.yaml", [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ContinualConfig, "configs/nope.yaml")


def test_the_learning_rate_defaults_per_student():
    from core.catalog import BUILTINS, DEFAULT_LEARNING_RATE
    from student.config import StudentConfig, learning_rate_of

    assert learning_rate_of(StudentConfig(model="gemma3-270m")) == BUILTINS["gemma3-270m"].learning_rate == 3e-4
    assert learning_rate_of(StudentConfig(model="smollm2-135m-instruct")) == 1e-3
    assert learning_rate_of(StudentConfig(model="org/other")) == DEFAULT_LEARNING_RATE
    cfg = StudentConfig(model="gemma3-270m")
    cfg.train.learning_rate = 5e-4  # a set value wins
    assert learning_rate_of(cfg) == 5e-4


def test_diff_keys_names_the_item_of_a_list_that_differs():
    a = {"students": [{"model": "m", "train": {"learning_rate": 1e-3}}], "seeds": [0], "rounds": 2}
    b = {"students": [{"model": "m", "train": {"learning_rate": 0.5}}], "seeds": [0, 1], "rounds": 2}
    assert diff_keys(a, b) == ["seeds", "students.0.train.learning_rate"]  # lengths differ: the whole list
