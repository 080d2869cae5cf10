"""What skipping the answers saves a training-round adaptation rewarded on log-likelihood. Prints JSON.

A training round whose reward signal is ``loglik`` needs only the gold answers' log-likelihoods,
so its jobs generate no answers (`core.records.StudentJob.answer`). Per student, the same K
adaptations (restatement edits of bench/restate_edits.py on recipe-tuning passages 301 on, the
student's default recipe and seed) run twice in one process, alternating, each repeated
``--repeats`` times: with answering (what every job did before) and without. Reported per
adaptation: the median wall seconds of the whole group / K, split into training, answering and
log-likelihood, the saving, and the largest difference between the two ways' log-likelihoods
(they must agree: the same adapters score the same gold answers).

    python bench/answer_cost.py [--students smollm2-135m-instruct,gemma3-270m] [--k 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from _common import machine_record, restatement, squad_subset


def measure(model: str, k: int, repeats: int, offset: int) -> dict:
    from core.domains import knowledge
    from core.jobs import StudentJob
    from student.config import StudentConfig
    from student.model import Student
    from student.scoring import Baselines, adapt_and_score_many, make_grader

    cfg = StudentConfig(model=model)
    st = Student(cfg)
    ctxs = squad_subset(offset, k)
    base = Baselines(st, make_grader(cfg.grader), knowledge)
    base.prefetch(ctxs)  # the unadapted baselines are cached per worker, not per job: outside the clock
    jobs = {answer: [(f"{c.context_id}/{answer}", StudentJob("knowledge", "edit", (c,), (restatement(c),), answer=answer))
                     for c in ctxs] for answer in (True, False)}
    adapt_and_score_many(st, base, jobs[True][:1])  # warm-up, as a long-running worker has done
    walls = {True: [], False: []}
    parts = {True: [], False: []}
    logliks = {}
    for _ in range(repeats):
        for answer in (True, False):
            t0 = time.perf_counter()
            results = adapt_and_score_many(st, base, jobs[answer])
            walls[answer].append((time.perf_counter() - t0) / k)
            bad = [r for r in results if isinstance(r, Exception)]
            if bad:
                raise bad[0]
            parts[answer].append({p: results[0].timings[p] / k for p in ("answer_s", "loglik_s")}
                                 | {"train_s": max(r.timings["train_s"] for r in results) / k})
            logliks[answer] = [v.loglik for r in results for v in r.verdicts]
    with_, without = statistics.median(walls[True]), statistics.median(walls[False])
    part = {a: {p: round(statistics.median(x[p] for x in parts[a]), 3) for p in parts[a][0]} for a in parts}
    return {"student": model, "k": k, "repeats": repeats, "questions": sum(len(c.questions) for c in ctxs),
            "dtype_setting": st.cfg.train.dtype,
            "s_per_adaptation_with_answers": round(with_, 3), "s_per_adaptation_loglik_only": round(without, 3),
            "saving": round(1 - without / with_, 3), "parts_with_answers": part[True],
            "parts_loglik_only": part[False],
            "max_loglik_difference": max(abs(a - b) for a, b in zip(logliks[True], logliks[False]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--k", type=int, default=8, help="adaptations per group (workers.group_size)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--offset", type=int, default=300, help="first passage (the recipe-tuning range)")
    args = ap.parse_args()
    print(json.dumps({"name": "answer_cost", "page": "docs/results.md#rest-em-on-squad",
                      "command": "python bench/answer_cost.py " + " ".join(sys.argv[1:]), "machine": machine_record(),
                      "results": [measure(m, args.k, args.repeats, args.offset) for m in args.students.split(",")]},
                     indent=1))


if __name__ == "__main__":
    main()
