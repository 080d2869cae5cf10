"""Can a reward teach? Does it agree with itself across adaptation seeds, and is it more than a token count? Prints JSON.

Before any teacher training, on teacher-training passages only (SQUAD_SPLIT['teacher'], shuffled
indices 200-299 and 500 on; default the first 16): the untrained teacher
samples k edits per passage (``seal generate``, cached under --out); the student is adapted on
every edit, and on the passage alone (the ``reference`` baseline), under each of two adaptation
seeds. For each reward design {score (token F1), loglik (gold-answer log-likelihood)} x {base
(unadapted), reference (the passage-only adaptation of the same seed)}:

- ``within_context_spearman``: per passage, the Spearman correlation between the two seeds' gains
  of its k edits (what ``best_of_k`` ranks on), averaged over the passages where both seeds'
  gains are not all tied (``contexts_ranked``); ``pooled_spearman`` over all edits;
- ``spearman_with_length`` / ``spearman_with_steps``: of the gain (mean of the two seeds) with the
  edit's length in characters and with its training steps;
- ``rewarded_binary_gain``: the fraction of edits with gain > 0 (mean over seeds);
- ``contexts_not_all_tied``: the fraction of passages whose k gains are not all equal (mean over seeds).

Within one passage and seed, both baselines shift every edit's gain by the same amount, so the
within-passage ranking is the same under base and reference; the pooled figures and the rewarded
fraction are not. Rows are cached in --out/<student>.jsonl (resumable).

    python bench/reward_reliability.py [--student gemma3-270m] [--teacher smollm2-135m-instruct]
        [--template implications] [--offset 200 --limit 16] [--k 5] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from _common import REPO, SQUAD, cached_adaptations, squad_subset


def v0_samples(teacher: str, template: str, offset: int, limit: int, k: int, max_new_tokens: int,
               out: Path) -> dict[str, list[str]]:
    """context_id -> the untrained teacher's k sampled edits, written once by `seal generate`."""
    from core.config import DataConfig
    from orchestration.generate import GenerateConfig, run_generate
    from teacher.config import TeacherConfig

    path = out / f"v0_{teacher}_{template}_{offset}_{limit}_k{k}.json"
    if not path.exists():
        t = TeacherConfig(model=teacher, prompt=template)
        t.generation.max_new_tokens = max_new_tokens
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
            run_generate(GenerateConfig(teacher=t, data=DataConfig(source=str(SQUAD), shuffle_seed=42, offset=offset,
                                                                  limit=limit),
                                        out=str(path), sample=True, edits_per_context=k))
    return {r["context_id"]: r["completions"] for r in json.loads(path.read_text())["records"]}


def design(rows: list[dict], ctxs, k: int, seeds: list[int], signal: str, baseline: str) -> dict:
    """The reliability figures of one reward design."""
    from core.stats import mean, spearman

    metric = "f1" if signal == "score" else "loglik"
    by = {r["id"]: r for r in rows}

    def gain(cid: str, i: int, seed: int) -> float:
        r = by[f"{cid}/{i}/s{seed}"]
        base = by[f"{cid}/passage/s{seed}"][metric] if baseline == "reference" else r[f"base_{metric}"]
        return mean(r[metric]) - mean(base)

    g = {(c.context_id, i, s): gain(c.context_id, i, s) for c in ctxs for i in range(k) for s in seeds}
    a, b = seeds[:2]
    within = [spearman([g[(c.context_id, i, a)] for i in range(k)], [g[(c.context_id, i, b)] for i in range(k)])
              for c in ctxs]
    keys = [(c.context_id, i) for c in ctxs for i in range(k)]
    avg = [mean([g[(cid, i, s)] for s in seeds]) for cid, i in keys]
    length = [by[f"{cid}/{i}/s{a}"]["edit_chars"] for cid, i in keys]
    steps = [by[f"{cid}/{i}/s{a}"]["steps"] for cid, i in keys]
    tied = [[len({round(g[(c.context_id, i, s)], 9) for i in range(k)}) > 1 for c in ctxs] for s in seeds]
    return {"within_context_spearman": mean(within), "contexts_ranked": sum(w is not None for w in within),
            "pooled_spearman": spearman([g[(cid, i, a)] for cid, i in keys], [g[(cid, i, b)] for cid, i in keys]),
            "spearman_with_length": spearman(avg, length), "spearman_with_steps": spearman(avg, steps),
            "rewarded_binary_gain": mean([mean([float(g[(cid, i, s)] > 0) for cid, i in keys]) for s in seeds]),
            "contexts_not_all_tied": mean([mean([float(t) for t in ts]) for ts in tied]),
            "mean_gain": mean(avg)}


def main() -> None:
    from core.contexts import SQUAD_SPLIT, squad_role
    from core.models import machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="gemma3-270m")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--template", default="implications")
    ap.add_argument("--offset", type=int, default=SQUAD_SPLIT["teacher"][0][0])
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--k", type=int, default=5, help="sampled edits per passage")
    ap.add_argument("--seeds", default="0,1", help="adaptation seeds (the first two are the pair whose rewards are correlated)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="edit length cap (rest_em_squad's)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "reward_reliability"))
    args = ap.parse_args()
    if squad_role(args.offset, args.offset + args.limit) != "teacher":
        raise SystemExit(f"--offset/--limit must stay in one range of the teacher-training passages "
                         f"{SQUAD_SPLIT['teacher']} (shuffled indices, half-open)")
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        raise SystemExit("--seeds: give at least two adaptation seeds, e.g. 0,1")
    out = Path(args.out) / f"{args.teacher}_{args.template}_{args.offset}_{args.limit}_k{args.k}"
    out.mkdir(parents=True, exist_ok=True)
    ctxs = squad_subset(args.offset, args.limit)
    edits = v0_samples(args.teacher, args.template, args.offset, args.limit, args.k, args.max_new_tokens, out)
    todo = []
    for s in seeds:
        for c in ctxs:
            todo.append({"id": f"{c.context_id}/passage/s{s}", "ctx": c, "edit": "", "train_as": "passage",
                         "seed": s})
            todo += [{"id": f"{c.context_id}/{i}/s{s}", "ctx": c, "edit": edits[c.context_id][i], "train_as": "edit",
                      "seed": s} for i in range(args.k)]
    rows = cached_adaptations(args.student, todo, out / f"{args.student}.jsonl", {}, args.group)
    report = {"machine": machine(), "student": args.student, "teacher": args.teacher, "template": args.template,
              "offset": args.offset, "limit": args.limit, "k": args.k, "seeds": seeds,
              "edits": len(ctxs) * args.k, "questions": sum(len(c.questions) for c in ctxs),
              "designs": {f"{sig}/{b}": design(rows, ctxs, args.k, seeds, sig, b)
                          for sig in ("score", "loglik") for b in ("base", "reference")}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
