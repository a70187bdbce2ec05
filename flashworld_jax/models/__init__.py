"""Networks: the DiT denoiser, the VAE, the Gaussian decoder and the text encoder."""
