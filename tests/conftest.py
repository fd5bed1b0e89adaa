"""pytest setup: trio mode (pyproject), and the imports tests share."""
