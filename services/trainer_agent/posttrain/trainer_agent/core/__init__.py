"""The trainer agent's pure core: no I/O, no threads, no clock. Shells call it."""
