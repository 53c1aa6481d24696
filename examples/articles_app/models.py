"""The example app's models: authors and their articles. Article gets DPR search from the mixin."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dpr_pg.search.orm import DprSearchable


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)


class Article(DprSearchable, Base):
    """The columns that DprSearchable maps are created by migration 0003 (op.enable_dpr)."""

    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey(Author.id))
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    published: Mapped[bool] = mapped_column(server_default="true")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    author: Mapped[Author] = relationship()
