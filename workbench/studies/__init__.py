"""Layer 5: experiments over trained runs. The attack registry and the one training path per
attack (`attack_registry`), the attack atlas (`atlas`), experiments (`experiments`: the attack
strength analysis, training dynamics), artificial patterns (`patterns`, `pattern_study`),
detectors and the detection study (`detection`, `detection_study`), and sweeps (`sweep`). See
docs/architecture.md."""
