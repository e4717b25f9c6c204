"""The inference-node runtime. Imports dlrm_core; never imports Django models."""
