"""securefl on Flower: the ServerApp and the ClientApp of `flwr run`."""
