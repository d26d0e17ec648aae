"""Pure-PyTorch references: the specification every backend is tested against, the fallback,
and the baseline every benchmark measures in the same run. Written the way GAN code is written
today (plain formulas, ``autograd.grad(create_graph=True)`` for penalties)."""
