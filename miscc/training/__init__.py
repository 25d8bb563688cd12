"""The epoch driver and the trainers built on it (GAN training, DAMSM pretraining)."""
