"""The orchestrator's pure core: no I/O, no asyncio, no clock. Time and ids enter as data."""
