"""Schema: the vector extension, encoders and passages tables, metadata and full-text indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

from dpr_pg._migrations.frozen import execute_script, migration_dim

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    dim = migration_dim()
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE dpr_pg.encoders (
            id                serial PRIMARY KEY,
            fingerprint       text NOT NULL UNIQUE,
            question_model    text NOT NULL,
            question_revision text,
            passage_model     text NOT NULL,
            passage_revision  text,
            tokenizer_hash    text NOT NULL,
            dim               integer NOT NULL CHECK (dim > 0),
            max_length        integer NOT NULL CHECK (max_length > 0),
            pooling           text NOT NULL DEFAULT 'pooler_output',
            created_at        timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE dpr_pg.passages (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            collection   text NOT NULL,
            external_id  text NOT NULL,
            title        text NOT NULL DEFAULT '',
            text         text NOT NULL,
            metadata     jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            content_hash text NOT NULL,
            embedding    vector({int(dim)}) NOT NULL,
            encoder_id   integer NOT NULL REFERENCES dpr_pg.encoders (id),
            tsv          tsvector GENERATED ALWAYS AS
                             (to_tsvector('spanish'::regconfig, coalesce(title, '') || ' ' || text)) STORED,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT passages_collection_external_id_key UNIQUE (collection, external_id),
            CONSTRAINT passages_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object')
        )
        """
    )
    # A 768-d float4 vector is ~3 KB: keep it inline instead of in TOAST (pgvector #353).
    op.execute("ALTER TABLE dpr_pg.passages ALTER COLUMN embedding SET STORAGE PLAIN")
    op.execute("CREATE INDEX passages_metadata_gin ON dpr_pg.passages USING gin (metadata)")
    op.execute("CREATE INDEX passages_tsv_gin ON dpr_pg.passages USING gin (tsv)")
    op.execute("CREATE INDEX passages_encoder_id_idx ON dpr_pg.passages (encoder_id)")


# Functions that sql/ defines and no migration created (sql/ is re-applied after the migrations)
# have nothing else to drop them: they go with the last tables.
DROP_REMAINING_FUNCTIONS = """
DO $$
DECLARE
    routine regprocedure;
BEGIN
    FOR routine IN SELECT p.oid::regprocedure FROM pg_proc p
                   WHERE p.pronamespace = 'dpr_pg'::regnamespace AND p.prokind IN ('f', 'p') LOOP
        EXECUTE format('DROP ROUTINE %s', routine);
    END LOOP;
END
$$;
"""


def downgrade() -> None:
    op.execute("DROP TABLE dpr_pg.passages")
    op.execute("DROP TABLE dpr_pg.encoders")
    execute_script(DROP_REMAINING_FUNCTIONS)
