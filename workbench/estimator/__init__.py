"""Layer 4: the backdoor-smoothing measure W_σ(x) and its statistics, for any nn.Module. Noise
and votes (`sampling`), entropies, intervals and certified radii (`stats`), the estimator
(`smoothness`: `estimate_smoothness`, `estimate_pair`), the smoothing gap (`comparison`) and local
W_σ maps (`landscape`). No training, no plotting, no widgets. See docs/architecture.md."""
