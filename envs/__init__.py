"""plasticrl.envs."""
