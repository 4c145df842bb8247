"""How a stage process is started, watched and signalled: one ``Supervisor`` per way of running
a stage (``base``): a local process, a remote process over SSH, or N local ranks, chosen by the
agent per stage (``choice``); the orchestrator never learns which."""
