"""Structure-following chunks: every word once, in order, none cut, no chunk across sections, none too long."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dpr_pg.ingest.chunking import Block, chunk_blocks, sentences

WORD = st.sampled_from(["Sevilla", "está", "en", "Andalucía.", "¿Dónde?", "río", "Guadalquivir!", "año", "1929."])
TEXT = st.lists(WORD, min_size=0, max_size=60).map(" ".join)
BLOCKS = st.lists(st.builds(Block, TEXT, st.sampled_from([(), ("A",), ("A", "B"), ("C",)]),
                            st.one_of(st.none(), st.integers(1, 5))), max_size=12)


@given(BLOCKS, st.integers(1, 40))
def test_chunks_keep_every_word_in_order_within_the_limit_and_their_section(blocks: list[Block], words: int) -> None:
    chunks = chunk_blocks(blocks, words=words)
    assert [w for c in chunks for w in c.text.split()] == [w for b in blocks for w in b.text.split()]
    assert all(0 < len(c.text.split()) <= words for c in chunks)
    runs = [b.sections for i, b in enumerate(blocks) if b.text.strip()]
    expected = [s for i, s in enumerate(runs) if i == 0 or s != runs[i - 1]]
    got = [c.sections for i, c in enumerate(chunks) if i == 0 or c.sections != chunks[i - 1].sections]
    assert got == expected  # a section's chunks are consecutive and never hold another section's words


@given(BLOCKS)
def test_words_zero_gives_one_chunk_per_section_run(blocks: list[Block]) -> None:
    chunks = chunk_blocks(blocks, words=0)
    assert all(a.sections != b.sections for a, b in zip(chunks, chunks[1:]))


def test_pages_of_a_chunk_span_its_blocks() -> None:
    chunks = chunk_blocks([Block("Uno.", ("A",), 1), Block("Dos.", ("A",), 2), Block("Tres.", ("A",), 2)], words=10)
    assert [(c.text, c.page, c.page_end) for c in chunks] == [("Uno.\n\nDos.\n\nTres.", 1, 2)]


def test_sentences_split_before_spanish_openers() -> None:
    assert sentences("Llegó en 1492. ¿Por qué? «Por oro.» Luego volvió.") == \
        ["Llegó en 1492.", "¿Por qué?", "«Por oro.»", "Luego volvió."]
