"""The mode-collapse lab: train small GANs on 2-D Gaussian mixtures and measure which modes they
keep (``fastgan lab``). Modules: :mod:`.data` (the mixtures), :mod:`.metrics` (modes captured,
high-quality samples, reverse KL), :mod:`.train` (objectives, regimes, one training run),
:mod:`.plots` (the figure), :mod:`.cli` (the command)."""
