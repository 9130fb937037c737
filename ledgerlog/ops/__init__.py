"""Operations: CLI, HTTP API and dashboard, simulator, snapshots, re-projection, export, verify."""
