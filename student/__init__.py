"""Student side: LoRA adaptation on a domain's training data, batched answering, grading, and the
worker that serves adapt jobs. (Turning an edit into training data is the domain's job, in
`core.domains`.)

- `config`: the ``student:`` config dataclasses, every field documented.
- `model`: `Student`, one loaded base model that trains and answers through K adapter slots.
- `prompting`: how the student is prompted (question, raw prompt, answer-ending tokens); pure functions.
- `lora_train`: the fused loop that trains K LoRA adapters together (`LoraTrainer`), and its loss.
- `lora_batch`: K LoRA adapters hooked onto one frozen model (`LoraBank`) and their optimizer (`SlotAdamW`).
- `answerer`: the `Answerer` interface and its in-process transformers implementation.
- `vllm_answer`: the vLLM implementation: runtime LoRA adapters and their ids (`VLLMAnswerer`, `AdapterBook`).
- `loglik`: the gold answer's log-likelihood under an adapter, a dense read-out of what it taught.
- `graders`: pure graders, ``(answer, gold) -> float``.
- `judge`: the LLM-judge grader (an OpenAI-compatible endpoint), with a verdict cache.
- `scoring`: the adapt-and-score step: train on an edit, answer without the passage, grade.
- `worker`: the queue worker that serves adapt jobs for one student model.
"""
