"""generation requests name their input images as {"key": ...}, not as bare strings

Tasks queued before this revision hold each input image (init_image, inpaint.mask, every
ControlNet unit's image, the IP-Adapter's image) as a bare storage-key string; the native model
now reads ``{"key": "<storage key>"}``. Rewritten in place so queued tasks still run and old
tasks still read.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: jsonb value → {"key": value} when it is a bare string.
_WRAP = "CASE WHEN jsonb_typeof({v}) = 'string' THEN jsonb_build_object('key', {v}) ELSE {v} END"


def upgrade() -> None:
    op.execute(
        f"""
        UPDATE tasks SET request = jsonb_set(request, '{{init_image}}',
                                             {_WRAP.format(v="request->'init_image'")})
         WHERE kind = 'generate' AND jsonb_typeof(request->'init_image') = 'string'
        """
    )
    op.execute(
        f"""
        UPDATE tasks SET request = jsonb_set(request, '{{inpaint,mask}}',
                                             {_WRAP.format(v="request->'inpaint'->'mask'")})
         WHERE kind = 'generate' AND jsonb_typeof(request->'inpaint'->'mask') = 'string'
        """
    )
    op.execute(
        f"""
        UPDATE tasks SET request = jsonb_set(request, '{{ip_adapter,image}}',
                                             {_WRAP.format(v="request->'ip_adapter'->'image'")})
         WHERE kind = 'generate' AND jsonb_typeof(request->'ip_adapter'->'image') = 'string'
        """
    )
    op.execute(
        f"""
        UPDATE tasks SET request = jsonb_set(request, '{{controlnets}}', (
                 SELECT jsonb_agg(jsonb_set(unit, '{{image}}', {_WRAP.format(v="unit->'image'")})
                                  ORDER BY position)
                   FROM jsonb_array_elements(request->'controlnets')
                        WITH ORDINALITY AS units(unit, position)))
         WHERE kind = 'generate' AND jsonb_typeof(request->'controlnets') = 'array'
           AND jsonb_array_length(request->'controlnets') > 0
        """
    )


def downgrade() -> None:
    raise NotImplementedError("typed image references cannot be turned back into bare strings")
