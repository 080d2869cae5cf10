import pytest

from student.graders import contains, exact_match, normalize, token_f1

CASES = [
    # answer, gold, exact, contains, f1
    ("Paris", "Paris", 1.0, 1.0, 1.0),
    ("the Paris.", "Paris", 1.0, 1.0, 1.0),
    ("It is Paris, France", "Paris", 0.0, 1.0, 0.4),
    ("1200", "12", 0.0, 0.0, 0.0),
    ("in 1874", "1874", 0.0, 1.0, 2 / 3),
    ("Tobias Halvering", "Halvering Tobias", 0.0, 0.0, 1.0),
    ("", "Paris", 0.0, 0.0, 0.0),
    ("Old Cobalt telescope", "Old Cobalt", 0.0, 1.0, 0.8),
    ("London", "Paris", 0.0, 0.0, 0.0),
    ("An Apple", "apple", 1.0, 1.0, 1.0),
]


@pytest.mark.parametrize("answer,gold,em,cont,f1", CASES)
def test_graders_table(answer, gold, em, cont, f1):
    assert exact_match(answer, gold) == em
    assert contains(answer, gold) == cont
    assert token_f1(answer, gold) == pytest.approx(f1)


@pytest.mark.parametrize("text,norm", [("The  Cat!", "cat"), ("A, b; c.", "b c"), ("anthem", "anthem")])
def test_normalize(text, norm):
    assert normalize(text) == norm
