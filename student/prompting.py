"""How the student is prompted: pure functions of its tokenizer, whether it is a chat model, and the
answer settings. Training (`student.lora_train`) and answering (`student.answerer`,
`student.vllm_answer`) render prompts through these, so a question is asked the same way wherever it
is asked."""

from __future__ import annotations

from student.config import AnswerSettings


def question_prompt(tok, chat: bool, settings: AnswerSettings, question: str) -> str:
    """A question as the student is asked it: the instruction, the few-shot examples, the question.
    Chat models get the examples as earlier turns of their chat template; plain models get
    ``Question: ...\\nAnswer:`` lines."""
    shots = [(e.question, e.answer) for e in settings.examples]
    if chat:
        msgs = []
        for q, a in shots:
            msgs += [{"role": "user", "content": f"{settings.instruction}\nQuestion: {q}"},
                     {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": f"{settings.instruction}\nQuestion: {question}"})
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    lines = [settings.instruction] + [f"Question: {q}\nAnswer: {a}" for q, a in shots]
    return "\n".join(lines + [f"Question: {question}\nAnswer:"])


def raw_prompt(tok, chat: bool, text: str) -> str:
    """A domain's whole prompt, as the model is prompted: one user turn for chat models."""
    if chat:
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
    return text


def stop_ids(tok, eos: list[int]) -> list[int]:
    """Token ids that end an answer: ``eos``, and every token whose text holds a newline.

    Passed as ``eos_token_id``, they stop each row at its first newline for free. transformers'
    ``stop_strings`` does the same by matching strings each step, which doubled the answer time
    of gemma3 (262k-token vocabulary). A newline is one character, so it always lies inside
    one token and no stop is missed. Decodes the whole vocabulary (1.4 s for gemma3's): cache it.
    """
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    newline = [i for i, t in enumerate(texts) if "\n" in t]
    return sorted({*eos, *newline})
