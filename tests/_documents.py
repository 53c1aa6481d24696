"""Small documents in every format, written by the tests themselves (fpdf2, python-docx, plain text)."""

from __future__ import annotations

import io
from pathlib import Path

Sections = list[tuple[str, list[str]]]

SEVILLA: Sections = [
    ("Historia", ["Sevilla fue fundada por los tartesios y conquistada por los romanos, que la llamaron Hispalis. "
                  "Durante la época musulmana se construyó la mezquita mayor, de la que hoy queda la Giralda.",
                  "En el siglo XVI la ciudad tuvo el monopolio del comercio con América a través de la Casa de "
                  "Contratación, fundada en 1503."]),
    ("Monumentos", ["La Giralda fue el alminar de la antigua mezquita y hoy es el campanario de la catedral. "
                    "La catedral de Sevilla es la mayor catedral gótica del mundo.",
                    "El Real Alcázar es un palacio real en uso, con jardines y patios de estilo mudéjar."]),
]
MADRID: Sections = [
    ("Geografía", ["Madrid es la capital de España y está situada en el centro de la península ibérica, a orillas "
                   "del río Manzanares."]),
    ("Museos", ["El Museo del Prado guarda obras de Velázquez, Goya y El Greco. El Reina Sofía expone el Guernica "
                "de Picasso desde 1992."]),
]


def make_pdf(path: Path, title: str, sections: Sections, *, author: str = "Ana Pérez",
             user_password: str | None = None) -> Path:
    """A text PDF: one page per section, the heading printed and bookmarked, metadata set."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_author(author)
    for heading, paragraphs in sections:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.start_section(heading)
        pdf.multi_cell(0, 10, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
    data = bytes(pdf.output())
    if user_password is not None:
        import pypdf

        writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
        writer.encrypt(user_password, owner_password="dueño", algorithm="AES-128")
        buffer = io.BytesIO()
        writer.write(buffer)
        data = buffer.getvalue()
    path.write_bytes(data)
    return path


def make_scanned_pdf(path: Path) -> Path:
    """A PDF whose one page is an image and holds no text layer, as a scanner makes."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (400, 200), "white")
    ImageDraw.Draw(image).text((20, 80), "Texto escaneado", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pdf = FPDF()
    pdf.add_page()
    pdf.image(io.BytesIO(buffer.getvalue()), x=10, y=10, w=180)
    path.write_bytes(bytes(pdf.output()))
    return path


def make_docx(path: Path, title: str | None, sections: Sections, *, author: str = "Luis Gómez") -> Path:
    import docx

    document = docx.Document()
    document.core_properties.author = author
    if title is not None:
        document.core_properties.title = title
    for heading, paragraphs in sections:
        document.add_heading(heading, level=1)
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
    document.save(str(path))
    return path


def html_page(title: str, sections: Sections) -> str:
    body = "".join(f"<h2>{heading}</h2>" + "".join(f"<p>{p}</p>" for p in paragraphs)
                   for heading, paragraphs in sections)
    return (f"<html><head><title>{title} | Portal</title><meta name='author' content='Marta Ruiz'></head><body>"
            "<nav><a href='/'>Inicio</a> <a href='/contacto'>Contacto</a> <a href='/aviso'>Aviso legal</a></nav>"
            f"<article><h1>{title}</h1>{body}</article>"
            "<footer><p>© 2024 Portal de turismo. Todos los derechos reservados. Política de cookies.</p></footer>"
            "</body></html>")


def markdown_text(title: str, sections: Sections, *, front_matter: dict[str, str] | None = None) -> str:
    head = "".join(f"{key}: {value}\n" for key, value in (front_matter or {}).items())
    text = f"---\n{head}---\n\n" if front_matter else ""
    text += f"# {title}\n\n"
    for heading, paragraphs in sections:
        text += f"## {heading}\n\n" + "".join(f"{p}\n\n" for p in paragraphs)
    return text
