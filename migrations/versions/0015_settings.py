"""Settings: how passages' vectors are indexed (storage) and how many candidates a bit index re-ranks.

``dpr_pg.settings`` holds one row per setting. ``storage`` is the type the HNSW index
``passages_embedding_hnsw`` compares: ``vector`` (the column itself, vector_ip_ops), ``halfvec``
(an expression index on ``embedding::halfvec(dim)``, halfvec_ip_ops) or ``bit`` (an expression index
on ``binary_quantize(embedding)::bit(dim)``, bit_hamming_ops, whose candidates are re-ranked by the
full inner product). ``rerank_multiple`` is how many candidates per hit that re-ranking reads.
The column stays vector(dim) in every case: exact search and scores use the full vectors.
Every database starts with ``vector``, the index migration 0002 built; ``dpr-pg storage set``
switches it (the new index is built CONCURRENTLY, then swapped in with the setting).

Downgrading puts a vector index back (not concurrently) when another storage was chosen.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

from dpr_pg._migrations.frozen import execute_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE dpr_pg.settings (
    name  text PRIMARY KEY,
    value text NOT NULL,
    CONSTRAINT settings_known CHECK (
        (name = 'storage' AND value IN ('vector', 'halfvec', 'bit'))
        OR (name = 'rerank_multiple'
            AND CASE WHEN value ~ '^[0-9]{1,3}$' THEN value::integer BETWEEN 1 AND 100 ELSE false END))
);
INSERT INTO dpr_pg.settings (name, value) VALUES ('storage', 'vector'), ('rerank_multiple', '4');
GRANT SELECT ON dpr_pg.settings TO PUBLIC;
"""

DOWNGRADE = """
DO $$
BEGIN
    IF (SELECT value FROM dpr_pg.settings WHERE name = 'storage') <> 'vector' THEN
        DROP INDEX IF EXISTS dpr_pg.passages_embedding_hnsw;
        CREATE INDEX passages_embedding_hnsw ON dpr_pg.passages
            USING hnsw (embedding vector_ip_ops) WITH (m = 16, ef_construction = 64);
    END IF;
END
$$;
DROP INDEX IF EXISTS dpr_pg.passages_embedding_hnsw_new;
DROP TABLE dpr_pg.settings;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
