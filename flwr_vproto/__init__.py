"""flwr_vproto: vertical federated learning on Flower that also learns from non-aligned samples via prototypes."""

__version__ = "0.1.0"
