"""FlashWorld model and sampling config, shared by every entry point.

`get_config("5b")`: the original's dimensions (Wan2.2-TI2V-5B DiT, Wan2.2 VAE, umT5-XXL, D_G).
`get_config("tiny")`: the same architecture at toy widths; runs in seconds on CPU, random weights.
`get_config("demo")`: the small model trained on this repository's synthetic scenes (`make train-demo`,
README "Results"): DiT 1.40 M, Gaussian decoder 0.68 M, VAE 1.07 M and the toy text encoder's 33 k
parameters (12.7 MB in fp32), sized so that the whole recipe trains on a 2-core CPU.
Select on the command line with `--config=configs/flashworld.py:tiny` and override any field with
`--config.dit.num_layers=4` and the like.
"""
import ml_collections

VARIANTS = ("5b", "tiny", "demo")


def _dit(variant):
  c = ml_collections.ConfigDict()
  c.latent_channels = 48          # VAE z_dim: noisy-latent input and velocity output
  c.patch_size = (1, 2, 2)
  c.freq_dim = 256                # timestep sinusoid features
  c.rope_theta = 10000.0
  c.rope_max_seq_len = 1024       # positions per axis (views, rows, columns)
  c.eps = 1e-6
  # FlashWorld channel extensions (spec §3); switch all off for the plain Wan2.2 transformer.
  c.raymap_channels = 6
  c.condition_latent = True
  c.feedback_feature = True
  c.feedback_latent = True
  c.use_raymap = True
  c.feature_head = True           # the 1024-channel feature output
  c.dtype = "bfloat16"            # matmul / activation dtype; norms and modulation run in fp32
  c.param_dtype = "float32"
  # fp32 matmuls: "default" (TF32 on recent GPUs, bf16 passes on TPU) | "high" | "highest" (full
  # fp32, what parity with torch needs).
  c.matmul_precision = "default"
  c.attention = "auto"            # "auto" | "xla" | "cudnn" | "splash"
  # "none" | "all_to_all": self-attention split over mesh.sequence by an all-to-all over heads
  # (kernels/attention/sequence_parallel.py); needs num_heads / mesh.tensor divisible by it.
  c.sequence_parallel = "none"
  c.scan_layers = True
  c.remat_policy = "none"         # "none" | "full" | "save_attention" | "save_dots"
  if variant == "5b":
    c.num_layers, c.num_heads, c.head_dim = 30, 24, 128
    c.ffn_dim = 14336
    c.text_dim = 4096
    c.feature_dim = 1024
  elif variant == "demo":
    c.num_layers, c.num_heads, c.head_dim = 4, 4, 32
    c.ffn_dim = 512
    c.text_dim = 32
    c.feature_dim = 64
  else:
    c.num_layers, c.num_heads, c.head_dim = 2, 2, 24
    c.ffn_dim = 64
    c.text_dim = 32
    c.feature_dim = 32
  return c


def _vae(variant):
  c = ml_collections.ConfigDict()
  c.z_dim = 48
  c.patch_size = 2
  c.dim_mult = (1, 2, 4, 4)
  c.temporal_downsample = (False, True, True)
  c.is_residual = True
  c.eps = 1e-12                   # RMS norm: x / max(||x||, eps)
  c.logvar_clamp = (-30.0, 20.0)
  # Latent statistics are read from the Wan2.2 `vae/config.json` by the converter and stored with
  # the weights; these placeholders (mean 0, std 1) are what a random-initialised model uses.
  c.latents_mean = (0.0,) * 48
  c.latents_std = (1.0,) * 48
  c.dtype = "float32"
  # Encode (and, in the backward pass, recompute) one view at a time, each device its own views. On
  # for the 5B distillation (configs/train.py), whose generator update backpropagates through the
  # encoding of its renders: on v5p-64 it cuts that update's temporaries from 73.4 to 36.4 GiB per
  # chip. Off here, where all views in one pass are faster.
  c.encode_views_one_at_a_time = False
  if variant == "5b":
    c.base_dim, c.decoder_base_dim, c.num_res_blocks = 160, 256, 2
  elif variant == "demo":
    c.base_dim, c.decoder_base_dim, c.num_res_blocks = 16, 16, 1
  else:
    c.base_dim, c.decoder_base_dim, c.num_res_blocks = 8, 8, 1
  return c


