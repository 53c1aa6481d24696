"""Answer normalisation (DPR's has_answer) with Spanish accents, ñ, ¿¡ and punctuation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpr_pg.evaluation.answers import AnswerMatcher, answer_tokens, has_answer, normalize_answer
from dpr_pg.errors import EvaluationError


def test_spanish_style_drops_accents_punctuation_and_articles():
    assert normalize_answer("¿Dónde está la Alhambra?") == "donde esta alhambra"
    assert normalize_answer("¡Ganó «El Premio»!") == "gano premio"
    assert normalize_answer("Pingüino, ÁRBOL; acción.") == "pinguino arbol accion"


def test_spanish_style_keeps_enie_apart_from_n():
    assert normalize_answer("Año") == "año"
    assert normalize_answer("Año") == normalize_answer("An\u0303o")  # precomposed or combining: one form
    assert not has_answer("Vive en el ano.", ["año"])
    assert has_answer("Fue en el AÑO 1992.", ["año 1992"])


def test_has_answer_ignores_accent_case_and_punctuation_differences():
    passage = "Lima es la capital del Perú; ¿lo sabías? La fundó Francisco Pizarro en 1535."
    assert has_answer(passage, ["peru"])
    assert has_answer(passage, ["FRANCISCO PIZARRO."])
    assert has_answer(passage, ["la capital del Peru"])
    assert has_answer(passage, ["¿lo sabias?"])


def test_has_answer_matches_whole_tokens_only():
    assert not has_answer("Lima, capital del Perú.", ["Per"])
    assert not has_answer("Lima, capital del Perú.", ["Bogotá", "Quito"])
    assert has_answer("Lima, capital del Perú.", ["Bogotá", "Perú"])


def test_answers_made_only_of_punctuation_or_articles_never_match():
    matcher = AnswerMatcher(["¿?", "la", "  "])
    assert not matcher
    assert not matcher.found_in("la casa ¿? la")


def test_dpr_style_is_dpr_exactly():
    # NFD keeps the accent as a combining mark inside the token; punctuation is a token of its own.
    assert answer_tokens("¿Dónde?", style="dpr") == ["¿", "do\u0301nde", "?"]
    assert has_answer("Lima, capital del Perú.", ["Perú"], style="dpr")
    assert not has_answer("Lima, capital del Perú.", ["Peru"], style="dpr")
    assert has_answer("en 1.200 metros", ["1.200"], style="dpr")
    assert not has_answer("en 1,200 metros", ["1.200"], style="dpr")


def test_unknown_style_is_refused():
    with pytest.raises(EvaluationError, match="answer style"):
        normalize_answer("x", style="english")  # type: ignore[arg-type]


spanish_text = st.lists(
    st.sampled_from(list("abcdeéíóúüñÑÁ ¿?¡!.,;«»-'\"19") + ["la", "Los", "n\u0303", "e\u0301"]), max_size=20
).map("".join)


@given(st.text(max_size=60) | spanish_text, st.sampled_from(["spanish", "dpr"]))
def test_normalisation_is_idempotent(text, style):
    once = normalize_answer(text, style=style)
    assert normalize_answer(once, style=style) == once


@given(spanish_text, spanish_text, spanish_text)
def test_an_answer_is_found_wherever_it_is_embedded(before, answer, after):
    if normalize_answer(answer):
        assert has_answer(f"{before} {answer} {after}", [answer])


@given(spanish_text)
def test_case_and_accents_do_not_change_the_spanish_form(text):
    stripped = text.replace("é", "e").replace("í", "i").replace("ó", "o").replace("ú", "u").replace("ü", "u")
    assert normalize_answer(text.upper()) == normalize_answer(stripped)
