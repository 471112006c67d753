"""Sentences for synthesis: where a text is cut, and word indexes that match the whole text's."""

from __future__ import annotations

from protocol.sentences import split_sentences


def texts(text: str) -> list[str]:
    return [s.text for s in split_sentences(text)]


def test_sentences_end_at_stops_and_keep_decimals_initials_and_quotes_whole():
    text = 'He paid 3.5 dollars, e.g. for tea! Then he said "thank you." And the shop closed at nine.'
    assert texts(text) == ['He paid 3.5 dollars, e.g. for tea!', 'Then he said "thank you."',
                           'And the shop closed at nine.']


def test_short_sentences_join_the_next_and_a_short_tail_joins_the_last():
    assert texts("Hi. Ok. This is the last one. Bye.") == ["Hi. Ok. This is the last one. Bye."]
    assert texts("First sentence is long. Yes.") == ["First sentence is long. Yes."]


def test_runs_of_ends_and_line_breaks():
    assert texts("Wait... what?! Really, I did not know that.\nA new line starts here") == [
        "Wait... what?!", "Really, I did not know that.", "A new line starts here"]


def test_wide_scripts_split_at_their_own_stops():
    assert texts("你好，欢迎致电。请问有什么可以帮您？") == ["你好，欢迎致电。", "请问有什么可以帮您？"]


def test_first_word_indexes_count_over_the_whole_text():
    sentences = split_sentences("One two three four five. Six seven eight nine ten.  Eleven twelve thirteen.")
    assert [(s.first_word, s.start) for s in sentences] == [(0, 0), (5, 25), (10, 52)]
    text = "One two three four five. Six seven eight nine ten.  Eleven twelve thirteen."
    assert all(text[s.start:].startswith(s.text) for s in sentences)


def test_nothing_to_say():
    assert split_sentences("") == [] and split_sentences("  \n ") == []
