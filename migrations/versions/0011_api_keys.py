"""API keys of the HTTP service (``dpr-pg serve``): stored hashed, with collections and scopes.

Only the SHA-256 of a key is stored (keys are 256-bit random tokens, so a slow password hash would
add nothing); ``prefix`` is the key's first characters, shown by ``dpr-pg keys list`` to tell keys
apart. ``collections`` NULL means every collection. Frozen SQL: this revision never reads sql/.

Revision ID: 0011
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE dpr_pg.api_keys (
            id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
            key_hash     text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
            prefix       text NOT NULL,
            collections  text[] CHECK (collections IS NULL OR cardinality(collections) > 0),
            scopes       text[] NOT NULL CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['search', 'write']),
            created_at   timestamptz NOT NULL DEFAULT now(),
            revoked_at   timestamptz
        )
        """
    )
    # One live key per name: `dpr-pg keys revoke NAME` names exactly one.
    op.execute("CREATE UNIQUE INDEX api_keys_live_name_key ON dpr_pg.api_keys (name) WHERE revoked_at IS NULL")
    op.execute("REVOKE ALL ON dpr_pg.api_keys FROM PUBLIC")


def downgrade() -> None:
    op.execute("DROP TABLE dpr_pg.api_keys")
