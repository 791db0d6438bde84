"""plasticrl.agents."""
