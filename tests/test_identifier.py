import pytest
from transformers import T5Tokenizer

from cascade_booth.errors import InputError
from cascade_booth.identifier import (
    candidate_identifiers,
    check_identifier,
    choose_identifier,
    fill_identifier,
    identifier_pieces,
    identifier_warnings,
    is_single_token,
)
from cascade_booth.text import MAX_LENGTH, check_training_text


@pytest.fixture(scope="module")
def tokenizer(tiny_paths):
    return T5Tokenizer.from_pretrained(tiny_paths["base"] / "tokenizer")


def test_candidates_follow_the_papers_rule(tokenizer):
    cands = candidate_identifiers(tokenizer, 5000, 10000, 3)
    assert len(cands) > 20
    assert all(1 <= len(c) <= 3 and c.isalpha() and c.islower() for c in cands)
    ranks = [tokenizer.convert_tokens_to_ids("▁" + c) for c in cands]
    # 5000-10000 of T5's 32100 pieces, scaled to the tiny vocabulary (2000 pieces)
    assert min(ranks) >= int(5000 * 2000 / 32100) and max(ranks) < int(10000 * 2000 / 32100)


def test_choice_is_deterministic_per_seed_and_round_trips(tokenizer):
    picks = [choose_identifier(tokenizer, "clock", seed) for seed in range(6)]
    assert picks == [choose_identifier(tokenizer, "clock", seed) for seed in range(6)]
    assert len(set(picks)) > 1
    for token in picks:
        assert is_single_token(tokenizer, token, "clock")
        ids = tokenizer(f"a {token} clock", add_special_tokens=False).input_ids
        assert ids.count(tokenizer.convert_tokens_to_ids("▁" + token)) == 1


def test_max_chars_and_range_are_honoured(tokenizer):
    assert all(len(c) <= 2 for c in candidate_identifiers(tokenizer, 5000, 10000, 2))
    with pytest.raises(InputError, match="no rare single-token identifier"):
        choose_identifier(tokenizer, "clock", 0, rank_min=0, rank_max=1)


def test_user_identifier_is_checked(tokenizer):
    good = choose_identifier(tokenizer, "dog", 3)
    assert check_identifier(tokenizer, good, "dog") == good
    for bad, why in (("two words", "white space"), ("SKS", "not lower-case: .* would read 'sks'"),
                     ("dog", "a word of the class noun"), ("a", "the article"), ("zq\u2603", "cannot spell")):
        with pytest.raises(InputError, match=why):
            check_identifier(tokenizer, bad, "dog")
    with pytest.raises(InputError, match="--identifier is empty"):
        check_identifier(tokenizer, "", "dog")


def test_a_string_of_pieces_is_allowed_with_a_warning_and_counted_in_the_prompt_length(tokenizer):
    """The paper's "random character string" identifier (section 4.2): accepted, warned about, its pieces counted."""
    token = "zqxjvw"
    pieces = identifier_pieces(tokenizer, token)
    assert len(pieces) > 1
    assert check_identifier(tokenizer, token, "dog") == token
    assert any(f"{len(pieces)} pieces" in w for w in identifier_warnings(token, tokenizer))
    single = choose_identifier(tokenizer, "dog", 3)
    assert not any("pieces" in w for w in identifier_warnings(single, tokenizer))
    # the instance prompt's length counts every piece: a class noun that fits beside one piece does not beside six
    noun = " ".join(["dog"] * (MAX_LENGTH - 4))
    assert check_training_text(tokenizer, noun, single) is not None
    with pytest.raises(InputError, match="too long"):
        check_training_text(tokenizer, noun, token)


def test_fill_identifier():
    assert fill_identifier("a [V] clock in the jungle", "xy") == "a xy clock in the jungle"
    with pytest.raises(InputError, match=r"has no \[V\]"):
        fill_identifier("a clock in the jungle", "xy")
    with pytest.raises(InputError, match="empty prompt"):
        fill_identifier("  ", "xy")
