"""CLI wrappers over dlrm_core (argparse lives here, never in the library modules)."""
