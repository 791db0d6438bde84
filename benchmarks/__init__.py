"""plasticrl.benchmarks."""
