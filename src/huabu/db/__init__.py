"""PostgreSQL: the embedded server or an external one, the schema, and migrations."""
