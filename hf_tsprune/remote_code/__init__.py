"""Self-contained pruned configuration/model classes, copied beside the weights of every pruned checkpoint."""
