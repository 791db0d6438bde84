"""plasticrl.agents: single-file agents, each readable top to bottom (DESIGN.md §2).

- ``sac.py`` — SAC from states on DMC (primacy-bias setting, Nikishin et al. 2022).
- ``drq.py`` — DrQ from pixels on DMC (Kostrikov et al. 2020).
- ``drq_atari.py`` — DrQ(ε) on Atari-100k (Agarwal et al. 2021; Dopamine's ``DrQ_eps.gin``).
- ``bbf.py`` — BBF on Atari-100k (Schwarzer et al. 2023; ``bigger_better_faster``).
- ``sac_parts.py`` — the pieces of SAC that ``sac.py`` and ``drq.py`` share (not an agent).

Run one as a script (``python agents/sac.py --help``) or from Python::

    from plasticrl.agents import sac
    summary = sac.main(sac.Args(env_id="cartpole-balance", total_steps=10_000, learning_starts=1_000))
"""
