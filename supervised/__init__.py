"""plasticrl.supervised."""
