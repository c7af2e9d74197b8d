"""Policy file: models, units, loading with line numbers, snapshot building."""
