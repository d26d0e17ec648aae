"""The mode-collapse lab: train small GANs on 2-D Gaussian mixtures and measure which modes they
keep (``fastgan lab``). Modules: :mod:`.data` (the mixtures), :mod:`.metrics` (modes captured,
high-quality samples, reverse KL), :mod:`.train` (objectives, regimes, one training run),
:mod:`.graph` (the training step as one CUDA graph), :mod:`.plots` (the figures), :mod:`.cli`
(the command)."""