def _gaussian_decoder():
  """The same for every variant: its widths follow the VAE decoder and the DiT feature head."""
  c = ml_collections.ConfigDict()
  c.gaussians_per_pixel = 2
  c.sh_degree = 2
  c.depth_bias = 0.0              # log(1)
  c.opacity_init = 0.1
  c.scale_init = 1.0 / 16.0
  c.depth_grad_clamp = 10.0       # trunc_exp: backward uses exp(clamp(raw, -10, 10))
  c.dtype = "float32"
  # Decode (and, in the backward pass, recompute) one view at a time, each device its own views:
  # on one v5p chip it cuts the 5B decoder's temporaries from 37.0 to 3.3 GiB. On for the 5B
  # training configs (configs/train.py); off here, where all views in one pass are faster.
  c.views_one_at_a_time = False
  return c


def _text(variant):
  c = ml_collections.ConfigDict()
  c.max_length = 512
  c.prefix = "[Static] "          # added by the pipeline, not by the encoder
  c.relative_attention_num_buckets = 32
  c.relative_attention_max_distance = 128
  c.eps = 1e-6
  c.dtype = "bfloat16"
  # The encoder is frozen: bf16 weights (11.4 GB at 5b instead of 23 GB) with fp32 norm statistics.
  c.param_dtype = "bfloat16" if variant == "5b" else "float32"
  c.matmul_precision = "default"  # as dit.matmul_precision
  # "byte" (toy configs without a vocabulary) or a local tokenizer directory / file; the real
  # encoder needs the Wan2.2 tokenizer, which is the user's to supply (`--tokenizer`).
  c.tokenizer = "" if variant == "5b" else "byte"
  if variant == "5b":
    c.vocab_size, c.d_model, c.num_layers, c.num_heads, c.d_kv, c.d_ff = 256384, 4096, 24, 64, 64, 10240
  else:
    c.vocab_size, c.d_model, c.num_layers, c.num_heads, c.d_kv, c.d_ff = 384, 32, 2, 4, 8, 64
  return c


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  variant = arg or "tiny"
  if variant not in VARIANTS:
    raise ValueError(f"configs/flashworld.py: unknown variant {variant!r}; expected one of {VARIANTS}")
  cfg = ml_collections.ConfigDict()
  cfg.variant = variant
  cfg.dit = _dit(variant)
  cfg.vae = _vae(variant)
  cfg.gaussian_decoder = _gaussian_decoder()
  cfg.text = _text(variant)
  if variant == "demo":
    # A CPU model: fp32 compute (bf16 is emulated on CPU and slower there).
    cfg.dit.dtype = cfg.text.dtype = "float32"

  cfg.render = ml_collections.ConfigDict()
  cfg.render.near_plane = 0.01
  cfg.render.far_plane = 1000.0
  # "auto" picks the Pallas kernel of the platform (TPU / Hopper GPU). They are tested in interpret
  # mode only, not yet on hardware, so generation defaults to the XLA compositor everywhere.
  cfg.render.backend = "xla"
  # Static per-view render capacity of the sampler (grown and re-run on overflow): intersections
  # per Gaussian of the scene, and Gaussians per 16×16 tile. rasterizer.md §8 expects 2.7-3.3 and
  # 8-10k for a 24×480×704 scene; 3.0 / 8192 overflowed once on one (a whole re-render), and an
  # unused slot costs only its share of the sort (the compositor stops at each list's end).
  cfg.render.isects_per_gaussian = 3.5
  cfg.render.tile_capacity = 10240
  if variant == "demo":
    # Its Gaussians are larger: 4.9 intersections each on the held-out demo scene (3.5 re-ran).
    cfg.render.isects_per_gaussian = 8.0

  cfg.scheduler = ml_collections.ConfigDict()
  cfg.scheduler.num_train_timesteps = 1000
  cfg.scheduler.shift = 3.0
  cfg.scheduler.step_indices = (0, 250, 500, 750)

  cfg.mesh = ml_collections.ConfigDict()
  cfg.mesh.data = -1
  cfg.mesh.fsdp = 1
  cfg.mesh.tensor = 1
  cfg.mesh.sequence = 1

  cfg.seed = 0
  return cfg
