"""plasticrl.interventions."""
