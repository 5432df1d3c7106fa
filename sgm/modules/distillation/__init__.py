"""DMD2 distillation: score roles, losses, the few-step schedule and its sampler.

    roles.py      ScoreModel (network + denoiser + optional guider, weights from a file)
    losses.py     dmd_loss, the DMD-loss sigma sampler, GAN head and losses, regression loss
    rollout.py    few-step sigmas, exit-step draw, backward simulation
    sampler.py    FewStepSampler (the same schedule at inference)
    ode_pairs.py  teacher ODE pairs for the regression term, and a DataModule serving them
    toy.py        an exact Gaussian-mixture score and a small MLP network, for tests and demos

The engine that puts them together is `sgm.models.dmd.DMDEngine`.
"""
