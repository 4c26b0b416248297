"""Training on Accelerate: the shared loop (``loop``), the recipes' config flags (``config``)
and shell (``recipe``), and what probing and fine-tuning share (``downstream``)."""
