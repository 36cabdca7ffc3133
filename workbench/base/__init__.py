"""Layer 1, the ground floor: checks of user input (`_validate`), files written atomically
(`fileio`), the run cache's strict files (`runstore`), datasets and their fingerprints (`data`),
the architecture zoo and the checks of a user's model (`models`, `preact_resnet`), loaders of
models trained elsewhere that run no code from files (`checkpoints`), and the sweep table on
SQLite (`sweepstore`). Nothing here knows about backdoors. See docs/architecture.md."""
