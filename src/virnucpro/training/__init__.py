"""Training and evaluating VirNucPro classifiers."""
