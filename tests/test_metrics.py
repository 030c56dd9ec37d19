import pytest

from ctxaware.metrics import (
    containment,
    containment_raw_regex,
    drop_original,
    first_sentence,
    keyword_recall,
    normalize_answer,
    parse_rating,
)

KEYWORDS = ["eat", "sandwich", "sit", "dolores", "park", "sunny", "day"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("The Eiffel Tower", "eiffel tower"),
        ("  an   apple a\tday\n", "apple day"),
        ("Theatre; then an answer.", "theatre then answer"),  # articles only as whole words
        ("U.S. Army's", "us armys"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_containment_article_and_case_differences():
    assert containment("It is the Eiffel tower.", ["the Eiffel Tower"]) == 1.0
    assert containment("It is the Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert containment("It is the Louvre.", ["Eiffel Tower"]) == 0.0


def test_containment_max_over_golds():
    assert containment("Paris, France.", ["London", "paris"]) == 1.0
    assert containment("Paris, France.", ["London", "Berlin"]) == 0.0


def test_containment_drop_numbers():
    assert containment("There were 3 touchdowns.", ["3"]) == 1.0
    # Plain substring containment (as in the paper): the gold "3" is found inside "13" after normalization.
    assert containment("There were 13 touchdowns.", ["3"]) == 1.0
    assert containment("There were 3 touchdowns.", ["13"]) == 0.0


def test_containment_empty_golds():
    assert containment("anything", []) == 0.0
    assert containment("anything", ["", "  "]) == 0.0
    assert containment("anything", ["The"]) == 0.0  # normalizes to empty


def test_containment_raw_regex_is_case_insensitive_and_literal():
    """As the original's lm-eval tasks: re.search(re.escape(gold), response, re.IGNORECASE) on raw text."""
    assert containment_raw_regex("It is the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert containment_raw_regex("It is the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert containment_raw_regex("IT IS THE EIFFEL TOWER", ["eiffel tower"]) == 1.0
    assert containment_raw_regex("It is the Eiffel-Tower.", ["Eiffel Tower"]) == 0.0  # raw: punctuation counts
    assert containment_raw_regex("It costs $3.50 (approx).", ["x", "$3.50 (approx)"]) == 1.0
    assert containment_raw_regex("It costs 3050.", ["3.50"]) == 0.0  # "." is escaped, not a wildcard
    assert containment_raw_regex("anything", [""]) == 0.0


def test_drop_original_matches_only_the_first_answers_spans():
    first = ["Chaz Schilens", "Jason Witten"]  # a two-span answer: either span counts
    assert drop_original("jason witten scored it.", first) == 1.0
    assert drop_original("Somebody else.", first) == 0.0
    assert drop_original("There were 13 touchdowns.", ["3"]) == 1.0  # numbers as substrings, as the original
    assert drop_original("anything", [""]) == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is 3.5 meters long. More.", "It is 3.5 meters long."),
        ("  Who knows? Nobody.", "Who knows?"),
        ("Wow! That is big.", "Wow!"),
        ("no terminator here  ", "no terminator here"),
        ("Ends at the end.", "Ends at the end."),
        ("Line one.\nLine two.", "Line one."),
        ("", ""),
    ],
)
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_keyword_recall_needle_answer_all_methods():
    needle = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    for method in ("exact", "prefix", "membership"):
        assert keyword_recall(needle, KEYWORDS, method) == 1.0


def test_keyword_recall_inflections():
    response = "Eat sandwiches, then sit in Dolores Park on sunny days."
    # exact: eat sit dolores park sunny = 5 (sandwiches, days are other words)
    assert keyword_recall(response, KEYWORDS, "exact") == pytest.approx(5 / 7)
    # prefix: "sandwiches" starts with sandwich and "days" with day -> 7
    assert keyword_recall(response, KEYWORDS, "prefix") == 1.0
    assert keyword_recall(response, KEYWORDS, "membership") == 1.0


def test_keyword_recall_substrings_inside_words():
    response = "Visit the park today."
    # exact: park = 1; prefix: park = 1 (visit/today don't start with sit/day); membership: sit, park, day = 3
    assert keyword_recall(response, KEYWORDS, "exact") == pytest.approx(1 / 7)
    assert keyword_recall(response, KEYWORDS, "prefix") == pytest.approx(1 / 7)
    assert keyword_recall(response, KEYWORDS, "membership") == pytest.approx(3 / 7)


def test_keyword_recall_punctuation_splits_words():
    # exact: "dolores-park" becomes "dolores park" -> dolores, park = 2
    assert keyword_recall("DOLORES-PARK!", KEYWORDS, "exact") == pytest.approx(2 / 7)
    assert keyword_recall("", KEYWORDS, "exact") == 0.0


def test_keyword_recall_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        keyword_recall("x", KEYWORDS, "fuzzy")
    with pytest.raises(ValueError, match="^keyword_recall needs at least one keyword$"):
        keyword_recall("x", [])
    assert keyword_recall("Visit the park today.", KEYWORDS) == pytest.approx(1 / 7)  # exact by default


@pytest.mark.parametrize(
    ("judgment", "expected"),
    [
        ("Good answer. Rating: [[7]]", 7.0),
        ("[[8.5]]", 8.5),
        ("Rating: [6]", 6.0),
        ("see [1] but Rating: [[9]]", 9.0),  # [[n]] is preferred over the [n] fallback
        ("no rating", None),
        ("Rating: [[11]]", None),
        ("Rating: [[0]]", None),
        ("Rating: [[10]]", 10.0),
        ("Rating: [[1]]", 1.0),
    ],
)
def test_parse_rating(judgment, expected):
    assert parse_rating(judgment) == expected
