"""Webhooks: each user's signing secret, each task's webhook URL, and the deliveries; a
trigger queues a delivery (its row and its procrastinate job) whenever a task with a webhook
URL reaches a final state, whichever code path finished it

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE FUNCTION huabu_queue_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  delivery uuid := gen_random_uuid();
BEGIN
  INSERT INTO webhook_deliveries (id, task_id, event, url, state, attempts, next_attempt_at)
  VALUES (delivery, NEW.id, 'task.' || NEW.state, NEW.webhook_url, 'pending', 0, now());
  PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(
    'huabu-service', 'huabu.deliver_webhook', 0, NULL, NULL,
    jsonb_build_object('delivery_id', delivery::text), NULL
  )::procrastinate_job_to_defer_v1]);
  RETURN NEW;
END
$$
"""
_TRIGGER = """
CREATE TRIGGER tasks_webhook AFTER UPDATE OF state ON tasks FOR EACH ROW
  WHEN (NEW.webhook_url IS NOT NULL
        AND NEW.state IN ('succeeded', 'failed', 'cancelled')
        AND OLD.state IS DISTINCT FROM NEW.state)
  EXECUTE FUNCTION huabu_queue_webhook()
"""


def upgrade() -> None:
    op.add_column("users", sa.Column("webhook_secret", sa.String(64), nullable=True))
    op.add_column("tasks", sa.Column("webhook_url", sa.Text(), nullable=True))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "task_id",
            sa.Uuid(),
            sa.ForeignKey("tasks.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.execute(_FUNCTION)
    op.execute(_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER tasks_webhook ON tasks")
    op.execute("DROP FUNCTION huabu_queue_webhook()")
    op.drop_table("webhook_deliveries")
    op.drop_column("tasks", "webhook_url")
    op.drop_column("users", "webhook_secret")
