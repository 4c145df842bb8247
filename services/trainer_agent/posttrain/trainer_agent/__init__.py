"""posttrain trainer_agent: Trainer agent: runs stages with torch on GPU nodes."""
