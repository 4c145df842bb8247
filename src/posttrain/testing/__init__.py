"""Test doubles for things outside the platform (a scripted trainer agent standing in for a GPU
node), shared by the test suite and the benchmarks."""
