"""plasticrl.agents: single-file agents, each readable top to bottom (DESIGN.md §2).

- ``sac.py`` — SAC from states on DMC (primacy-bias setting, Nikishin et al. 2022).
- ``drq.py`` — DrQ from pixels on DMC (Kostrikov et al. 2020).

Run one as a script (``python agents/sac.py --help``) or from Python::

    from plasticrl.agents import sac
    summary = sac.main(sac.Args(env_id="cartpole-balance", total_steps=10_000, learning_starts=1_000))
"""
