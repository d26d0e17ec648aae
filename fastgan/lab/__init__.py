"""The mode-collapse lab: train small GANs on 2-D Gaussian mixtures and measure which modes they
keep (``fastgan lab``). Modules: :mod:`.data` (the mixtures), :mod:`.metrics` (modes captured,
high-quality samples, reverse KL), :mod:`.train` (objectives, regimes, one training run;
on CUDA the training step is replayed from CUDA graphs by :class:`fastgan.GraphedStep`),
:mod:`.plots` (the figures), :mod:`.cli` (the command). The narrative of the committed runs is
docs/lab/README.md."""
