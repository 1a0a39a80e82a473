"""The ClientApp and the local training steps it is built from."""
