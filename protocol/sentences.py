"""Text cut into sentences for synthesis, with word indexes that match the whole text's.

Synthesis goes sentence by sentence so that a provider connection lost half-way through a long
text costs at most the sentence it was on (see actors/tts.py). A sentence ends after `.`, `!`,
`?`, `;`, `…` or their full-width forms (`。！？；`) and at a line break; a `.` between two
digits ("3.5") or right after a single letter ("e.g.", "U.S.") does not end one. Sentences of
fewer than `min_chars` characters are joined to the next, so "Hi." alone does not cost a request.

Words are counted as the embedded engine counts them for word marks: runs of non-space
characters, from 0 over the whole text. A sentence's `first_word` is the index of its first word.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

__all__ = ["Sentence", "count_words", "split_sentences"]

_ENDS = frozenset(".!?;…。！？；")
_CLOSERS = frozenset("\"'”’)]」』）")
_WORD = re.compile(r"\S+")
MIN_CHARS = 12


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str          # stripped
    start: int         # character offset of `text` in the whole text
    first_word: int    # index of its first word in the whole text


def _is_end(text: str, i: int) -> bool:
    ch = text[i]
    if ch in "\r\n":
        return True
    if ch in _CLOSERS:
        # A closing quote or bracket right after an end ends the sentence itself.
        j = i - 1
        while j >= 0 and text[j] in _CLOSERS:
            j -= 1
        if j < 0 or text[j] not in _ENDS or not _ends_here(text, j):
            return False
    elif ch not in _ENDS or not _ends_here(text, i):
        return False
    # A run of ends ("?!", "...") or a closing quote ends the sentence at its last character.
    nxt = text[i + 1] if i + 1 < len(text) else ""
    return not (nxt in _ENDS or nxt in _CLOSERS)


def _ends_here(text: str, i: int) -> bool:
    """Whether the end character at `i` ends a sentence (a decimal point or an initial does not)."""
    if text[i] != ".":
        return True
    before = text[i - 1] if i > 0 else ""
    after = text[i + 1] if i + 1 < len(text) else ""
    if before.isdigit() and after.isdigit():
        return False
    # "e.g." / "U.S.": a lone letter before the dot
    return not (before.isalpha() and (i < 2 or not text[i - 2].isalpha()))


def _weight(text: str) -> int:
    """Length for the shortness rule: a wide (CJK) character says about as much as two letters."""
    return sum(2 if ord(ch) >= 0x2E80 else 1 for ch in text.strip())


def split_sentences(text: str, min_chars: int = MIN_CHARS) -> list[Sentence]:
    """The sentences of `text` in order; whitespace-only text gives none."""
    spans: list[tuple[int, int]] = []
    begin = 0
    for i in range(len(text)):
        if _is_end(text, i):
            spans.append((begin, i + 1))
            begin = i + 1
    spans.append((begin, len(text)))
    merged: list[tuple[int, int]] = []
    pending: tuple[int, int] | None = None
    for start, end in spans:
        if not text[start:end].strip():
            continue
        if pending is not None:
            start = pending[0]
            pending = None
        if _weight(text[start:end]) < min_chars:
            pending = (start, end)
            continue
        merged.append((start, end))
    if pending is not None:
        if merged:
            merged[-1] = (merged[-1][0], pending[1])
        else:
            merged.append(pending)
    word_starts = [m.start() for m in _WORD.finditer(text)]
    out: list[Sentence] = []
    for start, end in merged:
        chunk = text[start:end]
        offset = start + len(chunk) - len(chunk.lstrip())
        # The word the sentence starts in: a sentence of unspaced script may begin inside one.
        out.append(Sentence(chunk.strip(), offset, max(0, bisect.bisect_right(word_starts, offset) - 1)))
    return out


def count_words(text: str) -> int:
    """Words as word marks count them: runs of non-space characters."""
    return sum(1 for _ in _WORD.finditer(text))
