"""Loading trained engines and scoring their samples (benchmarks, evaluation callbacks)."""
