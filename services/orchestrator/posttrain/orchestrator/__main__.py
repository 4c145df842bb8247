"""``python -m posttrain.orchestrator``: run the orchestrator (and its read-model projection)."""

from posttrain.orchestrator.shell.main import main

if __name__ == "__main__":
    raise SystemExit(main())
