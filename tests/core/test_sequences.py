from core.domains.sequences import edit_to_sequences, split_items


def test_lines_and_list_markers():
    edit = "1. First fact.\n2) Second fact.\n\n- Third fact.\n* Fourth fact.\nPlain line."
    assert split_items(edit) == ["First fact.", "Second fact.", "Third fact.", "Fourth fact.", "Plain line."]


def test_question_answer_pairs_kept_together():
    edit = "Question: Who built it?\nAnswer: Ada.\nQ: When?\nA: 1874\nA stray line."
    assert split_items(edit) == ["Question: Who built it?\nAnswer: Ada.", "Q: When?\nA: 1874", "A stray line."]


def test_answer_without_question_is_its_own_item():
    assert split_items("Answer: 5\nQuestion: x?") == ["Answer: 5", "Question: x?"]


def test_title_prefix_and_passage_appended():
    out = edit_to_sequences("Title", "The passage.", "a\n\nb")
    assert out.sequences == ("Title\na", "Title\nb", "Title\nThe passage.")
    assert (out.n_items, out.n_dropped) == (2, 0)


def test_passage_copies_and_empty_edit():
    assert edit_to_sequences("T", "P", "x", passage_copies=0).sequences == ("T\nx",)
    assert edit_to_sequences("T", "P", "x", passage_copies=3).sequences == ("T\nx", "T\nP", "T\nP", "T\nP")
    # an edit with no items trains on the passage once, whatever the copies
    assert edit_to_sequences("T", "P", "   \n\n", passage_copies=0).sequences == ("T\nP",)
    assert edit_to_sequences("T", "P", "", passage_copies=3).sequences == ("T\nP",)


def test_cap_is_counted_and_keeps_passage():
    out = edit_to_sequences("T", "P", "\n".join(f"item {i}" for i in range(10)), max_sequences=4)
    assert out.sequences == ("T\nitem 0", "T\nitem 1", "T\nitem 2", "T\nP")
    assert (out.n_items, out.n_dropped) == (10, 7)
