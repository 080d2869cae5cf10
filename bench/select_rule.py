"""Which reward rule picks edits that a second adaptation seed also finds better? Prints JSON.

The pre-experiment that chooses `reward.rule` and `reward.margin` for configs/rest_em_squad.yaml,
on teacher-training passages that no run trains or evaluates on (default 500-515 of the widened
teacher range; never 101-200, the held-out passages, or 281-300, the between-round slice):

1. the untrained teacher samples ``--per-template`` edits per passage under each template of
   ``--templates`` (``seal generate``, cached under --out), as ``teacher.explore`` does;
2. the reward student is adapted on every edit and on the passage alone, under each of two
   adaptation seeds, scoring only the gold answers' log-likelihoods (no answers are generated);
3. an edit's gain under a seed is its mean gold-answer log-likelihood minus that of the passage-only
   adaptation with the same seed (reward.signal=loglik, reward.baseline=reference);
4. each rule (`core.rewards.rewarded`, the code `seal train` runs) picks edits from
   seed a's gains and, separately, from seed b's. Per rule:
   - ``picked``: edits picked under each seed (mean of the two);
   - ``agreement``: |picks_a & picks_b| / |picks_a | picks_b| (Jaccard);
   - ``other_seed_gain``: the gain under the other seed of each seed's picks (a's picks scored by b,
     and b's by a), with a 95% cluster-bootstrap interval over passages;
   - ``lift``: that gain minus the other seed's mean gain of all edits of the same passage (what a
     random pick would get), with its interval: a rule whose lift is not above 0 picks noise;
   - ``templates``: the templates of the picks under seed a.
Plus, per template, its edits' mean gain (both seeds) with its interval, and the within-passage
Spearman correlation of the two seeds' gains. Rows are cached in --out (resumable).

    python bench/select_rule.py [--student smollm2-135m-instruct] [--offset 500 --limit 16]
        [--templates implications,rewrite,self-qa,atomic-facts] [--per-template 2] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import REPO, cached_adaptations, machine_record, squad_subset
from reward_reliability import v0_samples

PAGE = "docs/results.md#rest-em-on-squad"
RULES = [("binary_gain", {}), ("threshold", {"delta": 0.1}),
         *(("best_of_k", {"margin": m}) for m in (0.0, 0.05, 0.1, 0.2)),
         *(("advantage", {"margin": m}) for m in (0.0, 0.05, 0.1, 0.2))]


def gains_of(rows: dict, ctxs, edits: dict, seed: int) -> list:
    """Every edit's gain over the passage-only adaptation of the same seed (`rewards.EditGain`)."""
    from core.rewards import EditGain
    from core.stats import mean

    out = []
    for c in ctxs:
        ref = mean(rows[f"{c.context_id}/passage/s{seed}"]["loglik"])
        for i, _ in enumerate(edits[c.context_id]):
            out.append(EditGain(f"{c.context_id}/{i}", c.context_id, i,
                                mean(rows[f"{c.context_id}/{i}/s{seed}"]["loglik"]) - ref))
    return out


def judge(rule: str, kw: dict, ga: list, gb: list, template_of: dict) -> dict:
    """A rule's picks under each seed, scored by the other seed (see the module docstring)."""
    from core.rewards import RewardConfig, rewarded
    from core.stats import paired_cluster_bootstrap

    cfg = RewardConfig(rule=rule, signal="loglik", baseline="reference", **kw)
    pa, pb = set(rewarded(cfg, ga)), set(rewarded(cfg, gb))
    by = {"a": {g.edit_id: g for g in ga}, "b": {g.edit_id: g for g in gb}}
    ctx_mean = {s: {} for s in by}
    for s, gs in by.items():
        for g in gs.values():
            ctx_mean[s].setdefault(g.context_id, []).append(g.gain)
    clusters_gain, clusters_lift = {}, {}
    for picks, other in ((pa, "b"), (pb, "a")):  # each seed's picks, scored by the other seed
        for e in sorted(picks):  # a fixed cluster order: the bootstrap's draws depend on it
            g = by[other][e]
            m = sum(ctx_mean[other][g.context_id]) / len(ctx_mean[other][g.context_id])
            clusters_gain.setdefault(g.context_id, []).append((g.gain, 0.0))
            clusters_lift.setdefault(g.context_id, []).append((g.gain, m))
    union = pa | pb
    templates: dict[str, int] = {}
    for e in sorted(pa):
        templates[template_of[e]] = templates.get(template_of[e], 0) + 1
    return {"rule": rule, **kw, "picked": (len(pa) + len(pb)) / 2,
            "agreement": len(pa & pb) / len(union) if union else None,
            "other_seed_gain": per_edit(paired_cluster_bootstrap(list(clusters_gain.values()))),
            "lift": per_edit(paired_cluster_bootstrap(list(clusters_lift.values()))), "templates": templates}


