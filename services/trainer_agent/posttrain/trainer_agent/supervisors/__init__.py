"""How a stage process is started, watched and signalled: one ``Supervisor`` per way of running
a stage (``base``), chosen by the agent per stage; the orchestrator never learns which."""
