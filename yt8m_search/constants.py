"""Constants shared by every layer: YouTube-8M (2018, v2) facts and the few names two layers check."""

NUM_CLASSES = 3862  # 2018 vocabulary; the 2017 data had 4716
MAX_FRAMES = 300  # the starter reader keeps the first 300 frames (1 frame per second)
RGB_DIM = 1024
AUDIO_DIM = 128
FEATURE_DIM = RGB_DIM + AUDIO_DIM  # rgb columns first, then audio

# Dequantization of the official starter (utils.Dequantize with max 2, min -2): q * 4/255 + 4/512 - 2.
# Not the exact inverse of the rounding quantizer: the +4/512 term is a half-bucket bias.
DEQUANT_SCALE = 4.0 / 255.0
DEQUANT_BIAS = 4.0 / 512.0 - 2.0

# How a trial's workers are placed (Ray placement group strategies): PACK fills a node first (fast
# collectives), SPREAD puts workers on different nodes where it can (a lost node costs fewer workers).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
