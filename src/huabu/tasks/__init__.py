"""The durable task queue, API side: task rows in huabu's tables and jobs in procrastinate's,
written in one transaction (``queue``); intake (``submit``, ``uploads``, ``quotas``,
``idempotency``, ``fairness``), reads (``reads``, ``events``, ``eta``), and the work every
server shares (``webhooks``, ``retention``, ``metrics``, ``service_jobs``). It never imports
the engine: ``huabu.worker`` runs the tasks."""
