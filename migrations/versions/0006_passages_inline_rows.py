"""Keep a passage's small columns inline: toast_tuple_target = 8160 on dpr_pg.passages.

A 768-d embedding (3 KB, STORAGE PLAIN) alone passes PostgreSQL's default 2 KB TOAST target, so
the toaster moved every other compressible column (metadata, title, text, tsv) out of line: each
filter check and each returned row then cost about four extra buffer reads in the TOAST table.
On the 100k search benchmark that made an exact scan over 1,000 filtered rows 6.4 ms (4,996
buffers) instead of 2.2 ms (996 buffers). Rows up to ~8 KB now stay in the heap page.

The setting applies to rows written from now on. Existing rows move back inline when they are
rewritten: ``VACUUM FULL dpr_pg.passages`` (takes an exclusive lock and rebuilds the indexes) or a
re-ingest. Downgrade resets the setting (rows already written stay as they are).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE dpr_pg.passages SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    op.execute("ALTER TABLE dpr_pg.passages RESET (toast_tuple_target)")
