"""What is built on runs: batches of prompts, the viewer, the demo scene."""
