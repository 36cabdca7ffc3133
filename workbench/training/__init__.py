"""Layer 3: models learning. Backdoored runs and the run cache (`train`), InputAware's joint
training of a trigger generator with the classifier (`input_aware`), triggers crafted on trained
models (`crafting`: LowFrequency, TrojanNN), and models trained elsewhere opened as runs
(`opened.open_model`; `opened_examples`: an offline colour dataset and BackdoorBench's record
format for trying it). See docs/architecture.md."""
