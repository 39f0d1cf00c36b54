"""PostgreSQL migrations: numbered SQL files (``NNNN_name.sql``) applied in order."""
