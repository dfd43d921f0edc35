"""The durable task queue: task rows in huabu's tables, jobs in procrastinate's, one
transaction for both. ``service`` is what dialects call; ``worker`` is what runs the work."""
