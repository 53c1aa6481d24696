"""Writes the two sample PDFs of this folder (run: python examples/documents/make_pdfs.py; needs fpdf2).

The example of docs/documents.md ingests this folder and asks it questions.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

GUIDES = {
    "guia-sevilla.pdf": ("Guía de Sevilla", [
        ("Historia", [
            "Sevilla fue fundada por los tartesios y conquistada por los romanos, que la llamaron Hispalis. "
            "Durante la época musulmana se construyó la mezquita mayor, de la que hoy queda la Giralda.",
            "En el siglo XVI la ciudad tuvo el monopolio del comercio con América a través de la Casa de "
            "Contratación, fundada en 1503.",
        ]),
        ("Monumentos", [
            "La Giralda fue el alminar de la antigua mezquita y hoy es el campanario de la catedral de Sevilla, "
            "la mayor catedral gótica del mundo.",
            "El Real Alcázar es un palacio real todavía en uso, con jardines y patios de estilo mudéjar.",
        ]),
    ]),
    "guia-granada.pdf": ("Guía de Granada", [
        ("La Alhambra", [
            "La Alhambra es una ciudad palatina andalusí situada en la colina de la Sabika, frente al barrio "
            "del Albaicín. Fue residencia de la dinastía nazarí hasta 1492.",
            "El Generalife era la villa de recreo de los reyes nazaríes, con huertas y jardines regados por la "
            "Acequia Real.",
        ]),
        ("Sierra Nevada", [
            "Sierra Nevada está a unos cuarenta kilómetros de Granada. Su pico más alto es el Mulhacén, con "
            "3479 metros, la cumbre más alta de la península ibérica.",
        ]),
    ]),
}


def main() -> None:
    from fpdf import FPDF

    folder = Path(__file__).resolve().parent
    for name, (title, sections) in GUIDES.items():
        pdf = FPDF()
        pdf.set_title(title)
        pdf.set_author("dpr_pg")
        pdf.set_creation_date(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc))  # the same bytes on every run
        for heading, paragraphs in sections:
            pdf.add_page()
            pdf.set_font("Helvetica", "B", 16)
            pdf.start_section(heading)
            pdf.multi_cell(0, 10, heading, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", size=11)
            for paragraph in paragraphs:
                pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
                pdf.ln(4)
        pdf.output(str(folder / name))


if __name__ == "__main__":
    main()
