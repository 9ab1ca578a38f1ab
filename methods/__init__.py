"""Method plugins: one module per method; modules starting with ``_`` hold shared helpers."""
