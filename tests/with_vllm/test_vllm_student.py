"""Answering through vLLM with runtime LoRA adapters, against the transformers path, on the packaged
SmolLM2-135M in fp32: answers with a trained adapter (parity, and a control that the adapter is
applied), and the adapter bookkeeping over many adaptations."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vllm is not installed here: `make test-vllm` runs these in .venv-vllm")
pytestmark = pytest.mark.vllm

from pathlib import Path

# A fictional passage (nothing the model knows) and questions on it, plus general ones whose answers
# the adapter should leave alone.
PASSAGE = ("The Vell lighthouse stands on Carrow Point, at the mouth of the river Oss. It was lit in 1871 and kept "
           "for forty years by Ada Morrow, who logged every ship that passed. Its lamp burned whale oil until 1903, "
           "when the keepers changed to paraffin. The tower is painted in red and white bands and is 31 metres tall. "
           "In 1920 the harbour board of Oss replaced the keepers with a clockwork lamp built by the firm of Hallam "
           "and Sons.")
QUESTIONS = ["Where does the Vell lighthouse stand?", "When was the Vell lighthouse lit?",
             "Who kept the Vell lighthouse?", "What did the lamp of the Vell lighthouse burn until 1903?",
             "What fuel did the keepers change to in 1903?", "How tall is the Vell lighthouse?",
             "What colours is the Vell lighthouse painted?", "Who replaced the keepers in 1920?",
             "Which firm built the clockwork lamp?", "At the mouth of which river is Carrow Point?",
             "What did Ada Morrow log?", "How long did Ada Morrow keep the lighthouse?",
             "What is the capital of France?", "Who wrote the play Hamlet?", "In what year did the First World War end?",
             "What is the largest planet in the solar system?", "What is the chemical symbol for gold?",
             "Which ocean lies between Africa and Australia?", "Who painted the Mona Lisa?",
             "What is the boiling point of water in degrees Celsius?"]


def test_answers_with_a_trained_adapter_match_the_transformers_path(hf_student, vllm_student, tmp_path, figures):
    engine = vllm_student.answerer
    prompts = [hf_student.prompt(q) for q in QUESTIONS]
    assert prompts == [vllm_student.prompt(q) for q in QUESTIONS]
    hf_base = hf_student.answer(QUESTIONS)
    hf_student.train([PASSAGE], seed=0)
    try:
        hf_adapted = hf_student.answer(QUESTIONS)
        hf_student.export_peft(0, tmp_path / "adapter")
    finally:
        hf_student.discard()
    v_base = engine.answer(prompts)
    v_adapted = engine.answer(prompts, str(tmp_path / "adapter"))
    same = sum(a == b for a, b in zip(v_adapted, hf_adapted))
    same_base = sum(a == b for a, b in zip(v_base, hf_base))
    # The control: where the adapter changes transformers' answer, it changes vLLM's too.
    changed = [i for i, (a, b) in enumerate(zip(hf_base, hf_adapted)) if a != b]
    followed = [i for i in changed if v_base[i] != v_adapted[i]]
    figures["lora_answer_parity"] = {
        "questions": len(QUESTIONS), "identical_with_adapter": same, "exact_match_with_adapter": same / len(QUESTIONS),
        "identical_without_adapter": same_base, "changed_by_adapter_transformers": len(changed),
        "changed_by_adapter_vllm_too": len(followed),
        "pairs": [{"q": q, "transformers": a, "vllm": b} for q, a, b in zip(QUESTIONS, hf_adapted, v_adapted) if a != b]}
    assert same >= 0.9 * len(QUESTIONS) and same_base >= 0.9 * len(QUESTIONS), figures["lora_answer_parity"]
    assert len(changed) >= 3, "the adapter should change several answers; the control says nothing otherwise"
    assert len(followed) >= 0.9 * len(changed), figures["lora_answer_parity"]


def test_fifty_adaptations_never_reuse_an_id_or_leak_a_folder(vllm_student, figures):
    """Train, answer through vLLM, discard, 50 times over, as a worker does. Ids only grow, vLLM holds
    at most max_cpu_loras adapters, and at most keep_adapters folders exist."""
    engine, v = vllm_student.answerer, vllm_student.cfg.answer.vllm
    seen_ids, peaks = [], {"folders": 0, "engine_loras": 0}
    facts = [f"The Vell lighthouse was painted by Hal Korrin number {i}." for i in range(50)]
    for i, fact in enumerate(facts):
        with vllm_student.adapted([fact], seed=i):
            got = vllm_student.answer(["Who painted the Vell lighthouse?"], max_new_tokens=8)
        assert len(got) == 1
        (folder, lora_id), = engine.book.live()[-1:]
        seen_ids.append(lora_id)
        peaks["folders"] = max(peaks["folders"], sum(1 for _ in engine.book.root.iterdir()))
        peaks["engine_loras"] = max(peaks["engine_loras"], len(engine.llm.llm_engine.list_loras()))
    assert seen_ids == sorted(set(seen_ids)) and len(seen_ids) == 50
    assert peaks["folders"] <= v.keep_adapters and peaks["engine_loras"] <= v.cpu_loras, peaks
    figures["adapter_bookkeeping"] = {"adaptations": 50, "ids": [seen_ids[0], seen_ids[-1]], **peaks,
                                      "keep_adapters": v.keep_adapters, "max_cpu_loras": v.cpu_loras}


def test_an_adapter_overwritten_in_place_is_served_fresh(hf_student, vllm_student, tmp_path):
    """New weights saved into a folder that vLLM has already loaded: the next answer uses the new
    weights (a fresh id), the same as a fresh folder holding them."""
    engine = vllm_student.answerer
    prompts = [hf_student.prompt(q) for q in QUESTIONS[:6]]
    folder, fresh = tmp_path / "inplace", tmp_path / "fresh"
    answers = []
    for k, text in enumerate([PASSAGE, "The Vell lighthouse is a blue tower on Mount Arran, lit in 1950 by Tom Reed."]):
        hf_student.train([text], seed=k)
        try:
            hf_student.export_peft(0, folder)  # same folder both times
            if k == 1:
                hf_student.export_peft(0, fresh)
        finally:
            hf_student.discard()
        answers.append(engine.answer(prompts, str(folder)))
    assert answers[0] != answers[1]
    assert answers[1] == engine.answer(prompts, str(fresh))
    assert Path(folder).exists()  # a folder the book did not make is never deleted
