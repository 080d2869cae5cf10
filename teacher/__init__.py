"""Teacher side: the model that writes self-edits, and the ReST^EM update that trains it on the
rewarded ones.

- `teacher.config`: the ``teacher:`` config node (model, prompt, generation and SFT settings).
- `teacher.prompts`: self-edit prompt templates, rendering, and the one way a prompt becomes ids.
- `teacher.writer`: the edit writer (the edits a command wants, written in fixed seeded chunks) and
  the checks a teacher's prompts pass before any work.
- `teacher.backend`: the generation backend interface (`Backend`, `Generation`, seeds, request checks).
- `teacher.transformers_backend`: the transformers backend (batched CPU sampling) and `make_backend`.
- `teacher.vllm_backend`: the vLLM backend (a ``vllm.LLM`` engine, on a GPU or vLLM's CPU build).
- `teacher.rest_em`: the ReST^EM update: LoRA SFT with TRL on rewarded (prompt, edit) pairs.
- `teacher.versions`: teacher versions on disk: loading, listing, retention.
"""
