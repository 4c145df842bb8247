"""``python -m posttrain.gateway``: serve the HTTP API."""

from posttrain.gateway.main import main

if __name__ == "__main__":
    raise SystemExit(main())