def per_edit(d: dict) -> dict:
    """A bootstrap summary whose items are edits, not questions."""
    return {("edits" if k == "questions" else k): v for k, v in d.items()}


def main() -> None:
    from core.contexts import squad_role
    from core.stats import mean, paired_cluster_bootstrap, spearman

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="smollm2-135m-instruct")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--templates", default="implications,rewrite,self-qa,atomic-facts")
    ap.add_argument("--per-template", type=int, default=2, help="sampled edits per passage and template")
    ap.add_argument("--offset", type=int, default=500)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--seeds", default="0,1", help="the two adaptation seeds")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="edit length cap (rest_em_squad's)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "select_rule"))
    args = ap.parse_args()
    if squad_role(args.offset, args.offset + args.limit) != "teacher" or args.offset < 300:
        raise SystemExit("--offset/--limit must lie in the teacher-training passages from 501 on (shuffled indices "
                         ">= 500): 201-280 are the experiment's training passages and 281-300 its between-round slice")
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) != 2:
        raise SystemExit("--seeds: give exactly two adaptation seeds, e.g. 0,1")
    templates = args.templates.split(",")
    out = Path(args.out) / f"{args.teacher}_{args.offset}_{args.limit}_n{args.per_template}"
    out.mkdir(parents=True, exist_ok=True)
    ctxs = squad_subset(args.offset, args.limit)
    edits: dict[str, list[str]] = {c.context_id: [] for c in ctxs}
    template_of: dict[str, str] = {}
    for t in templates:
        got = v0_samples(args.teacher, t, args.offset, args.limit, args.per_template, args.max_new_tokens, out)
        for c in ctxs:
            for text in got[c.context_id]:
                template_of[f"{c.context_id}/{len(edits[c.context_id])}"] = t
                edits[c.context_id].append(text)
    todo = []
    for s in seeds:
        for c in ctxs:
            todo.append({"id": f"{c.context_id}/passage/s{s}", "ctx": c, "edit": "", "train_as": "passage",
                         "seed": s, "answer": False})
            todo += [{"id": f"{c.context_id}/{i}/s{s}", "ctx": c, "edit": e, "train_as": "edit", "seed": s,
                      "answer": False} for i, e in enumerate(edits[c.context_id])]
    rows = {r["id"]: r for r in cached_adaptations(args.student, todo, out / f"{args.student}.jsonl", {}, args.group)}
    ga, gb = (gains_of(rows, ctxs, edits, s) for s in seeds)
    within = [spearman([g.gain for g in ga if g.context_id == c.context_id],
                       [g.gain for g in gb if g.context_id == c.context_id]) for c in ctxs]
    per_template = {}
    for t in templates:
        cl = {}
        for g in ga + gb:
            if template_of[g.edit_id] == t:
                cl.setdefault(g.context_id, []).append((g.gain, 0.0))
        per_template[t] = per_edit(paired_cluster_bootstrap(list(cl.values())))
    report = {"name": "select_rule", "page": PAGE, "command": "python bench/select_rule.py " + " ".join(sys.argv[1:]),
              "machine": machine_record(), "student": args.student, "teacher": args.teacher, "templates": templates,
              "per_template": args.per_template, "offset": args.offset, "limit": args.limit, "seeds": seeds,
              "signal": "loglik", "baseline": "reference", "edits": len(ga),
              "questions": sum(len(c.questions) for c in ctxs),
              "within_context_spearman": mean(within), "mean_gain_by_template": per_template,
              "rules": [judge(rule, kw, ga, gb, template_of) for rule, kw in RULES]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
