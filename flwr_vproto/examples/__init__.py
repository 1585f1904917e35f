"""Worked examples of extending flwr_vproto without editing it (README "Extending")."""
