"""The experiment that can show a teacher learning: ReST^EM rounds, then v0 and v_last on the held-out passages. Prints JSON.

1. ``seal train configs/rest_em_squad.yaml`` in RUN/train: training passages from the
   teacher-training range (shuffled indices 200-299), each version scored after its round on a
   20-passage slice of the same range that no round trains on;
2. ``seal evaluate`` of teacher v0 (RUN/heldout-v0-STUDENT, with base and passage) and of the last
   version (RUN/heldout-vN-STUDENT, teacher only) on the standard subset's passages 101-200, one
   student at a time (the first listed, the reward student, first): the only runs that touch
   those passages;
3. the JSON: held-out F1 and gold-answer log-likelihood per version and student, the paired
   differences v_last - v0, v_last - passage and v0 - passage (cluster bootstrap over passages),
   and per round the rewarded fraction, the reward's mean and spread (rewards.jsonl) and the SFT
   losses.

Every stage resumes: rerun the same command after an interruption. Wall times are summed from the
runs' own records where they have them.

    python bench/rest_em.py [--run-dir bench/out/rest_em] [--students smollm2-135m-instruct,gemma3-270m] [key=value ...]
    python bench/rest_em.py --run-dir /tmp/smoke --heldout-limit 2 rounds=1 contexts_per_round=1 \
        edits_per_context=2 heldout.limit=1 teacher.generation.max_new_tokens=32    # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from _common import REPO


def heldout_eval(cfg, teacher_model: str, students: list[str], run: Path, conditions: list[str], limit: int):
    """`seal evaluate` of one teacher version on the first ``limit`` held-out passages (101-200)."""
    import dataclasses

    from omegaconf import OmegaConf

    from orchestration.core.config import DataConfig
    from orchestration.core.contexts import SQUAD_SPLIT
    from orchestration.driver.evaluate import EvaluateConfig, run_evaluate
    from student.config import StudentConfig

    lo, hi = SQUAD_SPLIT["heldout"]
    data = {"source": cfg.data.source, "shuffle_seed": cfg.data.shuffle_seed, "offset": lo, "limit": min(limit, hi - lo)}
    by_model = {s.model: s for s in cfg.students}
    ev = EvaluateConfig(teacher=dataclasses.replace(cfg.teacher, model=teacher_model),
                        students=[by_model.get(m, StudentConfig(model=m)) for m in students],
                        data=DataConfig(**data), conditions=conditions, workers=cfg.workers, run_dir=str(run),
                        models_cache=cfg.models_cache)
    resolved = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), OmegaConf.structured(ev))
    return run_evaluate(ev, resolved)


def per_student(run: Path, student: str, condition: str, metric: str) -> dict:
    from orchestration.core.records import StudentResult, question_values
    from orchestration.core.runs import read_jsonl
    from orchestration.driver.keys import JobKey

    return question_values([r for r in map(StudentResult.from_json, read_jsonl(run / "results.jsonl"))
                            if r.condition == condition and JobKey.parse(r.key).model == student], metric)


def summary(values: dict) -> dict:
    from orchestration.core.stats import bootstrap_ci, mean

    flat = [x for v in values.values() for x in v if x is not None]
    lo, hi = bootstrap_ci(flat)
    return {"mean": mean(flat), "question_ci": [lo, hi],
            "contexts": len(values), "questions": len(flat)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=str(REPO / "bench" / "out" / "rest_em"))
    p.add_argument("--students", default="smollm2-135m-instruct,gemma3-270m",
                   help="students scored on the held-out passages at v0 and v_last")
    p.add_argument("--heldout-limit", type=int, default=100, help="held-out passages from 101 (fewer: a smoke test)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. rounds=1")
    args = p.parse_args()

    from orchestration.core.config import load_config
    from orchestration.core.runs import read_jsonl
    from orchestration.core.stats import mean, paired_by_context, spread
    from orchestration.driver.rounds import teacher_at
    from orchestration.driver.train import TrainConfig, run_train

    root = Path(args.run_dir)
    cfg, resolved = load_config(TrainConfig, REPO / "configs" / "rest_em_squad.yaml",
                                [f"run_dir={root / 'train'}", *args.overrides])
    os.chdir(REPO)  # the config's data paths are relative to the repository root
    students = args.students.split(",")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the runs' tables go to stderr, the JSON to stdout
        rows = run_train(cfg, resolved)
        version, last = teacher_at(cfg, root / "train", cfg.rounds + 1)
        runs = {s: {0: root / f"heldout-v0-{s}", version: root / f"heldout-v{version}-{s}"} for s in students}
        for s in students:  # one student at a time, so the first one's result is complete first
            heldout_eval(cfg, cfg.teacher.model, [s], runs[s][0], ["base", "passage", "teacher"], args.heldout_limit)
            if version:
                heldout_eval(cfg, last, [s], runs[s][version], ["teacher"], args.heldout_limit)
    rewards = [json.loads(x) for x in read_jsonl(root / "train" / "rewards.jsonl")]
    finished = {e["edit_id"]: e["finished"] for e in map(json.loads, read_jsonl(root / "train" / "edits.jsonl"))}
    out = {"command": "python bench/rest_em.py " + " ".join(args.overrides),
           "teacher": cfg.teacher.model, "reward_student": [s.model for s in cfg.students],
           "reward": {"rule": cfg.reward.rule, "baseline": cfg.reward.baseline, "signal": cfg.reward.signal},
           "rounds": [], "heldout": {}, "runs_on_heldout_101_200": [str(r) for by in runs.values() for r in by.values()],
           "v_last": version}
    for r in rows:
        gains = [x["gain"] for x in rewards if x["round"] == r["round"] and x["gain"] is not None]
        rw = r.get("rewards") or {}
        out["rounds"].append({"round": r["round"], "teacher_version": r["teacher_version"],
                              "intermediate_heldout": r["heldout"], "scored": rw.get("scored"),
                              "rewarded": rw.get("rewarded"),
                              "rewarded_fraction": rw["rewarded"] / rw["scored"] if rw.get("scored") else None,
                              "rewarded_cut_at_max_new_tokens": sum(not finished[x["edit_id"]] for x in rewards
                                                                    if x["round"] == r["round"] and x["rewarded"]),
                              "drop_unfinished": cfg.teacher.sft.drop_unfinished,
                              "reward_mean": mean(gains),
                              "reward_spread": spread(gains) if gains else None,
                              "sft": r.get("sft"), "wall_s": r["wall_s"]})
    for s in students:
        got = {}
        for metric in ("score", "loglik"):
            at = runs[s]
            v0 = per_student(at[0], s, "teacher", metric)
            vl = per_student(at[version], s, "teacher", metric)
            passage = per_student(at[0], s, "passage", metric)
            got[metric] = {"base": summary(per_student(at[0], s, "base", metric)), "passage": summary(passage),
                           "v0": summary(v0), f"v{version}": summary(vl),
                           f"v{version}-v0": paired_by_context(vl, v0), f"v{version}-passage": paired_by_context(vl, passage),
                           "v0-passage": paired_by_context(v0, passage)}
        out["heldout"][s] = got
    out["wall_s_train_rounds"] = round(sum(r["wall_s"] for r in rows), 1)
    out["wall_s_this_call"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
