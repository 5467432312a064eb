"""Fused Triton kernels for the score losses (import name: `stepdistill_kernels`)."""
