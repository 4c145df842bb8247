"""How the agent runs a stage: a local process, a remote process over SSH, or N local ranks."""
